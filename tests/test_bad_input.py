"""The bad-input matrix of docs/failure-modes.md: every mistake is one line, exit status 2, nothing written.

Each case runs the DeiT recipe in-process with one mistake and a fresh --output_dir, and checks that
the message names the flag or file, that there is no traceback, that no checkpoint or log was written,
and that an existing run stays byte-for-byte unchanged.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import TINY_DEIT, assert_one_line_error, run_cli, tiny_model_kwargs, write_png

from toe.engine import trainer
from toe.options import run_main
from toe.recipes import deit


@pytest.fixture(scope="module")
def cases_data(tiny_data, tmp_path_factory):
    """Broken datasets and files next to a finished tiny run."""
    root = tmp_path_factory.mktemp("bad")
    (root / "empty" / "train").mkdir(parents=True)
    (root / "empty" / "val").mkdir(parents=True)
    (root / "empty_class" / "train" / "a").mkdir(parents=True)
    (root / "empty_class" / "val" / "a").mkdir(parents=True)
    shutil.copytree(tiny_data, root / "other_classes")
    shutil.rmtree(root / "other_classes" / "val" / "ring")
    (root / "other_classes" / "val" / "hexagon").mkdir()
    shutil.copy(tiny_data / "val" / "ring" / "00000.png", root / "other_classes" / "val" / "hexagon")
    shutil.copytree(tiny_data, root / "not_an_image")
    (root / "not_an_image" / "train" / "cross" / "00003.png").write_text("plain text")
    shutil.copytree(tiny_data, root / "truncated")
    image = root / "truncated" / "train" / "ring" / "00004.png"
    image.write_bytes(image.read_bytes()[:80])
    (root / "notes.pth").write_text("hello")
    shutil.copytree(tiny_data, root / "bomb")
    write_png(root / "bomb" / "train" / "dots" / "00003.png", 30000, 30000)  # 900 megapixels announced
    run = root / "run"
    run_main(deit.main, [*TINY_DEIT, "--data-path", str(tiny_data), "--output_dir", str(run), "--epochs", "1"])
    data = (run / "checkpoint.pth").read_bytes()
    (root / "torn.pth").write_bytes(data[: len(data) // 3])
    torch.save({"weight": torch.zeros(3)}, root / "teacher.pth")
    return root


def case(flags, *fragments):
    return flags, fragments


CASES = {
    "missing data path": case(["--data-path", "{root}/nowhere"], "--data-path", "does not exist"),
    "no train folder": case(["--data-path", "{root}"], "train does not exist"),
    "no class folders": case(["--data-path", "{root}/empty"], "has no class folders"),
    "empty class folder": case(["--data-path", "{root}/empty_class"], "train/a holds no images"),
    "train/val classes differ": case(["--data-path", "{root}/other_classes"], "different class folders"),
    "unreadable image": case(["--data-path", "{root}/not_an_image"], "cannot read image", "cross/00003.png"),
    "truncated image": case(["--data-path", "{root}/truncated"], "cannot read image", "ring/00004.png"),
    "ToE lists of unequal length": case(["--keep-rate", "0.5", "1.0"], "--keep-rate", "same number of values"),
    "keep rates not increasing": case(["--keep-rate", "0.75", "0.5", "1.0"], "strictly increasing"),
    "seeds not below the first rate": case(["--initialization-keep-rate", "0.5"], "--initialization-keep-rate"),
    "stages not ascending": case(["--expansion-step", "0", "200", "100"], "strictly ascending"),
    "no sub-steps": case(["--expansion-multiple-stage", "0"], "--expansion-multiple-stage"),
    "unknown distance": case(["--distance", "cosin"], "--distance"),
    "sparse eval without ToE": case(["--sparse-eval"], "--sparse-eval", "need ToE"),
    "token reduction without ToE": case(["--token-reduction", "random"], "--token-reduction", "need ToE"),
    "unknown token reduction": case(["--toe", "--token-reduction", "tome"], "--token-reduction", "invalid choice"),
    "input not a multiple of the patch": case(["--input-size", "30"], "--input-size 30", "patch size 4"),
    "batch larger than the dataset": case(["--batch-size", "1000"], "--batch-size 1000", "larger than"),
    "odd batch with mixup": case(["--batch-size", "15"], "--batch-size 15 must be even"),
    "unknown model": case(["--model", "deit_huge_nonexistent"], "--model deit_huge_nonexistent"),
    "model kwargs not key=value": case(["--model-kwargs", "depth"], "--model-kwargs"),
    "resume file missing": case(["--resume", "{root}/missing.pth"], "--resume", "no such file"),
    "resume a text file": case(["--resume", "{root}/notes.pth"], "--resume", "notes.pth"),
    "resume a truncated checkpoint": case(["--resume", "{root}/torn.pth"], "torn.pth", "not a readable"),
    "resume with another model": case(
        ["--resume", "{root}/run/checkpoint.pth", "--model-kwargs", *tiny_model_kwargs(depth=2)],
        "was written by a run with other settings: --model-kwargs",
    ),
    "output folder holds another run": case(["--output_dir", "{root}/run"], "already holds a run"),
    "distillation without teacher": case(["--distillation-type", "hard"], "--teacher-path"),
    "distillation of a plain model": case(
        ["--distillation-type", "hard", "--teacher-model", "resnet10t", "--teacher-path", "{root}/teacher.pth"],
        "needs a distilled model",
    ),
    "teacher weights of another model": case(
        [
            "--model",
            "deit_tiny_distilled_patch16_224",
            "--distillation-type",
            "soft",
            "--teacher-model",
            "resnet10t",
            "--teacher-path",
            "{root}/teacher.pth",
        ],
        "--teacher-path",
        "does not fit",
    ),
    "finetune file missing": case(["--finetune", "{root}/missing.pth"], "--finetune", "no such file"),
    "CUDA asked on a CPU machine": case(["--device", "cuda"], "--device cuda", "no CUDA device"),
    "zero epochs": case(["--epochs", "0"], "argument --epochs: must be at least 1"),
    "bad eval crop ratio": case(["--eval-crop-ratio", "0"], "--eval-crop-ratio"),
    "negative checkpoint interval": case(["--save-every-steps", "-1"], "--save-every-steps"),
    "evaluation without weights": case(["--eval"], "--eval needs weights", "--resume FILE", "--finetune FILE"),
    "DeiT III co-training": case(["--cosub"], "--cosub", "not supported", "train without it"),
    "distillation in eval mode": case(
        ["--no-train-mode", "--distillation-type", "hard", "--teacher-path", "{root}/teacher.pth"],
        "--no-train-mode cannot distil",
    ),
    "apex precision with bf16": case(["--apex-amp", "--amp-dtype", "bf16"], "--apex-amp means fp16"),
    "learning rate not a number": case(["--lr", "nan"], "argument --lr: must be a finite number >= 0, got nan"),
    "negative learning rate": case(["--lr", "-3.0"], "argument --lr: must be a finite number >= 0, got -3.0"),
    "drop-path rate above 1": case(["--drop-path", "1.5"], "argument --drop-path: must lie in [0, 1), got 1.5"),
    "label smoothing above 1": case(["--smoothing", "1.5"], "argument --smoothing: must lie in [0, 1), got 1.5"),
    "one Adam beta": case(["--opt-betas", "0.9"], "argument --opt-betas: expected 2 arguments"),
    "unknown device": case(["--device", "foo"], "argument --device: 'foo' is not a device"),
    "EMA decay above 1": case(["--model-ema-decay", "2.0"], "argument --model-ema-decay: must lie in [0, 1], got 2.0"),
    "mixup alpha not a number": case(["--mixup", "nan"], "argument --mixup: must be a finite number >= 0, got nan"),
    "schedule that keeps no patch token": case(
        ["--toe", "--initialization-keep-rate", "0.01"], "cannot train with ToE", "64 patch tokens gives 0 seeds"
    ),
    "model with one patch": case(["--toe", "--patch-size", "32"], "1 patch token gives 0 seeds"),
    "model kwargs that contradict a flag": case(
        ["--model-kwargs", *tiny_model_kwargs(), "img_size=64"],
        "--model-kwargs img_size=64 contradicts --input-size 32",
    ),
    "start epoch at or past the end": case(["--start_epoch", "1"], "--start_epoch 1 leaves nothing to train"),
    "output folder under a file": case(
        ["--output_dir", "{root}/notes.pth/run"], "cannot be created", "Not a directory"
    ),
    "decompression-bomb image": case(["--data-path", "{root}/bomb"], "cannot read image", "DecompressionBombError"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_mistake_is_one_clear_line_and_writes_nothing(name, cases_data, tiny_data, tmp_path, capsys):
    if name == "CUDA asked on a CPU machine" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    flags, fragments = CASES[name]
    flags = [f.format(root=cases_data) for f in flags]
    existing = {p: p.read_bytes() for p in (cases_data / "run").iterdir() if p.is_file()}
    output = tmp_path / "out"
    argv = [*TINY_DEIT, "--epochs", "1", "--data-path", tiny_data, "--output_dir", output, *flags]
    status, _, err = run_cli(deit.main, argv, capsys)
    assert_one_line_error(status, err, *fragments)
    written = [p.name for p in output.glob("*")] if output.exists() else []
    assert not [n for n in written if n.endswith(".pth") or n == "log.txt"], f"a failed run wrote {written}"
    assert {p: p.read_bytes() for p in (cases_data / "run").iterdir() if p.is_file()} == existing


def test_out_of_memory_gives_a_hint(tiny_data, tmp_path, capsys, monkeypatch):
    def out_of_memory(run, epoch, **options):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "train_one_epoch", out_of_memory)
    status, _, err = run_cli(deit.main, [*TINY_DEIT, "--epochs", "1", "--data-path", tiny_data], capsys)
    assert_one_line_error(status, err, "out of memory", "--batch-size", "--accum-iter")


def test_the_matrix_is_documented():
    from helpers import ROOT

    doc = (ROOT / "docs" / "failure-modes.md").read_text()
    for name in CASES:
        assert name in doc, f"docs/failure-modes.md does not list '{name}'"


# the rows of docs/failure-modes.md tested outside the matrix above, and the test of each
TESTED_ELSEWHERE = {
    "EfficientTrain: a stage size that leaves no patch token": (
        "test_efficienttrain_recipe",
        "test_bad_input_is_one_clear_line",
    ),
    "LV-ViT: labels made for other images": (
        "test_token_label_checks",
        "test_labels_of_other_images_with_the_same_names_are_refused",
    ),
    "LV-ViT: a label file with NaN": ("test_token_label_checks", "test_a_label_file_with_nan_is_named"),
    "LV-ViT: a label file of another grid": ("test_token_label_checks", "test_a_label_file_of_another_grid_is_named"),
    "LV-ViT: label files all of another grid": (
        "test_token_label_checks",
        "test_labels_of_another_grid_throughout_are_resampled_and_said_once",
    ),
    "LV-ViT: labels without a record": (
        "test_token_label_checks",
        "test_labels_without_a_record_are_used_with_a_warning",
    ),
    "LV-ViT: a config value of the wrong type": ("test_lvvit_recipe", "test_config_file_values_are_checked_like_flags"),
    "fp16 autocast on the CPU": ("test_precision", "test_fp16_on_the_cpu_warns_and_bf16_does_not"),
    "generate_label: another annotator": (
        "test_token_label_checks",
        "test_continuing_with_another_annotator_is_refused",
    ),
    "generate_label: LABELS is a file": ("test_token_label_checks", "test_generate_label_output_mistakes"),
    "generate_label: LABELS inside the data": ("test_token_label_checks", "test_generate_label_output_mistakes"),
    "generate_label: a truncated image": ("test_token_label_checks", "test_generate_label_output_mistakes"),
    "`toe bench --json DIR`": ("test_bench", "test_bench_bad_input_is_one_line"),
    "`toe flops` shape flags out of range": ("test_flops", "test_toe_flops_bad_input_is_one_clear_line"),
    "`toe flops --model resnet18`": ("test_flops", "test_toe_flops_bad_input_is_one_clear_line"),
    "`toe flops` / `toe bench` schedule that keeps no patch token": (
        "test_flops",
        "test_toe_flops_bad_input_is_one_clear_line",
    ),
    "a binary or foreign `log.txt`": ("test_plot_report", "test_a_log_that_is_not_a_log_is_one_line"),
    "`--out name` without a suffix": ("test_visualize", "test_visualize_names_the_file_it_wrote_and_a_run_without_toe"),
    "`toe visualize` of a run without ToE": (
        "test_visualize",
        "test_visualize_names_the_file_it_wrote_and_a_run_without_toe",
    ),
    "`toe` answers with ncurses' usage line": ("test_flops", "test_python_dash_m_toe_is_the_toe_command"),
    "the disk fills up (or turns read-only) during training": (
        "test_run_folder",
        "test_a_full_disk_while_training_is_one_line_and_the_run_continues_later",
    ),
    "One run per folder": ("test_run_folder", "test_second_run_on_the_same_folder_is_turned_away"),
    "hidden folders": ("test_data_folders", "test_hidden_folders_are_ignored_with_a_warning"),
    "a symbolic link loop": ("test_data_folders", "test_a_symbolic_link_loop_is_not_followed"),
    "images smaller than the crop": ("test_data_folders", "test_images_smaller_than_the_crop_are_valid"),
    "16-bit greyscale PNG or TIFF": ("test_data_folders", "test_sixteen_bit_greyscale_is_scaled_not_saturated"),
    "an image announcing a huge pixel count": ("test_data_folders", "test_a_decompression_bomb_is_named"),
    "pre-empted: SIGTERM": (
        "test_preemption",
        "test_a_scheduler_signal_stops_with_a_checkpoint_and_the_run_continues_bit_for_bit",
    ),
    "resume with another batch size, other ToE flags, epochs": (
        "test_resume_checks",
        "test_a_resume_with_other_flags_is_refused_and_changes_nothing",
    ),
    "a finished run rerun with another `--epochs`": ("test_efficienttrain_recipe", "test_bad_input_is_one_clear_line"),
    "resume with another number of processes": (
        "test_resume_checks",
        "test_another_number_of_processes_is_refused_unless_asked",
    ),
    "resume on other training images": ("test_resume_checks", "test_other_training_images_are_refused"),
    "a deliberate change: `--change-on-resume epochs`": (
        "test_resume_checks",
        "test_extending_the_epochs_on_purpose_is_logged_and_the_schedule_follows",
    ),
    "a checkpoint written in the middle of an epoch, with another batch size": (
        "test_resume_checks",
        "test_extending_the_epochs_on_purpose_is_logged_and_the_schedule_follows",
    ),
    "a finished run resumed with the same flags": (
        "test_resume_checks",
        "test_the_same_flags_resume_and_a_finished_run_has_nothing_left",
    ),
    "a checkpoint that records an impossible position": (
        "test_resume_checks",
        "test_a_checkpoint_with_an_impossible_position_is_refused",
    ),
    "torchrun processes that see other data": (
        "test_resume_checks",
        "test_torchrun_processes_that_see_other_images_are_stopped",
    ),
    "`slurm.sbatch` asks for": ("test_preemption", "test_the_slurm_script_passes_the_signal_on_and_requeues"),
}


@pytest.mark.parametrize("row", list(TESTED_ELSEWHERE))
def test_every_documented_case_has_its_test(row):
    import importlib

    from helpers import ROOT

    assert row in (ROOT / "docs" / "failure-modes.md").read_text(), f"docs/failure-modes.md does not list {row!r}"
    module, test = TESTED_ELSEWHERE[row]
    assert callable(getattr(importlib.import_module(module), test, None)), f"{module}::{test} does not exist"
