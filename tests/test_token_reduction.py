"""The token-reduction variants: ToE (merge), toe-drop (ToE's selection, no merge), random (a random subset).

All three keep the same number of tokens per stage after block 0; toe-drop discards what ToE merges;
random draws a fresh subset per image and call from torch's RNG, so runs stay reproducible and resume
bit-exactly.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from helpers import ROOT, TINY_DEIT, read_log, run_cli, tiny_vit

from toe import TokenSelect, apply_toe
from toe.options import run_main
from toe.recipes import deit
from toe.schedule import REDUCTIONS

# (expansion steps, keep rates, seed rate, sub-steps, patches) of the spec's token table
SETTINGS = [
    ((0, 1, 2), (0.5, 0.75, 1.0), 0.25, 2, 196),
    ((0, 1, 2), (0.4, 0.7, 1.0), 0.2, 2, 196),
    ((0, 1, 2), (0.6, 0.8, 1.0), 0.3, 2, 100),
    ((0, 1, 2), (0.5, 0.75, 1.0), 0.4, 5, 196),
    ((0, 1, 2), (0.4, 0.7, 0.9), 0.2, 2, 196),
]


def selector(reduction: str, steps=(0, 1, 2), rates=(0.5, 0.75, 1.0), r0=0.25, k=2, stage_epoch=0) -> TokenSelect:
    select = TokenSelect(steps, rates, r0, k, reduction=reduction).train()
    select.update_current_stage(stage_epoch)
    return select


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_variant_keeps_the_same_number_of_tokens_in_every_stage(setting):
    steps, rates, r0, k, patches = setting
    x = torch.randn(2, 1 + patches, 16)
    for epoch in steps:
        lengths = {}
        for reduction in REDUCTIONS:
            tokens, index = selector(reduction, steps, rates, r0, k, epoch)(x)
            lengths[reduction] = tokens.shape[1]
            assert index is None or index.shape == tokens.shape[:2]
        counts = TokenSelect(steps, rates, r0, k).token_counts(patches)
        stage = steps.index(epoch) + 1
        assert set(lengths.values()) == {1 + counts.kept[stage - 1]}, lengths


def test_toe_drop_keeps_exactly_the_tokens_toe_keeps_without_merging():
    torch.manual_seed(0)
    x = torch.randn(3, 2 + 64, 24)
    merged, toe_index = selector("toe")(x, num_prefix_tokens=2)
    dropped, index = selector("toe-drop")(x, num_prefix_tokens=2)
    assert torch.equal(index, toe_index)
    assert torch.equal(dropped, torch.stack([x[b, index[b]] for b in range(3)]))  # the unmerged kept tokens
    assert not torch.equal(dropped, merged)  # ToE averages the rest into them
    assert torch.equal(dropped[:, :2], x[:, :2])


def test_random_keeps_a_fresh_random_subset_per_image_and_call_from_the_torch_seed():
    x = torch.randn(4, 1 + 64, 8)
    select = selector("random")
    torch.manual_seed(3)
    tokens, index = select(x)
    _, again = select(x)
    torch.manual_seed(3)
    _, replay = select(x)
    assert torch.equal(index, replay)  # reproducible from the seed
    assert not torch.equal(index, again)  # a new draw every call
    assert (index[:, 0] == 0).all()  # the cls token stays first
    patches = index[:, 1:]
    assert patches.shape == (4, 32) and patches.min() >= 1 and patches.max() <= 64
    assert all(len(set(row.tolist())) == 32 for row in patches)  # no patch twice
    assert len({tuple(sorted(row.tolist())) for row in patches}) == 4  # each image its own subset
    assert torch.equal(tokens, torch.stack([x[b, index[b]] for b in range(4)]))


def test_random_subsets_are_uniform_over_positions():
    torch.manual_seed(0)
    select = selector("random")
    hits = torch.zeros(64)
    for _ in range(50):
        _, index = select(torch.randn(20, 65, 4))
        hits += torch.bincount(index[:, 1:].reshape(-1) - 1, minlength=64)
    share = hits / hits.sum()
    assert (share - 1 / 64).abs().max() < 0.3 / 64  # 1000 draws of 32 of 64: every position about equally often


@pytest.mark.parametrize("reduction", list(REDUCTIONS))
def test_gradients_reach_the_kept_tokens_and_only_toe_reaches_the_others(reduction):
    torch.manual_seed(1)
    x = torch.randn(2, 1 + 64, 8, requires_grad=True)
    tokens, index = selector(reduction)(x)
    tokens.sum().backward()
    kept = torch.zeros(2, 65, dtype=torch.bool)
    kept.scatter_(1, index, True)
    assert (x.grad[kept] != 0).all()
    if reduction == "toe":
        assert (x.grad[~kept] != 0).all()  # merged tokens get their share of the mean's gradient
    else:
        assert not x.grad[~kept].any()  # discarded tokens get none


@pytest.mark.parametrize("reduction", list(REDUCTIONS))
def test_assignment_marks_discarded_patches_and_matches_the_forward(reduction):
    torch.manual_seed(2)
    x = torch.randn(2, 1 + 64, 8)
    select = selector(reduction)
    torch.manual_seed(5)
    kept, slot = select.assignment(x)
    torch.manual_seed(5)
    _, index = select(x)
    assert torch.equal(kept + 1, index[:, 1:])
    for b in range(2):
        assert torch.equal(slot[b, kept[b]], torch.arange(32))
        others = torch.ones(64, dtype=torch.bool)
        others[kept[b]] = False
        if reduction == "toe":
            assert (slot[b, others] >= 0).all()
        else:
            assert (slot[b, others] == -1).all()


@pytest.mark.parametrize("reduction", list(REDUCTIONS))
def test_every_variant_runs_after_block_0_of_a_timm_vit(reduction):
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", img_size=32, patch_size=4, depth=3, num_classes=5)
    plain = copy.deepcopy(model).eval()
    apply_toe(model, selector(reduction)).train()
    lengths = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert lengths == [65, 33, 33]  # block 0 sees all tokens, blocks 1.. the reduced set
    model.eval()
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(images), plain(images))  # evaluation stays full-token


@pytest.mark.parametrize("reduction", list(REDUCTIONS))
def test_lvvit_scatters_every_variant_back_for_its_dense_head(reduction):
    model = tiny_vit("lvvit_s", seed=0, num_classes=10)
    model.return_dense = model.mix_token = True  # token labeling's training outputs, as the recipe asks for them
    apply_toe(model, selector(reduction, rates=(0.4, 0.7, 1.0), r0=0.2)).train()
    tokens = model.forward_tokens(torch.randn(2, 3, 32, 32))
    index = model.token_select.last_index
    assert index.shape == (2, 1 + 24) and tokens.shape == (2, 65, 32)
    for b in range(2):
        away = torch.ones(65, dtype=torch.bool)
        away[index[b]] = False
        assert not tokens[b, away].any() and tokens[b, index[b]].abs().sum() > 0
    cls_logits, aux_logits, _ = model(torch.randn(2, 3, 32, 32))
    assert aux_logits.shape == (2, 64, 10)
    (cls_logits.sum() + aux_logits.sum()).backward()


FLAGS = [*TINY_DEIT, "--epochs", "3", "--toe", "--expansion-step", "0", "1", "2", "--seed", "5"]


@pytest.mark.slow
def test_random_variant_resumes_bit_exactly_after_a_kill(tiny_data, tmp_path, capsys):
    """The random subsets come from the run's seeded RNG: a kill and --auto-resume change nothing."""
    flags = [*FLAGS, "--token-reduction", "random", "--data-path", tiny_data]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_main(deit.main, [str(a) for a in [*flags, "--output_dir", whole]])
    result = subprocess.run(
        [sys.executable, ROOT / "ToE" / "deit" / "main.py", *flags, "--output_dir", killed, "--save-every-steps", "2"],
        env={**os.environ, "TOE_FAILPOINT": "train-step:7"},  # epoch 1, mid-epoch
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -9, result.stderr
    status, out, err = run_cli(
        deit.main, [*flags, "--output_dir", killed, "--auto-resume", "--save-every-steps", "2"], capsys
    )
    assert status == 0, err
    assert "continuing at epoch 1, step 2" in out
    a = torch.load(whole / "checkpoint.pth", weights_only=True)
    b = torch.load(killed / "checkpoint.pth", weights_only=True)
    for key in ("model", "model_ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    log = read_log(whole)
    assert [r["token_reduction"] for r in log] == ["random"] * 3
    assert [r["toe_tokens"] for r in log] == [33, 49, 65]
    losses = [r["train_loss"] for r in log]
    resumed = [r["train_loss"] for r in read_log(killed)]
    assert resumed == losses


@pytest.fixture(scope="module")
def variant_runs(tiny_data, tmp_path_factory):
    """One epoch of each variant with the same seed (same data order): {variant: output folder}."""
    root = tmp_path_factory.mktemp("variants")
    for reduction in REDUCTIONS:
        flags = [*TINY_DEIT, "--epochs", "1", "--toe", "--token-reduction", reduction, "--seed", "2"]
        run_main(deit.main, [str(a) for a in [*flags, "--data-path", tiny_data, "--output_dir", root / reduction]])
    return {reduction: root / reduction for reduction in REDUCTIONS}


def test_the_variants_train_differently_with_the_same_seed(variant_runs):
    weights = {
        name: torch.load(folder / "checkpoint.pth", weights_only=True)["model"]["head.weight"]
        for name, folder in variant_runs.items()
    }
    assert not torch.equal(weights["toe"], weights["toe-drop"])
    assert not torch.equal(weights["toe"], weights["random"])
    assert not torch.equal(weights["toe-drop"], weights["random"])
    for name, folder in variant_runs.items():
        record = json.loads((folder / "log.txt").read_text())
        assert record["token_reduction"] == name and record["toe_tokens"] == 33


def test_the_tools_name_the_variant(variant_runs, tiny_data, tmp_path, capsys):
    from toe import cli
    from toe.recipes.summary import describe_toe

    status, out, err = run_cli(cli.main, ["flops", "--token-reduction", "toe-drop"], capsys)
    assert status == 0, err
    assert "token reduction toe-drop" in out and "same tokens" in out
    model = apply_toe(timm.create_model("deit_tiny_patch16_224"), selector("random"))
    assert "token reduction random" in describe_toe(model, 3)  # the line the recipes print at the start
    output = variant_runs["random"]
    status, out, err = run_cli(cli.main, ["report", output], capsys)
    assert status == 0, err
    assert "token reduction random" in out.splitlines()[0]
    picture = tmp_path / "selection.png"
    args = ["visualize", "--checkpoint", output / "checkpoint.pth", "--data-path", tiny_data, "--num-images", "2"]
    status, out, err = run_cli(cli.main, [*args, "--out", picture], capsys)
    assert status == 0, err
    assert "token reduction random" in out and picture.stat().st_size > 0
    status, out, err = run_cli(cli.main, [*args, "--out", picture, "--token-reduction", "toe-drop"], capsys)
    assert status == 0, err
    assert "token reduction toe-drop" in out


@pytest.mark.parametrize("recipe", ["deit", "lvvit", "efficienttrain", "et_training"])
def test_every_recipe_takes_the_variant_flag(recipe):
    import importlib

    from toe.options import token_select_from_args

    module = importlib.import_module(f"toe.recipes.{recipe}")
    argv = ["--token-reduction", "random"] + (["data", "--toe"] if recipe == "lvvit" else ["--toe"])
    args = module.parse_args(argv) if hasattr(module, "parse_args") else module.build_parser().parse_args(argv)
    assert token_select_from_args(args).reduction == "random"
