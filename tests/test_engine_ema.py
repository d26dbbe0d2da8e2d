"""The engine's EMA update follows upstream (timm ModelEma): the decay applies from the first update."""

from __future__ import annotations

import copy

import torch
from timm.utils import ModelEmaV3
from torch import nn

from toe.engine import DistInfo, Precision, train_steps
from toe.engine.losses import BaseLoss


def test_ema_blends_with_the_configured_decay_from_the_first_update():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    initial = copy.deepcopy(model.state_dict())
    ema = ModelEmaV3(model, decay=0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    train_steps(
        model,
        BaseLoss(nn.CrossEntropyLoss()),
        batch,
        optimizer,
        Precision(torch.device("cpu"), None),
        DistInfo(),
        0,
        model_ema=ema,
        show_progress=False,
    )
    trained = model.state_dict()
    for key, value in ema.module.state_dict().items():
        expected = 0.9 * initial[key] + 0.1 * trained[key]
        torch.testing.assert_close(value, expected)
        assert not torch.equal(value, trained[key])  # not a copy of the model (decay 0 at the first update)
