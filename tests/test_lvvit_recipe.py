"""The LV-ViT recipe end to end on the tiny generated dataset: generate_label -> train with ToE and token
labels -> resume -> eval, its flags (config file, local rank, AMP), and one-line errors for bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from helpers import (
    ROOT,
    assert_one_line_error,
    killed_before_epoch,
    read_log,
    run_cli,
    tiny_model_kwargs,
    tiny_vit,
    upstream_lvvit_layout,
)
from torchvision import transforms as T

from toe import TokenSelect, apply_toe
from toe.cli import main as toe_main
from toe.data.datasets import image_folder
from toe.options import run_main
from toe.recipes import generate_label, lvvit
from toe.recipes.generate_label import dense_logits
from toe.saved_run import model_from_checkpoint
from toe.visualize import block0_tokens, dataset_images, load_image, stage_selections, to_model_input

TINY_LVVIT = [
    "--model",
    "lvvit_s",
    "--img-size",
    "32",
    "--model-kwargs",
    *tiny_model_kwargs("patch_size", "embed_dim", "depth", "num_heads"),
    "stem_chans=16",
    "-j",
    "0",
    "--no-progress",
    "-b",
    "16",
    "--device",
    "cpu",
]
# 2 epochs: 1 + 1 cool-down; ToE stage 1 (keep .4) in epoch 0, stage 2 (keep .7) in epoch 1
TRAIN = ["--epochs", "1", "--cooldown-epochs", "1", "--warmup-epochs", "1", "--model-ema", "--toe"]
TRAIN += ["--expansion-step", "0", "1", "2", "--seed", "5"]


@pytest.fixture(scope="module")
def annotator(tmp_path_factory):
    """A checkpoint of this project's format (weights + the flags naming the model) of a tiny DeiT."""
    model = tiny_vit(seed=0, num_classes=10, depth=2)
    path = tmp_path_factory.mktemp("annotator") / "checkpoint.pth"
    saved = {"model": "deit_tiny_patch16_224", "input_size": 32, "patch_size": 4}
    saved["model_kwargs"] = tiny_model_kwargs(depth=2)
    torch.save({"model": model.state_dict(), "epoch": 0, "args": saved}, path)
    return path


@pytest.fixture(scope="module")
def labels(tiny_data, annotator, tmp_path_factory):
    out = tmp_path_factory.mktemp("labels") / "labels"
    run_main(
        generate_label.main, [str(tiny_data), str(out), "--checkpoint", str(annotator), "-j", "0", "--no-progress"]
    )
    return out


@pytest.fixture(scope="module")
def lvvit_run(tiny_data, labels, tmp_path_factory):
    output = tmp_path_factory.mktemp("lvvit_run")
    argv = [tiny_data, "--output", output, *TINY_LVVIT, *TRAIN, "--token-label", "--token-label-data", labels]
    run_main(lvvit.main, [str(a) for a in argv])
    return output


def test_generate_label_writes_the_annotators_top5_per_location_and_resumes(tiny_data, labels, annotator, capsys):
    files = sorted(labels.rglob("*"))
    label_files = [f for f in files if f.is_file() and f.parent != labels]
    assert len(label_files) == 80 and all(f.suffix == ".pt" and not f.name.startswith(".") for f in label_files)
    assert sorted(f.name for f in labels.iterdir() if f.is_file()) == [".toe-run.lock", "token_labels.json"]
    # the file of one image holds the DeiT's top-5 per-patch logits, computed here independently of the script
    images, _ = image_folder(tiny_data / "train", None)
    path, _ = images.samples[17]
    model = tiny_vit(num_classes=10, depth=2).eval()
    model.load_state_dict(torch.load(annotator, weights_only=True)["model"])
    assert model.pretrained_cfg["crop_pct"] == 0.9
    prepare = T.Compose(  # as TokenLabeling: resize to 32 / crop_pct (timm's DeiT: 0.9), then the centre crop
        [
            T.Resize(35, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(32),
            T.ToTensor(),
            T.Normalize(model.pretrained_cfg["mean"], model.pretrained_cfg["std"]),
        ]
    )
    with torch.no_grad():
        logits = dense_logits(model, prepare(images.loader(path))[None])[0]  # [10, 8, 8]
    scores, classes = logits.topk(5, dim=0)
    relative = Path(path).relative_to(tiny_data / "train").with_suffix(".pt")
    stored = torch.load(labels / relative, weights_only=True)
    assert stored.shape == (2, 5, 8, 8) and stored.dtype == torch.float16
    assert torch.equal(stored[1].long(), classes)
    torch.testing.assert_close(stored[0].float(), scores, atol=2e-3, rtol=2e-3)

    # resumable: nothing to do again; deleted files are made again, the others are left untouched
    before = {f: f.stat().st_mtime_ns for f in label_files}
    for f in label_files[:2]:
        f.unlink()
    argv = [tiny_data, labels, "--checkpoint", annotator, "-j", "0", "--no-progress"]
    status, out, err = run_cli(generate_label.main, argv, capsys)
    assert status == 0, err
    assert "78 of 80 images" in out and "wrote 2 label files [2, 5, 8, 8]" in out
    assert all(f.stat().st_mtime_ns == before[f] for f in label_files[2:]) and all(f.exists() for f in label_files)
    status, out, _ = run_cli(generate_label.main, argv, capsys)
    assert status == 0 and "80 of 80 images" in out and "wrote" not in out


def test_generate_label_errors(tiny_data, annotator, tmp_path, capsys):
    foreign = tmp_path / "foreign.pth"
    torch.save(timm.create_model("resnet10t", num_classes=10).state_dict(), foreign)
    cases = [
        ([tiny_data, tmp_path / "l"], ["--checkpoint FILE or --pretrained"]),
        ([tmp_path / "nowhere", tmp_path / "l", "--checkpoint", annotator], ["nowhere/train does not exist"]),
        ([tiny_data, tmp_path / "l", "--checkpoint", foreign], ["does not name its model: add --model"]),
        (
            [tiny_data, tmp_path / "l", "--checkpoint", foreign, "--model", "resnet18"],
            ["does not fit --model resnet18"],
        ),
        ([tiny_data, tmp_path / "l", "--checkpoint", tmp_path / "none.pth"], ["none.pth: no such file"]),
    ]
    for argv, fragments in cases:
        status, _, err = run_cli(generate_label.main, [*argv, "-j", "0", "--no-progress"], capsys)
        assert_one_line_error(status, err, *fragments)


def test_training_with_toe_and_token_labels(lvvit_run):
    log = read_log(lvvit_run)
    assert [r["epoch"] for r in log] == [0, 1]  # --epochs 1 + --cooldown-epochs 1
    assert [r["toe_stage"] for r in log] == [1, 2]
    assert [r["toe_tokens"] for r in log] == [1 + 24, 1 + 43]  # 64 patches at keep rates .4 / .7, seeds .2
    # timm train.py stepping (step(epoch + 1)): warm-up lr in epoch 0, the cool-down at --min-lr in epoch 1
    assert [r["train_lr"] for r in log] == pytest.approx([1e-6, 1e-5])
    for record in log:
        assert {"test_acc1", "test_ema_acc1", "train_compute_time", "n_parameters"} <= set(record)
        assert torch.isfinite(torch.tensor(record["train_loss"]))
    for name in ("checkpoint.pth", "best_checkpoint.pth", "best_ema_checkpoint.pth", "args.yaml", "log.txt"):
        assert (lvvit_run / name).is_file()


def test_args_yaml_holds_the_resolved_flags_and_works_as_a_config(lvvit_run, tiny_data):
    saved = yaml.safe_load((lvvit_run / "args.yaml").read_text())
    assert saved["token_label"] is True and saved["model_ema"] is True and saved["lr"] == 1.6e-3
    assert saved["model_kwargs"] == ["patch_size=4", "embed_dim=32", "depth=3", "num_heads=2", "stem_chans=16"]
    args = lvvit.parse_args(["-c", str(lvvit_run / "args.yaml"), str(tiny_data), "--lr", "0.01"])
    assert args.lr == 0.01  # the command line wins over the file
    for key in ("token_label_data", "expansion_step", "model_kwargs", "epochs", "cooldown_epochs", "img_size"):
        assert getattr(args, key) == saved[key]


def test_config_file_values_are_checked_like_flags(tmp_path, tiny_data, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("lr: 1e-3\nbatch-size: 8\nopt_betas: ['0.9', 0.95]\n")
    args = lvvit.parse_args(["-c", str(config), str(tiny_data)])
    assert (args.lr, args.batch_size, args.opt_betas) == (1e-3, 8, [0.9, 0.95])  # YAML's '1e-3' is a string
    for text, fragment in (
        ("lr_typo: 1\n", "unknown key 'lr_typo'"),
        ("lr: fast\n", "lr: expected a number, got 'fast'"),
        ("epochs: 2.5\n", "epochs: expected a whole number, got '2.5'"),
        ('amp: "no"\n', "amp must be true or false, got 'no'"),
        ('model_ema: "false"\n', "model_ema must be true or false, got 'false'"),
        ("weight_decay: true\n", "weight_decay must be a single number, got True"),
        ("lr: [0.1, 0.2]\n", "lr must be a single number, got [0.1, 0.2]"),
        ("model: {name: lvvit_s}\n", "model must be a single string"),
        ("opt_betas: 0.9\n", "opt_betas takes a list of values"),
        ("scale: [0.5]\n", "scale needs 2 values, got 1"),
        ("drop_path: 1.5\n", "drop_path: must lie in [0, 1), got 1.5"),
        ("model_ema_decay: 2.0\n", "model_ema_decay: must lie in [0, 1], got 2.0"),
        ("device: foo\n", "device: 'foo' is not a device"),
        ("mixup_mode: odd\n", "mixup_mode must be one of batch, pair, elem"),
        ("- 1\n", "must hold a mapping"),
        ("lr: [\n", "is not valid YAML"),
    ):
        config.write_text(text)
        status, _, err = run_cli(lvvit.main, ["-c", config, tiny_data], capsys)
        assert_one_line_error(status, err, "--config", fragment)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(lvvit_run, tiny_data, labels, tmp_path, capsys):
    stopped = tmp_path / "stopped"
    argv = [tiny_data, "--output", stopped, *TINY_LVVIT, *TRAIN, "--token-label", "--token-label-data", labels]
    with killed_before_epoch(1):  # stop before the last epoch
        assert run_cli(lvvit.main, argv, capsys)[0] == 130
    status, out, err = run_cli(lvvit.main, [*argv, "--auto-resume"], capsys)
    assert status == 0, err
    assert "continuing at epoch 1" in out
    assert [r["train_loss"] for r in read_log(stopped)] == [r["train_loss"] for r in read_log(lvvit_run)]
    for key in ("model", "model_ema"):
        a = torch.load(lvvit_run / "checkpoint.pth", weights_only=True)[key]
        b = torch.load(stopped / "checkpoint.pth", weights_only=True)[key]
        for name in a:
            assert torch.equal(a[name], b[name]), f"{key}.{name} differs after resuming"


def test_visualize_and_report_read_an_lvvit_run(lvvit_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "selection.png"
    argv = ["visualize", "--checkpoint", lvvit_run / "checkpoint.pth", "--data-path", tiny_data, "--num-images", 2]
    status, stdout, err = run_cli(toe_main, [*argv, "--stage", 1, 2, "--out", out], capsys)
    assert status == 0, err
    assert "stage(s) 1, 2 of 2 image(s)" in stdout and out.is_file()

    # the drawn selection is the one the LV-ViT's training forward makes (MixToken off: it would mix images;
    # stem batch norms on their running statistics, as the picture's eval-mode forward uses them)
    model, _ = model_from_checkpoint(lvvit_run / "checkpoint.pth")
    model.mix_token = False
    apply_toe(model, TokenSelect(expansion_step=(0, 1, 2), keep_rate=(0.4, 0.7, 1.0), initialization_keep_rate=0.2))
    batch = to_model_input([load_image(path, (32, 32))[0] for path in dataset_images(tiny_data, 2)])
    selections = stage_selections(model.token_select, block0_tokens(model, batch), 1, [1, 2])
    for stage in (1, 2):
        model.token_select.update_current_stage(stage - 1)
        model.train()
        for norm in model.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.eval()
        with torch.no_grad():
            model(batch)
        for b, row in enumerate(selections):
            assert torch.equal(row[stage - 1].kept, model.token_select.last_index[b, 1:] - 1)

    # 24 and 43 of 64 patches (+ class token); no full-token stage was reached, so no measured speedup
    status, report, err = run_cli(toe_main, ["report", lvvit_run], capsys)
    assert status == 0, err
    rows = [line.split() for line in report.splitlines() if line.strip()[:1].isdigit()]
    assert [row[:5] + row[7:8] for row in rows] == [
        ["1", "0-0", "24", "of", "64", "-"],
        ["2", "1-1", "43", "of", "64", "-"],
    ]
    assert "no full-token stage to compare with yet" in report


def test_eval_reports_the_checkpoint_accuracy_full_token(lvvit_run, tiny_data, labels, capsys):
    argv = [tiny_data, *TINY_LVVIT, "--model-ema", "--eval", "--resume", lvvit_run / "checkpoint.pth"]
    status, out, err = run_cli(lvvit.main, [*argv, "--toe"], capsys)
    assert status == 0, err
    last = read_log(lvvit_run)[-1]
    assert f"lvvit_s on the 40 validation images: top-1 {last['test_acc1']:.2f}%" in out
    assert f"EMA on the 40 validation images: top-1 {last['test_ema_acc1']:.2f}%" in out


def test_tokenlabeling_checkpoints_load_for_every_flag_that_takes_one(lvvit_run, tiny_data, tmp_path, capsys):
    """TokenLabeling's files: its timm saver's checkpoint (state_dict / state_dict_ema, args a Namespace) and
    bare released weights, both with its stem key names, made here from our run's weights."""
    import argparse

    state = torch.load(lvvit_run / "checkpoint.pth", weights_only=True)
    saver = tmp_path / "model_best.pth.tar"
    args = argparse.Namespace(model="lvvit_s", img_size=32, token_label=True, epochs=1)
    torch.save(
        {
            "epoch": state["epoch"],
            "arch": "lvvit_s",
            "state_dict": upstream_lvvit_layout(state["model"]),
            "optimizer": state["optimizer"],
            "args": args,
            "state_dict_ema": upstream_lvvit_layout(state["model_ema"]),
            "metric": 50.0,
            "version": 2,
        },
        saver,
    )
    bare = tmp_path / "lvvit_s-26M-224-83.3.pth.tar"
    torch.save(upstream_lvvit_layout(state["model"]), bare)
    assert "patch_embed.conv1.weight" in torch.load(bare, weights_only=True)
    last = read_log(lvvit_run)[-1]

    argv = [tiny_data, *TINY_LVVIT, "--model-ema", "--eval", "--resume", saver]
    status, out, err = run_cli(lvvit.main, argv, capsys)
    assert status == 0, err
    assert (
        f"top-1 {last['test_acc1']:.2f}%" in out
        and f"EMA on the 40 validation images: top-1 {last['test_ema_acc1']:.2f}%" in out
    )
    status, out, err = run_cli(lvvit.main, [tiny_data, *TINY_LVVIT, "--eval", "--resume", bare], capsys)
    assert status == 0, err
    assert f"top-1 {last['test_acc1']:.2f}%" in out

    argv = [tiny_data, "--output", tmp_path / "tuned", *TINY_LVVIT, "--epochs", "1", "--cooldown-epochs", "0"]
    status, out, err = run_cli(lvvit.main, [*argv, "--finetune", bare], capsys)
    assert status == 0, err
    assert "fine-tuning from" in out and "0 left at init, 0 ignored" in out

    kwargs = ["--model-kwargs", "patch_size=4", "embed_dim=32", "depth=3", "num_heads=2", "stem_chans=16"]
    argv = [tiny_data, tmp_path / "labels", "--checkpoint", bare, "--model", "lvvit_s", "--img-size", 32, *kwargs]
    status, out, err = run_cli(generate_label.main, [*argv, "-j", 0, "--no-progress"], capsys)
    assert status == 0, err
    assert "wrote 80 label files [2, 5, 8, 8]" in out

    picture = tmp_path / "selection.png"
    argv = ["visualize", "--checkpoint", bare, "--model", "lvvit_s", "--input-size", 32, *kwargs]
    status, out, err = run_cli(toe_main, [*argv, "--data-path", tiny_data, "--num-images", 1, "--out", picture], capsys)
    assert status == 0, err
    assert picture.is_file()


def test_baseline_without_token_labels_with_apex_amp_flag(tiny_data, tmp_path, capsys):
    argv = [tiny_data, "--output", tmp_path / "base", *TINY_LVVIT, "--epochs", "1", "--cooldown-epochs", "0"]
    status, out, err = run_cli(lvvit.main, [*argv, "--apex-amp", "--mixup", "0.8"], capsys)
    assert status == 0, err
    assert "fp32" in out and "no token labels" in out and "ToE: off" in out  # AMP on, but the CPU stays fp32
    record = read_log(tmp_path / "base")[0]
    assert record["toe_stage"] is None and record["toe_tokens"] == 65 and "test_ema_acc1" not in record


def test_local_rank_flags(tiny_data, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert lvvit.parse_args([str(tiny_data), "--local_rank=3"]).local_rank == 3
    assert lvvit.parse_args([str(tiny_data), "--local-rank", "2"]).local_rank == 2
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert lvvit.parse_args([str(tiny_data)]).local_rank == 1


def test_bad_input_is_one_clear_line(tiny_data, labels, tmp_path, capsys):
    missing = tmp_path / "missing_one"
    shutil.copytree(labels, missing)
    sorted(missing.rglob("*.pt"))[3].unlink()
    wrong_first = tmp_path / "wrong_first"
    shutil.copytree(labels, wrong_first)
    torch.save(torch.zeros(5, 8, 8), sorted(wrong_first.rglob("*.pt"))[0])
    token = ["--token-label", "--token-label-data"]
    cases = [
        (["--token-label"], ["--token-label needs --token-label-data"]),
        ([*token, missing], ["no label file for 1 of 80 training images"]),
        ([*token, wrong_first], ["holds [5, 8, 8], expected a [2, 5, H, W] tensor"]),
        ([*token, tmp_path / "nowhere"], ["--token-label-data", "does not exist"]),
        ([*token, labels, "--token-label-size", "5"], ["--token-label-size 5 must be 1 or the model's token grid 8"]),
        ([*token, labels, "--model", "deit_tiny_patch16_224", "--model-kwargs", "patch_size=4"], ["needs an LV-ViT"]),
        ([*token, labels, "--mixup", "0.8"], ["--mixup/--cutmix do not combine with --token-label"]),
        (["--ground-truth"], ["--ground-truth needs --token-label"]),
        (["--model", "lvvit_x"], ["--model lvvit_x is not a timm model name"]),
    ]
    for extra, fragments in cases:
        status, _, err = run_cli(lvvit.main, [tiny_data, *TINY_LVVIT, "--epochs", "1", *extra], capsys)
        assert_one_line_error(status, err, *fragments)
    status, _, err = run_cli(lvvit.main, [tmp_path / "no_data", *TINY_LVVIT], capsys)
    assert_one_line_error(status, err, "data folder", "no_data", "does not exist")


def test_a_bad_label_file_met_by_a_loader_worker_is_one_line(tiny_data, labels, tmp_path, capsys):
    wrong_later = tmp_path / "wrong_later"
    shutil.copytree(labels, wrong_later)
    for bad in sorted(wrong_later.rglob("*.pt"))[1:]:  # the first file is checked up front, the rest when loaded
        torch.save(torch.zeros(2, 5, 8, 8, dtype=torch.float16) + 11, bad)
    argv = [tiny_data, *TINY_LVVIT, "-j", "1", "--epochs", "1", "--token-label", "--token-label-data", wrong_later]
    status, _, err = run_cli(lvvit.main, argv, capsys)
    assert_one_line_error(status, err, "token label file", "class indices outside 0..9")


@pytest.mark.slow
def test_main_script_help_and_a_user_error_from_a_fresh_process(tiny_data):
    script = ROOT / "ToE" / "lvvit" / "main.py"
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=180)
    assert help_text.returncode == 0
    for flag in (
        "--token-label-data",
        "--token-label-size",
        "--dense-weight",
        "--cls-weight",
        "--ground-truth",
        "--model-ema-decay",
        "--apex-amp",
        "--local-rank",
        "--config",
        "--cooldown-epochs",
        "--expansion-step",
        "--keep-rate",
        "--initialization-keep-rate",
        "--sparse-eval",
    ):
        assert flag in help_text.stdout
    bad = subprocess.run(
        [sys.executable, script, tiny_data, "--token-label"], capture_output=True, text=True, timeout=180
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "error: --token-label needs --token-label-data (the label files of generate_label.py)"
