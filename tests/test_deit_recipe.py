"""The DeiT recipe end to end on a tiny generated dataset (in-process CLI runs, CPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch
from helpers import (
    ROOT,
    TINY_DEIT,
    assert_one_line_error,
    killed_before_epoch,
    load_model_state,
    read_log,
    run_cli,
    tiny_vit,
)

from toe.recipes import deit
from toe.recipes.build import load_finetune_weights


def deit_run(capsys, tiny_data, output, *extra):
    return run_cli(deit.main, [*TINY_DEIT, "--data-path", tiny_data, "--output_dir", output, *extra], capsys)


@pytest.fixture(scope="module")
def toe_run(tiny_data, tmp_path_factory):
    """Three epochs through the three ToE stages (0 1 2), shared by several tests."""
    output = tmp_path_factory.mktemp("toe_run")
    from toe.options import run_main

    run_main(
        deit.main,
        [
            *TINY_DEIT,
            "--data-path",
            str(tiny_data),
            "--output_dir",
            str(output),
            "--epochs",
            "3",
            "--toe",
            "--expansion-step",
            "0",
            "1",
            "2",
        ],
    )
    return output


def test_three_epochs_cross_three_stages_with_the_right_token_counts(toe_run):
    log = read_log(toe_run)
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert [r["toe_stage"] for r in log] == [1, 2, 3]
    assert [r["toe_tokens"] for r in log] == [1 + 32, 1 + 48, 1 + 64]  # 64 patches at .5 / .75 / 1
    for record in log:
        assert {
            "train_loss",
            "train_lr",
            "test_acc1",
            "test_acc5",
            "test_ema_acc1",
            "train_compute_time",
            "epoch_time",
            "train_images_per_sec",
            "n_parameters",
        } <= set(record)
        assert 0 < record["train_compute_time"] <= record["epoch_time"]
    for name in ("checkpoint.pth", "best_checkpoint.pth", "best_ema_checkpoint.pth", "args.json"):
        assert (toe_run / name).is_file()
    assert any((toe_run / "tensorboard").iterdir())


def test_evaluation_is_full_token_for_model_and_ema(toe_run, tiny_data, capsys):
    """The logged accuracies equal those of plain timm models (no ToE) loaded from the checkpoint."""
    from toe.data import build_dataset, build_eval_transform

    state = torch.load(toe_run / "checkpoint.pth", map_location="cpu", weights_only=True)
    val, _ = build_dataset("IMNET", tiny_data, False, build_eval_transform(32))
    images = torch.stack([val[i][0] for i in range(len(val))])
    labels = torch.tensor([val[i][1] for i in range(len(val))])
    last = read_log(toe_run)[-1]
    for key, logged in (("model", last["test_acc1"]), ("model_ema", last["test_ema_acc1"])):
        plain = tiny_vit(num_classes=10)
        plain.load_state_dict(state[key])
        with torch.no_grad():
            accuracy = (plain.eval()(images).argmax(1) == labels).float().mean().item() * 100
        assert accuracy == pytest.approx(logged, abs=1e-4)


def test_eval_flag_reports_the_checkpoint_accuracy(toe_run, tiny_data, capsys):
    status, out, err = run_cli(
        deit.main, [*TINY_DEIT, "--data-path", tiny_data, "--eval", "--resume", toe_run / "checkpoint.pth"], capsys
    )
    assert status == 0, err
    logged = read_log(toe_run)[-1]["test_acc1"]
    assert f"Accuracy of the network on the 40 test images: {logged:.2f}%" in out


def test_upstream_deit_checkpoints_evaluate_resume_finetune_visualize_and_report(toe_run, tiny_data, tmp_path, capsys):
    """A checkpoint as DeiT / the ToE reference repo write it (their keys, ``args`` an argparse.Namespace),
    under the name the reference repo gives its best EMA checkpoint, made here from our run's checkpoint."""
    import argparse
    import shutil

    from toe.cli import main as toe_main

    state = torch.load(toe_run / "checkpoint.pth", weights_only=True)
    upstream_run = tmp_path / "upstream_run"
    upstream_run.mkdir()
    upstream = upstream_run / "ema_best_checkpoint.pth"
    keys = ("model", "optimizer", "lr_scheduler", "epoch", "model_ema", "scaler")
    torch.save({**{k: state[k] for k in keys}, "args": argparse.Namespace(**state["args"])}, upstream)
    logged = read_log(toe_run)[-1]

    status, out, err = run_cli(
        deit.main, [*TINY_DEIT, "--data-path", tiny_data, "--eval", "--resume", upstream], capsys
    )
    assert status == 0, err
    assert f"Accuracy of the network on the 40 test images: {logged['test_acc1']:.2f}%" in out
    flags = ["--epochs", "4", "--toe", "--expansion-step", "0", "1", "2"]
    status, out, err = deit_run(capsys, tiny_data, tmp_path / "resumed", *flags, "--resume", upstream)
    assert status == 0, err
    assert "continuing at epoch 3" in out and [r["epoch"] for r in read_log(tmp_path / "resumed")] == [3]
    assert "not a checkpoint of this project: its flags are not compared with these" in out  # 3 epochs, now 4
    status, out, err = deit_run(capsys, tiny_data, tmp_path / "tuned", "--epochs", "1", "--finetune", upstream)
    assert status == 0, err
    assert "0 left at init" in out

    picture = tmp_path / "selection.png"
    argv = ["visualize", "--checkpoint", upstream, "--data-path", tiny_data, "--num-images", "1", "--out", picture]
    status, out, err = run_cli(toe_main, argv, capsys)
    assert status == 0, err
    assert picture.is_file()
    shutil.copy(toe_run / "log.txt", upstream_run / "log.txt")
    status, out, err = run_cli(toe_main, ["report", upstream_run], capsys)
    assert status == 0, err
    assert "ema_best_checkpoint.pth" in out.splitlines()[-1]


@pytest.mark.slow
def test_resume_gives_the_same_weights_and_schedule_as_an_uninterrupted_run(tiny_data, tmp_path, capsys):
    flags = ["--epochs", "3", "--toe", "--expansion-step", "0", "1", "2", "--seed", "7"]
    full = tmp_path / "full"
    assert deit_run(capsys, tiny_data, full, *flags)[0] == 0

    stopped = tmp_path / "stopped"
    with killed_before_epoch(2):  # stop before the last epoch
        assert deit_run(capsys, tiny_data, stopped, *flags)[0] == 130
    assert [r["epoch"] for r in read_log(stopped)] == [0, 1]

    status, out, err = deit_run(capsys, tiny_data, stopped, *flags, "--resume", stopped / "checkpoint.pth")
    assert status == 0, err
    assert "continuing at epoch 2" in out
    resumed_log, full_log = read_log(stopped), read_log(full)
    assert [r["train_lr"] for r in resumed_log] == [r["train_lr"] for r in full_log]
    assert [r["train_loss"] for r in resumed_log] == [r["train_loss"] for r in full_log]
    for key in ("model", "model_ema", "optimizer"):
        a = torch.load(full / "checkpoint.pth", weights_only=True)[key]
        b = torch.load(stopped / "checkpoint.pth", weights_only=True)[key]
        if key == "optimizer":
            a, b = {i: s["exp_avg"] for i, s in a["state"].items()}, {i: s["exp_avg"] for i, s in b["state"].items()}
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{key}.{name} differs after resuming"


def test_baseline_without_toe_flags_is_full_token(tiny_data, tmp_path, capsys):
    status, out, err = deit_run(capsys, tiny_data, tmp_path / "base", "--epochs", "1", "--no-model-ema")
    assert status == 0, err
    record = read_log(tmp_path / "base")[0]
    assert record["toe_stage"] is None and record["toe_tokens"] == 65
    assert "ToE: off" in out and "test_ema_acc1" not in record


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_distillation_with_a_tiny_teacher(tiny_data, tmp_path, capsys, kind):
    teacher = timm.create_model("resnet10t", num_classes=10)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    tiny = [a for a in TINY_DEIT]
    tiny[tiny.index("deit_tiny_patch16_224")] = "deit_tiny_distilled_patch16_224"
    status, out, err = run_cli(
        deit.main,
        [
            *tiny,
            "--data-path",
            tiny_data,
            "--output_dir",
            tmp_path / kind,
            "--epochs",
            "1",
            "--toe",
            "--distillation-type",
            kind,
            "--teacher-model",
            "resnet10t",
            "--teacher-path",
            tmp_path / "teacher.pth",
        ],
        capsys,
    )
    assert status == 0, err
    record = read_log(tmp_path / kind)[0]
    assert record["toe_tokens"] == 2 + 32  # cls and dist tokens both kept in front
    assert torch.isfinite(torch.tensor(record["train_loss"]))


def test_distillation_loss_values():
    from toe.engine.losses import DistillationLoss

    class Teacher(torch.nn.Module):
        def forward(self, x):
            return x

    inputs = torch.randn(4, 5)
    cls_logits, dist_logits, targets = torch.randn(4, 5), torch.randn(4, 5), torch.randint(0, 5, (4,))
    base = torch.nn.CrossEntropyLoss()
    hard = DistillationLoss(base, Teacher(), "hard", 0.5, 1.0)(inputs, (cls_logits, dist_logits), targets)
    expected = 0.5 * base(cls_logits, targets) + 0.5 * base(dist_logits, inputs.argmax(1))
    torch.testing.assert_close(hard, expected)
    soft = DistillationLoss(base, Teacher(), "soft", 1.0, 2.0)(inputs, (cls_logits, dist_logits), targets)
    p_teacher = (inputs / 2).softmax(1)
    kl = (p_teacher * (p_teacher.log() - (dist_logits / 2).log_softmax(1))).sum() * 4 / dist_logits.numel()
    torch.testing.assert_close(soft, kl)


def test_finetune_drops_the_head_and_resamples_the_position_embedding(toe_run, tiny_data, tmp_path, capsys):
    source = load_model_state(toe_run / "checkpoint.pth")
    model = tiny_vit(num_classes=5, img_size=48)
    report = load_finetune_weights(model, str(toe_run / "checkpoint.pth"))
    assert "2 head tensors dropped" in report
    state = model.state_dict()
    assert state["pos_embed"].shape == (1, 1 + 144, 32)
    assert torch.equal(state["pos_embed"][:, 0], source["pos_embed"][:, 0])  # cls position kept
    assert torch.equal(state["blocks.1.mlp.fc1.weight"], source["blocks.1.mlp.fc1.weight"])
    assert state["head.weight"].shape == (5, 32)
    # bicubic without antialiasing, as DeiT's main.py (timm's default antialiases)
    grid = source["pos_embed"][:, 1:].reshape(1, 8, 8, 32).permute(0, 3, 1, 2)
    upstream = torch.nn.functional.interpolate(grid, size=(12, 12), mode="bicubic", align_corners=False)
    torch.testing.assert_close(state["pos_embed"][:, 1:], upstream.permute(0, 2, 3, 1).reshape(1, 144, 32))

    status, out, err = deit_run(
        capsys,
        tiny_data,
        tmp_path / "ft",
        "--epochs",
        "1",
        "--input-size",
        "48",
        "--finetune",
        toe_run / "checkpoint.pth",
        "--toe",
    )
    assert status == 0, err
    assert "2 head tensors dropped" not in out  # same 10 classes: the head is kept
    assert read_log(tmp_path / "ft")[0]["toe_tokens"] == 1 + 72  # 12 x 12 patches at 48 px


@pytest.mark.slow
def test_main_script_help_and_a_user_error_from_a_fresh_process(tmp_path):
    script = ROOT / "ToE" / "deit" / "main.py"
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
    assert help_text.returncode == 0
    for flag in (
        "--expansion-step",
        "--keep-rate",
        "--initialization-keep-rate",
        "--expansion-multiple-stage",
        "--distance",
        "--sparse-eval",
        "--seeding",
        "--model-ema",
        "--repeated-aug",
        "--dist-eval",
        "--finetune",
        "--teacher-model",
        "--amp-dtype",
        "--auto-resume",
    ):
        assert flag in help_text.stdout
    bad = subprocess.run(
        [sys.executable, script, "--data-path", tmp_path / "nowhere"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == f"error: --data-path {tmp_path / 'nowhere'} does not exist"


def test_toe_report_summarises_the_run(toe_run, capsys):
    from toe.cli import main as toe_main

    status, out, err = run_cli(toe_main, ["report", toe_run], capsys)
    assert status == 0, err
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    patch_tokens = [("1", "0-0", "32 of 64"), ("2", "1-1", "48 of 64"), ("3", "2-2", "64 of 64")]
    assert [(r[0], r[1], " ".join(r[2:5])) for r in rows] == patch_tokens  # the class token on top
    assert rows[-1][-1] == "1.00x" and all(r[-1].endswith("x") for r in rows)
    assert "top-1 (model): final" in out and "top-1 (EMA): final" in out and "checkpoint.pth" in out
    status, _, err = run_cli(toe_main, ["report", toe_run / "missing"], capsys)
    assert_one_line_error(status, err, "no log.txt")


def test_eval_transform_of_small_inputs_only_normalises_as_deit():
    """DeiT: inputs of 32 px or less are evaluated as they are (no resize, no centre crop)."""
    from PIL import Image
    from torchvision import transforms as T

    from toe.data import build_eval_transform

    pixels = torch.randint(0, 256, (32, 32, 3), dtype=torch.uint8).numpy()
    image = Image.fromarray(pixels)
    normalise = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    assert torch.equal(build_eval_transform(32)(image), normalise(image))
    larger = Image.fromarray(torch.randint(0, 256, (48, 40, 3), dtype=torch.uint8).numpy())
    assert build_eval_transform(32)(larger).shape == (3, 32, 32)  # other sizes: resized and cropped
    resized = build_eval_transform(48)(Image.fromarray(torch.randint(0, 256, (48, 48, 3), dtype=torch.uint8).numpy()))
    assert resized.shape == (3, 48, 48)


def test_three_augment_is_deits_crop_and_pil_blur():
    """DeiT's --ThreeAugment: timm's random resized crop, and a PIL blur whose radius is uniform in (0.1, 2.0)."""
    import random

    import numpy as np
    from PIL import Image, ImageFilter
    from timm.data.transforms import RandomResizedCropAndInterpolation
    from torchvision import transforms as T

    from toe.data.transforms import build_train_transform

    transform = build_train_transform(32, three_augment=True)
    assert isinstance(transform.transforms[0], RandomResizedCropAndInterpolation)
    assert transform.transforms[0].interpolation == T.InterpolationMode.BICUBIC
    assert transform.transforms[0].scale == (0.08, 1.0)
    choice = next(t for t in transform.transforms if isinstance(t, T.RandomChoice))
    blur = choice.transforms[2]
    image = Image.fromarray(np.kron(np.eye(4, dtype=np.uint8) * 255, np.ones((8, 8), dtype=np.uint8)))  # sharp edges
    for trial in range(5):
        random.seed(trial)
        blurred = blur(image)
        random.seed(trial)
        radius = random.uniform(0.1, 2.0)
        assert np.array_equal(np.asarray(blurred), np.asarray(image.filter(ImageFilter.GaussianBlur(radius))))


def val_tensors(tiny_data):
    """The tiny validation set as DeiT's eval transform gives it: images [40, 3, 32, 32], labels [40]."""
    from toe.data import build_dataset, build_eval_transform

    val, _ = build_dataset("IMNET", tiny_data, False, build_eval_transform(32))
    return torch.stack([val[i][0] for i in range(len(val))]), torch.tensor([val[i][1] for i in range(len(val))])


def test_sparse_eval_of_a_checkpoint_runs_at_the_toe_stage_of_its_epoch(toe_run, tiny_data, capsys):
    """checkpoint-prev.pth holds epoch 1 (stage 2: 48 of 64 patches); --eval --sparse-eval evaluates the model and
    its EMA there, not at the stage of epoch 0 (32 patches)."""
    from torch.nn.functional import cross_entropy

    from toe import TokenSelect, apply_toe

    checkpoint = toe_run / "checkpoint-prev.pth"
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 1
    flags = ["--toe", "--expansion-step", "0", "1", "2", "--sparse-eval"]
    metrics = deit.main([*TINY_DEIT, "--data-path", str(tiny_data), "--eval", "--resume", str(checkpoint), *flags])
    images, labels = val_tensors(tiny_data)
    for key, logged in (("model", metrics["test_loss"]), ("model_ema", metrics["test_ema_loss"])):
        model = apply_toe(tiny_vit(num_classes=10), TokenSelect([0, 1, 2], [0.5, 0.75, 1.0], sparse_eval=True))
        model.load_state_dict(state[key])
        losses = {}
        for epoch in (0, 1):
            model.token_select.update_current_stage(epoch)
            with torch.no_grad():
                losses[epoch] = cross_entropy(model.eval()(images), labels).item()
            assert model.token_select.last_index.shape == (40, 1 + (32, 48)[epoch])
        assert logged == pytest.approx(losses[1], rel=1e-6) and losses[1] != pytest.approx(losses[0], rel=1e-5)


def test_eval_auto_resume_without_a_checkpoint_is_refused(tiny_data, tmp_path, capsys):
    argv = [*TINY_DEIT, "--data-path", tiny_data, "--eval", "--auto-resume", "--output_dir", tmp_path / "empty"]
    status, _, err = run_cli(deit.main, argv, capsys)
    assert_one_line_error(status, err, "--eval needs weights to evaluate", "--auto-resume")


def test_upstream_flags_are_accepted(tiny_data, tmp_path, capsys):
    """--no-train-mode trains the model in eval mode with ToE still reducing the tokens (stage 1: 32 of 64
    patches); --distributed, --resplit and --inat-category are accepted (--cosub is refused: test_bad_input)."""
    upstream = ["--no-train-mode", "--distributed", "--resplit", "--inat-category", "genus"]
    status, out, err = deit_run(capsys, tiny_data, tmp_path / "eval_mode", "--epochs", "1", "--toe", *upstream)
    assert status == 0, err
    assert read_log(tmp_path / "eval_mode")[0]["toe_tokens"] == 1 + 32


def test_attn_only_trains_attention_position_embedding_and_the_class_head_only():
    model = tiny_vit("deit_tiny_distilled_patch16_224", num_classes=10)
    deit._train_attention_only(model)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    attention = {name for name, _ in model.named_parameters() if ".attn." in name}
    assert attention and trained == attention | {"pos_embed", "head.weight", "head.bias"}  # head_dist frozen


def test_bce_loss_binarises_the_mixed_targets_as_deit():
    from torch.nn.functional import binary_cross_entropy_with_logits

    from toe.engine.losses import classification_loss

    logits = torch.randn(2, 4)
    mixed = torch.tensor([[0.7, 0.3, 0.0, 0.0], [0.0, 0.0, 0.9, 0.1]])
    bce = classification_loss(mixup_active=True, smoothing=0.0, bce=True)
    assert torch.equal(bce(logits, mixed), binary_cross_entropy_with_logits(logits, mixed.gt(0.0).float()))
    hard = torch.tensor([1, 3])
    assert torch.equal(bce(logits, hard), binary_cross_entropy_with_logits(logits, torch.eye(4)[hard]))
