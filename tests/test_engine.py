"""The engine on a toy model, without the command line: gradient accumulation (a short last group), the LR
schedule per epoch and per update, the EMA, the evaluation collaborator, mid-epoch checkpoint and resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import read_log, tiny_vit
from timm.scheduler import StepLRScheduler
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import TensorDataset

from toe import TokenSelect, apply_toe
from toe.data import build_train_loader
from toe.engine import (
    DistInfo,
    LRSchedule,
    Precision,
    RunLogger,
    RunParts,
    RunSettings,
    TrainingRun,
    TrainState,
    find_checkpoint,
    fit,
    restore,
    train_steps,
    trainer,
)
from toe.engine.loop import accumulation_divisor, batches_to_train
from toe.engine.losses import BaseLoss
from toe.errors import UserError
from toe.recipes import deit, lvvit
from toe.recipes.flags import precision_from_args

CPU = Precision(torch.device("cpu"), None)
TIMING = {"train_compute_time", "train_data_time", "epoch_time", "train_images_per_sec"}


def toy_model(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(dropout), nn.Linear(8, 3))


def toy_batches(count: int, size: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(size, 4, generator=generator), torch.randint(0, 3, (size,), generator=generator))
        for _ in range(count)
    ]


class CountingLoader:
    """A list of batches that counts how many were drawn."""

    def __init__(self, batches) -> None:
        self.batches, self.drawn = batches, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            self.drawn += 1
            yield batch


def one_epoch(model, loader, accum_steps, **options):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = BaseLoss(nn.CrossEntropyLoss())
    return train_steps(
        model, loss, loader, optimizer, CPU, DistInfo(), 0, accum_steps=accum_steps, show_progress=False, **options
    )


def reference_updates(model, groups) -> None:
    """Plain SGD: one step per group of batches, on the loss of the group's batches put together."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for group in groups:
        optimizer.zero_grad()
        images = torch.cat([images for images, _ in group])
        labels = torch.cat([labels for _, labels in group])
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)


def test_accumulation_averages_the_gradients_of_each_group():
    batches = toy_batches(4)
    model, reference = toy_model(), toy_model()
    stats = one_epoch(model, batches, accum_steps=2)
    reference_updates(reference, [batches[:2], batches[2:]])
    assert stats.updates == 2 and stats.steps == 4
    assert_same_weights(model, reference)


def test_a_short_last_group_is_divided_by_its_own_size():
    """3 batches, 2 per update: the last update is the gradient of the third batch alone (timm), not half of it."""
    batches = toy_batches(3)
    model, reference = toy_model(), toy_model()
    stats = one_epoch(model, batches, accum_steps=2)
    reference_updates(reference, [batches[:2], batches[2:]])
    assert stats.updates == 2
    assert_same_weights(model, reference)
    assert [accumulation_divisor(step, 3, 2) for step in range(3)] == [2, 2, 1]
    assert [accumulation_divisor(step, 7, 3) for step in range(7)] == [3, 3, 3, 3, 3, 3, 1]
    assert [accumulation_divisor(step, 6, 3) for step in range(6)] == [3] * 6


def test_efficienttrain_leaves_out_a_short_last_group_without_loading_it():
    batches = toy_batches(5)
    loader = CountingLoader(batches)
    model, reference = toy_model(), toy_model()
    stats = one_epoch(model, loader, accum_steps=2, drop_last_group=True)
    reference_updates(reference, [batches[:2], batches[2:4]])
    assert (stats.updates, stats.steps, stats.images, loader.drawn) == (2, 4, 16, 4)
    assert_same_weights(model, reference)
    assert batches_to_train(5, 2, drop_last_group=True) == 4 and batches_to_train(5, 2, drop_last_group=False) == 5


def test_fewer_batches_than_one_accumulation_group_is_a_user_error():
    with pytest.raises(UserError, match="no batch to train"):
        one_epoch(toy_model(), toy_batches(1), accum_steps=2, drop_last_group=True)


def test_the_ema_moves_once_per_optimizer_update():
    batches = toy_batches(4)
    model = toy_model()
    initial = copy.deepcopy(model.state_dict())
    ema = ModelEmaV3(model, decay=0.9)
    after_first = []
    one_epoch(
        model,
        batches,
        accum_steps=2,
        model_ema=ema,
        on_update=lambda s: after_first.append(copy.deepcopy(model.state_dict())),
    )
    assert len(after_first) == 1  # on_update: every update but the epoch's last
    for key, value in ema.module.state_dict().items():
        expected = 0.9 * (0.9 * initial[key] + 0.1 * after_first[0][key]) + 0.1 * model.state_dict()[key]
        torch.testing.assert_close(value, expected, msg=key)


class FakeScheduler:
    """Records how the adapter drives a timm scheduler."""

    def __init__(self) -> None:
        self.calls = []

    def step(self, epoch, metric=None):
        self.calls.append(("step", epoch))

    def step_update(self, num_updates, metric=None):
        self.calls.append(("step_update", num_updates))


def test_the_lr_adapter_steps_epochs_with_the_recipe_offset_and_places_updates_by_position():
    deit, timm_style = FakeScheduler(), FakeScheduler()
    LRSchedule(deit, epoch_offset=0).on_epoch_end(4)
    LRSchedule(timm_style, epoch_offset=1).on_epoch_end(4)
    assert deit.calls == [("step", 4)] and timm_style.calls == [("step", 5)]

    per_update = FakeScheduler()
    schedule = LRSchedule(per_update, updates_per_epoch=4)
    schedule.start(epoch=3, num_updates=10, done_in_epoch=1)  # e.g. a new stage: 10 updates so far, 4 per epoch now
    schedule.on_update(11)
    assert per_update.calls == [("step_update", 13), ("step_update", 14)]
    epoch_only = FakeScheduler()
    LRSchedule(epoch_only).start(epoch=3, num_updates=10)
    assert epoch_only.calls == []  # a per-epoch schedule keeps the state it was restored with


def toy_run(
    output_dir=None, *, epochs=3, accum_steps=1, schedule=None, save_every_steps=0, evaluation=None
) -> TrainingRun:
    """A whole run of the toy model (with dropout) on 32 samples in batches of 4, SGD with momentum, an EMA."""
    model = toy_model(dropout=0.5)
    generator = torch.Generator().manual_seed(2)
    data = TensorDataset(torch.randn(32, 4, generator=generator), torch.randint(0, 3, (32,), generator=generator))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = build_train_loader(data, 4, DistInfo(), seed=0, num_workers=0)
    settings = RunSettings(
        epochs=epochs,
        seed=5,
        output_dir=output_dir,
        accum_steps=accum_steps,
        save_every_steps=save_every_steps,
        show_progress=False,
    )
    parts = RunParts(
        model=model,
        module=model,
        criterion=BaseLoss(nn.CrossEntropyLoss()),
        optimizer=optimizer,
        precision=CPU,
        train_loader=loader,
        val_loader=loader if evaluation is not None else None,
        dist=DistInfo(),
        lr_schedule=schedule(optimizer) if schedule is not None else None,
        model_ema=ModelEmaV3(model, decay=0.9),
    )
    if evaluation is not None:
        parts.evaluation = evaluation
    return TrainingRun(settings, parts, TrainState())


@pytest.mark.parametrize("offset, expected", [(0, [0.1, 0.1, 0.05]), (1, [0.1, 0.05, 0.025])])
def test_a_per_epoch_schedule_moves_after_each_epoch(offset, expected, tmp_path):
    run = toy_run(tmp_path, schedule=lambda o: LRSchedule(StepLRScheduler(o, decay_t=1, decay_rate=0.5), offset))
    fit(run, RunLogger(tmp_path, True, tensorboard=False))
    records = read_log(tmp_path)
    assert [r["train_lr"] for r in records] == pytest.approx(expected)


def test_a_per_update_schedule_moves_after_each_update(tmp_path):
    """8 batches of 4, 2 per update: 4 updates per epoch, the LR halves at every update."""

    def schedule(optimizer):
        return LRSchedule(StepLRScheduler(optimizer, decay_t=1, decay_rate=0.5, t_in_epochs=False), updates_per_epoch=4)

    run = toy_run(tmp_path, epochs=2, accum_steps=2, schedule=schedule)
    fit(run, RunLogger(tmp_path, True, tensorboard=False))
    records = read_log(tmp_path)
    assert [r["train_lr"] for r in records] == pytest.approx([0.1 * 0.5**4, 0.1 * 0.5**8])
    assert run.state.num_updates == 8


class Scores:
    """An evaluation of another task: one number per call from a list, best by "score"."""

    metric = "score"

    def __init__(self, values) -> None:
        self.values = list(values)

    def __call__(self, model, loader, precision, dist, **options):
        return {"score": self.values.pop(0)}


def test_the_evaluation_is_a_collaborator_that_names_the_metric_of_the_best_checkpoints(tmp_path):
    run = toy_run(tmp_path, epochs=2, evaluation=Scores([3.0, 1.0, 2.0, 5.0]))  # model, EMA per epoch
    fit(run, RunLogger(tmp_path, True, tensorboard=False))
    records = read_log(tmp_path)
    assert [(r["test_score"], r["test_ema_score"]) for r in records] == [(3.0, 1.0), (2.0, 5.0)]
    assert [(r["best_test_score"], r["best_test_ema_score"]) for r in records] == [(3.0, 1.0), (3.0, 5.0)]
    best = torch.load(tmp_path / "best_checkpoint.pth", weights_only=True)
    best_ema = torch.load(tmp_path / "best_ema_checkpoint.pth", weights_only=True)
    assert best["epoch"] == 0 and best_ema["epoch"] == 1


def test_a_mid_epoch_checkpoint_resumes_bit_for_bit(tmp_path, monkeypatch):
    """Stopped after the 3rd update of epoch 1 (dropout, momentum and the EMA in play), continued in a new run
    from checkpoint.pth: the same weights, EMA, optimizer state and log as an uninterrupted run."""
    full = toy_run(tmp_path / "full", save_every_steps=1)
    (tmp_path / "full").mkdir()
    fit(full, RunLogger(tmp_path / "full", True, tensorboard=False))

    stopped_dir = tmp_path / "stopped"
    stopped_dir.mkdir()
    real_save = trainer._save_mid_epoch

    def save_then_stop(run, epoch, stats):
        real_save(run, epoch, stats)
        if epoch == 1 and stats.steps == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_save_mid_epoch", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        fit(toy_run(stopped_dir, save_every_steps=1), RunLogger(stopped_dir, True, tensorboard=False))
    monkeypatch.undo()

    resumed = toy_run(stopped_dir, save_every_steps=1)
    found = find_checkpoint(None, True, stopped_dir)
    assert found.state["partial"]["epoch"] == 1 and found.state["partial"]["stats"]["steps"] == 3
    restore(resumed, found.state, found.source)
    assert (resumed.state.start_epoch, resumed.state.num_updates) == (1, 11)
    fit(resumed, RunLogger(stopped_dir, True, tensorboard=False))

    a = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)
    b = torch.load(stopped_dir / "checkpoint.pth", weights_only=True)
    for key in ("model", "model_ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])

    def log(folder):
        lines = (folder / "log.txt").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]

    assert log(tmp_path / "full") == log(stopped_dir)


@pytest.mark.filterwarnings("ignore:.*GradScaler")  # building a CUDA scaler without a GPU only warns
def test_mixed_precision_is_fp16_on_cuda_unless_bf16_is_asked_for_and_fp32_on_the_cpu():
    """As upstream (native AMP, or apex O1 for --apex-amp): fp16 autocast with a gradient scaler on CUDA."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert Precision.from_flag(cuda, "auto").dtype == torch.float16
    assert Precision.from_flag(cuda, "bf16").name == "bf16" and Precision.from_flag(cuda, "fp32").name == "fp32"
    assert Precision.from_flag(cuda, "auto", enabled=False).name == "fp32"
    assert Precision.from_flag(cpu, "auto").name == "fp32"
    for flags in ([], ["--apex-amp"], ["--amp-dtype", "fp16"]):
        args = deit.build_parser().parse_args(flags)
        assert precision_from_args(args, cuda, amp=True).name == "fp16"
        assert precision_from_args(args, cpu, amp=True).name == ("fp16" if "fp16" in flags else "fp32")
    assert precision_from_args(deit.build_parser().parse_args(["--amp-dtype", "bf16"]), cuda, amp=True).name == "bf16"
    with pytest.raises(UserError, match="--apex-amp means fp16"):
        precision_from_args(lvvit.parse_args(["data", "--apex-amp", "--amp-dtype", "bf16"]), cuda, amp=True)


def test_training_in_eval_mode_keeps_toe_reducing_the_tokens():
    """train_mode=False (DeiT's --no-train-mode): the model runs in eval mode, ToE still on; evaluation after it
    is full-token again."""
    model = apply_toe(tiny_vit(num_classes=3, seed=0), TokenSelect([0, 1], [0.5, 1.0]))
    seen = []
    model.blocks[1].register_forward_pre_hook(lambda module, args: seen.append((module.training, args[0].shape[1])))
    batches = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 2]))]
    one_epoch(model, batches, 1, train_mode=False)
    one_epoch(model, batches, 1)
    with torch.no_grad():
        model.eval()(batches[0][0])
    assert seen == [(False, 1 + 32), (True, 1 + 32), (False, 1 + 64)]


def test_a_checkpoint_of_another_model_is_refused_before_anything_is_restored(tmp_path):
    """Weights of a model with one layer more are one clear line naming the mismatch; the run keeps its own
    weights and state."""
    (tmp_path / "run").mkdir()
    fit(toy_run(tmp_path / "run", epochs=1), RunLogger(tmp_path / "run", True, tensorboard=False))
    found = find_checkpoint(None, True, tmp_path / "run")
    other = toy_run(epochs=2)
    other.parts.module = other.parts.model = nn.Sequential(*toy_model(), nn.Linear(3, 3))
    before = copy.deepcopy(other.parts.module.state_dict())
    with pytest.raises(
        UserError,
        match=r"saved for a different model \(2 missing and 0 unexpected weights, e\.g\. 3\.bias\); build the same",
    ):
        restore(other, found.state, found.source)
    assert all(torch.equal(value, other.parts.module.state_dict()[key]) for key, value in before.items())
    assert other.state.start_epoch == 0
