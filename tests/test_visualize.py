"""toe visualize: the drawn groups are TokenSelect's own selection; the command writes the grid; bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error, run_cli, tiny_model_kwargs, tiny_vit
from PIL import Image

from toe import TokenSelect, apply_toe, visualize
from toe.cli import main as toe_main
from toe.figures import DPI
from toe.visualize import (
    LEGEND_INCHES,
    PANEL_INCHES,
    block0_tokens,
    dataset_images,
    load_image,
    stage_selections,
    to_model_input,
)

TINY_FRESH = [
    "--model",
    "deit_tiny_patch16_224",
    "--input-size",
    "32",
    "--patch-size",
    "4",
    "--model-kwargs",
    *tiny_model_kwargs(depth=2),
]

CONFIGS = [
    {},  # the paper's DeiT settings
    {"keep_rate": (0.4, 0.7, 1.0), "initialization_keep_rate": 0.2},  # seed step 1 // 0.2 == 4
    {"expansion_multiple_stage": 3, "distance": "euclidean"},
    {"keep_rate": (0.3, 0.6, 0.9), "initialization_keep_rate": 0.1, "seeding": "uniform", "distance": "manhattan"},
]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("stage", [1, 2])
def test_assignment_is_the_selection_forward_merges_by(config, stage):
    torch.manual_seed(stage)
    select = TokenSelect(expansion_step=(0, 10, 20), **config).train()
    select.update_current_stage(select.schedule.expansion_step[stage - 1])
    x = torch.randn(3, 1 + 49, 16)
    tokens, index = select(x, num_prefix_tokens=1)
    kept, slot = select.assignment(x, num_prefix_tokens=1)
    assert torch.equal(index[:, 1:] - 1, kept)
    for b in range(3):
        for j in range(kept.shape[1]):
            assert slot[b, kept[b, j]] == j  # a kept token is in its own group
            members = (slot[b] == j).nonzero().squeeze(1)
            torch.testing.assert_close(tokens[b, 1 + j], x[b, 1 + members].mean(0))
    eval_kept, eval_slot = select.eval().assignment(x, num_prefix_tokens=1)  # the same in eval mode
    assert torch.equal(eval_kept, kept) and torch.equal(eval_slot, slot)


def test_assignment_is_none_when_the_stage_keeps_every_token():
    select = TokenSelect(expansion_step=(5, 10, 20))
    x = torch.randn(1, 17, 8)
    for epoch in (0, 20):  # stage 0 (before the first stage) and the last stage (keep rate 1.0)
        select.update_current_stage(epoch)
        assert select.assignment(x) is None
    select.update_current_stage(5)
    assert select.assignment(x) is not None


def test_selection_groups_agree_with_the_forward_index(tiny_data):
    torch.manual_seed(0)
    model = tiny_vit(num_classes=10)
    apply_toe(model, TokenSelect(expansion_step=(0, 1, 2), keep_rate=(0.5, 0.75, 1.0), initialization_keep_rate=0.25))
    batch = to_model_input([load_image(path, (32, 32))[0] for path in dataset_images(tiny_data, 4)])
    tokens = block0_tokens(model, batch)
    selections = stage_selections(model.token_select, tokens, model.num_prefix_tokens, [1, 2, 3])
    patches = 64
    counts = model.token_select.token_counts(patches)
    spec_seeds = [i for i in range(patches) if i % int(1 // 0.25) == 0][: math.floor(patches * 0.25)]
    features = F.normalize(tokens[:, 1:], dim=-1)
    for stage in (1, 2):
        model.token_select.update_current_stage(stage - 1)  # stages start at epochs 0, 1, 2
        with torch.no_grad():
            model.train()(batch)
        for b, row in enumerate(selections):
            selection = row[stage - 1]
            kept, slot = selection.kept, selection.slot
            assert torch.equal(kept, model.token_select.last_index[b, 1:] - 1)  # the training forward's own index
            assert slot.shape == (patches,) and 0 <= int(slot.min()) and int(slot.max()) < len(kept)
            assert len(set(kept.tolist())) == len(kept) and torch.equal(slot[kept], torch.arange(len(kept)))
            assert kept[: counts.seeds].tolist() == spec_seeds
            sizes = (counts.seeds, *[m for s in range(stage) for m in counts.substeps[s]])
            assert selection.step_sizes == sizes and sum(sizes) == counts.kept[stage - 1]
            assert torch.bincount(selection.steps()).tolist() == list(sizes)
            merged = sorted(set(range(patches)) - set(kept.tolist()))
            nearest = (features[b, merged] @ features[b, kept].T).argmax(1)
            assert torch.equal(slot[merged], nearest)  # merged into the most similar kept token
    for row in selections:  # stage 3 keeps every token
        assert row[2].full_token and torch.equal(row[2].kept, torch.arange(patches))


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as png:
        return png.size


def grid_size(rows: int, cols: int) -> tuple[int, int]:
    return round(cols * PANEL_INCHES * DPI), round((rows * PANEL_INCHES + LEGEND_INCHES) * DPI)


def test_visualize_draws_images_by_stages_from_a_checkpoint(tiny_runs, tiny_data, tmp_path, capsys):
    checkpoint = tiny_runs["toe"] / "checkpoint.pth"
    large = tmp_path / "large.png"
    Image.new("RGB", (48, 40), (200, 30, 30)).save(large)
    out = tmp_path / "grid.png"
    argv = ["visualize", "--checkpoint", checkpoint, "--data-path", tiny_data, "--num-images", 2, "--image", large]
    status, stdout, err = run_cli(toe_main, [*argv, "--out", out], capsys)
    assert status == 0, err
    assert f"note: {large} is 48x40 pixels; resized to 32x32, the model's input size" in stdout
    assert png_size(out) == grid_size(3, 2)  # 3 images x the run's 2 stages (schedule from the checkpoint)

    flags = ["--expansion-step", "0", "1", "2", "--keep-rate", "0.5", "0.75", "1.0"]  # override the run's schedule
    status, stdout, err = run_cli(
        toe_main,
        ["visualize", "--checkpoint", checkpoint, "--ema", "--image", large, *flags, "--stage", 2, 3, "--out", out],
        capsys,
    )
    assert status == 0, err
    assert "stage(s) 2, 3 of 1 image(s)" in stdout and "(EMA weights)" in stdout
    assert png_size(out) == grid_size(1, 2)


def test_visualize_a_fresh_model_writes_beside_the_working_folder(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, stdout, err = run_cli(toe_main, ["visualize", *TINY_FRESH, "--data-path", tiny_data], capsys)
    assert status == 0, err
    assert "a freshly initialised deit_tiny_patch16_224 (seed 0)" in stdout
    assert png_size(tmp_path / "toe_selection.png") == grid_size(4, 3)  # 4 images x the paper's 3 stages


def test_visualize_names_the_file_it_wrote_and_a_run_without_toe(tiny_runs, tiny_data, tmp_path, monkeypatch, capsys):
    figures = []
    real_save = visualize.save_figure
    monkeypatch.setattr(
        visualize, "save_figure", lambda figure, path: figures.append(figure) or real_save(figure, path)
    )
    argv = ["visualize", "--checkpoint", tiny_runs["baseline"] / "checkpoint.pth", "--data-path", tiny_data]
    status, stdout, err = run_cli(toe_main, [*argv, "--num-images", 1, "--out", tmp_path / "picture"], capsys)
    assert status == 0, err
    assert f"wrote {tmp_path / 'picture.png'}:" in stdout and (tmp_path / "picture.png").is_file()
    assert "was trained without ToE; the picture shows what ToE would select with the paper's DeiT settings" in stdout
    titles = [ax.get_title() for ax in figures[0].axes if ax.get_title()]
    assert titles[0].startswith("stage 1: 32 of 64 patch tokens") and titles[2].startswith("stage 3: all 64 patch")
    status, _, err = run_cli(toe_main, [*argv, "--keep-rate", "0.5", "1.0"], capsys)
    assert_one_line_error(status, err, "got 3 (0 100 200: the paper's deit default, no --expansion-step given) and 2")
    schedule = ["--expansion-step", "0", "1", "--keep-rate", "0.5", "1.0"]
    status, stdout, err = run_cli(toe_main, [*argv, "--num-images", 1, *schedule], capsys)
    assert status == 0, err
    assert "select with --expansion-step --keep-rate (and the paper's DeiT settings for the rest)" in stdout


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_runs):
    folder = tmp_path_factory.mktemp("files")
    (folder / "notes.pth").write_text("not a checkpoint")
    (folder / "notes.png").write_text("not an image")
    Image.new("RGB", (32, 32)).save(folder / "ok.png")
    state = torch.load(tiny_runs["toe"] / "checkpoint.pth", map_location="cpu", weights_only=True)
    torch.save({"model": state["model"]}, folder / "no_args.pth")
    torch.save({"model": state["model"], "args": state["args"]}, folder / "no_ema.pth")
    other = {**state["args"], "model_kwargs": tiny_model_kwargs(depth=2)}
    torch.save({"model": state["model"], "args": other}, folder / "other_model.pth")
    return folder


BAD = [
    (["--checkpoint", "{files}/missing.pth", "--image", "{files}/ok.png"], "--checkpoint", "no such file"),
    (["--checkpoint", "{files}/notes.pth", "--image", "{files}/ok.png"], "--checkpoint", "is not a"),
    (["--checkpoint", "{files}/no_args.pth", "--image", "{files}/ok.png"], "records no model flags"),
    (["--checkpoint", "{files}/no_ema.pth", "--ema", "--image", "{files}/ok.png"], "holds no EMA weights"),
    (["--checkpoint", "{files}/other_model.pth", "--image", "{files}/ok.png"], "do not fit deit_tiny_patch16_224"),
    (["--checkpoint", "{run}", "--image", "{files}/ok.png", "--stage", "3"], "--stage 3 does not exist", "1-2"),
    (["--checkpoint", "{run}", "--model", "deit_small_patch16_224"], "records its own model flags", "--model"),
    (["--ema", *TINY_FRESH], "--ema needs --checkpoint"),
    ([*TINY_FRESH, "--image", "{files}/missing.png"], "--image", "no such file"),
    ([*TINY_FRESH, "--image", "{files}/notes.png"], "--image", "not a readable image"),
    (TINY_FRESH, "give --image FILE or --data-path FOLDER"),
    ([*TINY_FRESH, "--data-path", "{files}/nowhere"], "--data-path", "does not exist"),
    ([*TINY_FRESH, "--data-path", "{files}", "--num-images", "0"], "argument --num-images: must be at least 1"),
    ([*TINY_FRESH, "--image", "{files}/ok.png", "--out", "{files}/no/x.png"], "--out", "does not exist"),
    ([*TINY_FRESH, "--image", "{files}/ok.png", "--keep-rate", "0.75", "0.5", "1.0"], "--keep-rate"),
    (["--model", "resnet18", "--image", "{files}/ok.png"], "--model resnet18", "VisionTransformer"),
    (["--model", "deit_tiny_patch16_224", "--input-size", "30", "--patch-size", "4"], "--input-size 30"),
    ([*TINY_FRESH[:2], "--input-size", "4", "--patch-size", "4", "--image", "{files}/ok.png"], "1 patch token"),
    ([*TINY_FRESH[:2], "--input-size", "0", "--image", "{files}/ok.png"], "argument --input-size: must be at least 1"),
    ([*TINY_FRESH[:2], "--patch-size", "0", "--image", "{files}/ok.png"], "argument --patch-size: must be at least 1"),
    ([*TINY_FRESH, "--data-path", "{files}", "--num-images", "100000"], "--num-images 100000", "at most 64"),
]


@pytest.mark.parametrize("argv,fragments", [(case[0], case[1:]) for case in BAD])
def test_visualize_mistakes_are_one_line(argv, fragments, files, tiny_runs, capsys):
    argv = [a.format(files=files, run=tiny_runs["toe"] / "checkpoint.pth") for a in argv]
    status, _, err = run_cli(toe_main, ["visualize", *argv], capsys)
    assert_one_line_error(status, err, *fragments)


def test_visualize_refuses_a_checkpoint_whose_weights_are_not_finite(tiny_runs, tmp_path, capsys):
    """A diverged run's checkpoint (NaN weights) is named with its first broken tensor, nothing drawn."""
    state = torch.load(tiny_runs["toe"] / "checkpoint.pth", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and k.startswith("blocks.0"))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    broken = tmp_path / "diverged.pth"
    torch.save(state, broken)
    out = tmp_path / "grid.png"
    status, _, err = run_cli(toe_main, ["visualize", "--checkpoint", broken, "--out", out], capsys)
    assert_one_line_error(status, err, f"--checkpoint {broken}: its model weights hold NaN or infinite values ({name}")
    assert not out.exists()
    image = tmp_path / "image.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    status, _, err = run_cli(
        toe_main, ["visualize", "--checkpoint", broken, "--ema", "--image", image, "--out", out], capsys
    )
    assert status == 0, err  # the EMA weights are whole
