"""The YOLOS recipe: flags as upstream, model/optimizer/schedule builders, bad flags."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_one_line_error, run_cli

from toe.options import UserError, schedule_from_args
from toe.recipes import yolos


def test_defaults_are_upstream_yolos():
    args = yolos.build_parser().parse_args([])
    assert (args.lr, args.lr_backbone, args.batch_size, args.weight_decay, args.epochs) == (1e-4, 1e-5, 2, 1e-4, 150)
    assert (args.eval_size, args.clip_max_norm, args.sched, args.lr_drop) == (800, 0.1, "warmupcos", 100)
    assert (args.warmup_lr, args.min_lr, args.warmup_epochs, args.decay_rate) == (1e-6, 1e-7, 0, 0.1)
    assert (args.det_token_num, args.backbone_name, args.pre_trained) == (100, "tiny", "")
    assert args.init_pe_size is None and args.mid_pe_size is None
    assert (args.set_cost_class, args.set_cost_bbox, args.set_cost_giou) == (1, 5, 2)
    assert (args.bbox_loss_coef, args.giou_loss_coef, args.eos_coef) == (5, 2, 0.1)
    assert (args.seed, args.num_workers, args.start_epoch, args.resume) == (42, 2, 0, "")
    assert schedule_from_args(args) is None  # ToE off unless asked


@pytest.mark.parametrize(
    "flags, amp",
    [
        ([], False),  # upstream YOLOS trains in fp32
        (["--amp"], True),
        (["--apex-amp"], True),
        (["--amp-dtype", "bf16"], True),
        (["--amp-dtype", "fp32"], False),
        (["--amp", "--no-amp"], False),
    ],
)
def test_mixed_precision_only_when_asked_for(flags, amp):
    args = yolos.build_parser().parse_args(flags)
    assert yolos.uses_amp(args) is amp


def test_param_groups_follow_upstream(tmp_path):
    args = yolos.build_parser().parse_args(
        [
            "--coco_path",
            str(tmp_path),
            "--model-kwargs",
            "embed_dim=32",
            "depth=2",
            "num_heads=2",
            "patch_size=8",
            "img_size=32",
            "--det_token_num",
            "3",
            "--init_pe_size",
            "32",
            "--mid_pe_size",
            "32",
            "48",
        ]
    )
    yolos.check_args(args)
    assert args.init_pe_size == (32, 32) and args.mid_pe_size == (32, 48)
    model, report = yolos.build_model(args, 4, None)
    assert report is None
    heads, no_decay, decay = yolos.param_groups(model, 1e-4)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in heads["params"]} == {n for n in names.values() if not n.startswith("backbone.")}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"backbone.pos_embed", "backbone.cls_token", "backbone.det_token", "backbone.norm.bias"} <= skipped
    assert "backbone.mid_pos_embed" in {names[id(p)] for p in decay["params"]}  # 4-d: decayed, as upstream
    assert (heads["weight_decay"], no_decay["weight_decay"], decay["weight_decay"]) == (1e-4, 0.0, 1e-4)
    assert sum(len(g["params"]) for g in (heads, no_decay, decay)) == len(names)


@pytest.mark.parametrize(
    ("sched", "expected"),
    [("step", [1e-3, 1e-3, 1e-3, 1e-4, 1e-4]), ("warmupcos", None)],
)
def test_schedules_step_with_the_finished_epoch(tmp_path, sched, expected):
    args = yolos.build_parser().parse_args(
        ["--sched", sched, "--lr_drop", "2", "--epochs", "4", "--lr", "1e-3", "--min-lr", "0"]
    )
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    scheduler = yolos.build_scheduler(args, optimizer)
    lrs = [optimizer.param_groups[0]["lr"]]
    for epoch in range(4):
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
    if expected is not None:
        assert lrs == pytest.approx(expected)
    else:  # one cosine cycle over 4 epochs: lr(t) = 1e-3 * (1 + cos(pi t / 4)) / 2 for t = 0, 0, 1, 2, 3
        import math

        assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * t / 4)) / 2 for t in (0, 0, 1, 2, 3)])


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        ([], "--coco_path is required"),
        (["--coco_path", "/nowhere"], "--coco_path /nowhere does not exist"),
        (["--init_pe_size", "1", "2", "3"], "--init_pe_size takes one or two"),
        (["--single-scale", "--aug-scale", "0.1"], "--aug-scale scales the multi-scale augmentation, which"),
        (["--start_epoch", "150"], "--start_epoch 150 leaves nothing to train: --epochs is 150"),
    ],
)
def test_bad_flags_are_one_sentence(tmp_path, flags, fragment):
    if "--coco_path" not in flags and fragment != "--coco_path is required":
        flags = ["--coco_path", str(tmp_path), *flags]
    args = yolos.build_parser().parse_args(flags)
    with pytest.raises(UserError, match=fragment.replace("-", "\\-")):
        yolos.check_args(args)


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--lr", "-1"], "argument --lr: must be a finite number >= 0, got -1"),
        (["--eos_coef", "nan"], "argument --eos_coef: must be a finite number >= 0, got nan"),
        (["--clip_max_norm", "-0.1"], "argument --clip_max_norm: must be a finite number >= 0"),
        (["--device", "gpu0"], "argument --device: 'gpu0' is not a device"),
        (["--pos_embed_init", "learned"], "argument --pos_embed_init: invalid choice: 'learned'"),
        (["--batch_size", "0"], "argument --batch_size: must be at least 1, got 0"),
        (["--aug-scale", "0"], "argument --aug-scale: must be above 0, got 0"),
    ],
)
def test_bad_values_stop_at_parse_time(tmp_path, capsys, flags, fragment):
    status, _, err = run_cli(yolos.main, ["--coco_path", tmp_path, *flags], capsys)
    assert_one_line_error(status, err, fragment)
