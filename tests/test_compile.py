"""torch.compile: no graph breaks in the ToE path, one compiled graph per stage, same outputs as eager."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo
from helpers import tiny_vit
from torch._dynamo.utils import counters

from toe import apply_toe


def tiny_toe_model() -> torch.nn.Module:
    return apply_toe(tiny_vit(seed=0)).train()


def test_no_graph_breaks_on_a_cold_selector():
    dynamo.reset()
    explanation = dynamo.explain(tiny_toe_model())(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


@pytest.mark.slow  # over 8 s: compiles every stage
def test_one_graph_per_stage_and_eager_equal_outputs():
    dynamo.reset()
    counters.clear()
    model = tiny_toe_model()
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    graphs = []
    for epoch in (0, 50, 100, 150, 200, 250):  # stages 1, 1, 2, 2, 3, 3
        model.token_select.update_current_stage(epoch)
        for _ in range(2):
            out = compiled(x)
            out.sum().backward()
        torch.testing.assert_close(out, model(x))
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs == [1, 1, 2, 2, 3, 3]


@pytest.mark.slow  # over 8 s: compiles two models
def test_a_plain_model_compiled_first_does_not_hide_the_hook_of_a_toe_model():
    """torch.compile reuses graphs across instances of one class and skips hook guards by default."""
    dynamo.reset()
    plain = tiny_vit(seed=0)
    x = torch.randn(2, 3, 32, 32)
    torch.compile(plain.train(), backend="aot_eager")(x)
    model = tiny_toe_model()
    model.token_select.update_current_stage(0)
    out = torch.compile(model, backend="aot_eager")(x)
    assert model.token_select.last_index is not None and model.token_select.last_index.shape == (
        2,
        33,
    )  # ToE ran: 1 + 32 of 64 patches
    torch.testing.assert_close(out, model(x))
