"""The VPT recipe (ToE/vpt/main.py): prompt tuning on the shared engine, with and without ToE."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import (
    assert_one_line_error,
    free_port,
    killed_before_epoch,
    load_model_state,
    read_log,
    run_cli,
    tiny_model_kwargs,
    tiny_vit,
)
from safetensors.torch import save_file

from toe.options import run_main
from toe.recipes import vpt

TINY = [
    *("--model", "deit_tiny_patch16_224", "--input-size", "32", "--model-kwargs"),
    *tiny_model_kwargs("patch_size", "embed_dim", "depth", "num_heads"),
    *("--num_workers", "0", "--no-progress", "--batch-size", "16", "--device", "cpu"),
    *("--prompt-tokens", "3", "--epochs", "3", "--warmup-epochs", "1", "--lr", "2.0"),
]
TOE = ["--toe", "--expansion-step", "0", "1", "2"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A 'pre-trained' tiny ViT's weights as timm ships them (.safetensors), 10 classes like the data."""
    path = tmp_path_factory.mktemp("backbone") / "model.safetensors"
    save_file(tiny_vit(seed=7, num_classes=10).state_dict(), str(path))
    return path


def train(tiny_data, backbone, output, *extra):
    run_main(
        vpt.main,
        [*TINY, "--data-path", str(tiny_data), "--finetune", str(backbone), "--output_dir", str(output), *extra],
    )


def test_only_prompts_and_head_train_and_the_schedule_is_vpts(tiny_data, backbone, tmp_path):
    train(tiny_data, backbone, tmp_path / "run", *TOE)
    loaded = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)["model"]
    from safetensors.torch import load_file

    start = load_file(str(backbone))
    for name, weight in start.items():
        if not name.startswith("head."):
            assert torch.equal(loaded[name], weight), f"{name} moved"  # the frozen backbone, bit for bit
    assert loaded["vpt.prompt_embeddings"].shape == (1, 3, 32) and "vpt.deep_prompt_embeddings" in loaded
    log = read_log(tmp_path / "run")
    assert [r["toe_tokens"] for r in log] == [1 + 3 + 32, 1 + 3 + 48, 1 + 3 + 64]  # class + prompts + patches
    assert all(r["full_tokens"] == 68 and r["n_parameters"] == 2 * 3 * 32 + 3 * 32 + 10 * 33 for r in log)
    peak = 2.0 * 16 / 256  # VPT: the base LR scaled by batch / 256, warmed up from 0 over 1 epoch, then cosine
    assert [r["train_lr"] for r in log] == pytest.approx([0.0, peak, peak * (1 + math.cos(math.pi / 2)) / 2])
    assert log[0]["train_memory_mb"] < log[1]["train_memory_mb"] < log[2]["train_memory_mb"]  # ToE saves memory


@pytest.mark.slow
def test_a_killed_run_resumes_bit_for_bit_and_eval_repeats_the_log(tiny_data, backbone, tmp_path, capsys):
    train(tiny_data, backbone, tmp_path / "whole", *TOE, "--vpt", "shallow")
    with killed_before_epoch(2), pytest.raises(SystemExit):
        train(tiny_data, backbone, tmp_path / "killed", *TOE, "--vpt", "shallow")
    train(tiny_data, backbone, tmp_path / "killed", *TOE, "--vpt", "shallow", "--auto-resume")
    whole, killed = (
        load_model_state(tmp_path / "whole" / "checkpoint.pth"),
        load_model_state(tmp_path / "killed" / "checkpoint.pth"),
    )
    assert whole.keys() == killed.keys() and all(torch.equal(whole[k], killed[k]) for k in whole)
    assert [r["train_loss"] for r in read_log(tmp_path / "killed")] == [
        r["train_loss"] for r in read_log(tmp_path / "whole")
    ]
    status, out, err = run_cli(
        vpt.main,
        [
            *TINY,
            *TOE,
            "--vpt",
            "shallow",
            "--data-path",
            tiny_data,
            "--output_dir",
            tmp_path / "whole",
            "--eval",
            "--auto-resume",
        ],
        capsys,
    )
    assert status == 0, err
    assert f"{read_log(tmp_path / 'whole')[-1]['test_acc1']:.2f}%" in out


def test_bad_input_is_one_line(tiny_data, backbone, tmp_path, capsys):
    base = [*TINY, "--data-path", tiny_data]
    cases = [
        ([*base, "--finetune", backbone, "--prompt-tokens", "0"], ["argument --prompt-tokens: must be at least 1"]),
        (base, ["--finetune is required", "frozen pre-trained backbone"]),
        ([*base, "--finetune", backbone, "--warmup-epochs", "3"], ["--warmup-epochs 3 leaves no epoch"]),
        ([*base, "--finetune", backbone, "--eval"], ["--eval evaluates a prompt-tuning checkpoint"]),
        ([*base, "--finetune", backbone, "--vpt", "wide"], ["--vpt", "invalid choice"]),
    ]
    for argv, fragments in cases:
        status, _, err = run_cli(vpt.main, argv, capsys)
        assert_one_line_error(status, err, *fragments)
    not_a_vit = [*base, "--finetune", backbone, "--model", "resnet18", "--model-kwargs"]
    status, _, err = run_cli(vpt.main, not_a_vit, capsys)
    assert_one_line_error(status, err, "--vpt cannot prompt --model resnet18", "VisionTransformer")
    heads_only = tmp_path / "heads.safetensors"
    save_file({"head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)}, str(heads_only))
    status, _, err = run_cli(vpt.main, [*base, "--finetune", heads_only, "--output_dir", tmp_path / "o"], capsys)
    assert_one_line_error(status, err, f"--finetune {heads_only} does not hold", "frozen backbone", "would stay random")


@pytest.mark.slow  # over 8 s: the script twice, with a Python stub
def test_the_vtab_script_tunes_on_800_200_then_trains_the_final_runs_with_the_best(tmp_path):
    """ToE/vpt/run/vtab.sh with torchrun replaced by a stub that logs 100 epochs whose top-1 peaks at lr 2.5,
    wd 0.001 on val200: the final runs on train800val200 / test use those, once per seed."""
    import os
    import subprocess

    from helpers import ROOT

    (tmp_path / "data" / "dtd").mkdir(parents=True)
    stub = tmp_path / "bin" / "torchrun"
    stub.parent.mkdir()
    stub.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        "a = sys.argv[1:]\n"
        "get = lambda flag: a[a.index(flag) + 1]\n"
        "out = get('--output_dir'); os.makedirs(out, exist_ok=True)\n"
        f"open({str(tmp_path / 'calls.txt')!r}, 'a').write(' '.join(a) + '\\n')\n"
        "acc = 90 - abs(float(get('--lr')) - 2.5) - 100 * abs(float(get('--weight-decay')) - 0.001)\n"
        "line = json.dumps({'test_acc1': acc}) + '\\n'\n"
        "open(os.path.join(out, 'log.txt'), 'w').write(line * 100)\n"
    )
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "DATA": str(tmp_path / "data")}
    env |= {"BACKBONE": "b.safetensors", "OUTPUT": str(tmp_path / "out"), "TASKS": "dtd missing", "SEEDS": "0 1"}
    env |= {"LRS": "1 2.5 5", "WDS": "0.01 0.001"}
    result = subprocess.run(["bash", ROOT / "ToE/vpt/run/vtab.sh"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "task missing skipped" in result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 3 * 2 + 2
    assert all("--train-split train800 --val-split val200" in call for call in calls[:6])
    for seed, call in zip("01", calls[6:]):
        assert "--train-split train800val200 --val-split test" in call
        assert "--lr 2.5 --weight-decay 0.001" in call and f"--seed {seed}" in call
        assert "--toe" in call and "--vpt deep --prompt-tokens 50" in call
    assert (tmp_path / "out" / "dtd" / "best.txt").read_text().startswith("lr 2.5 wd 0.001")
    again = subprocess.run(["bash", ROOT / "ToE/vpt/run/vtab.sh"], env=env, capture_output=True, text=True)
    assert again.returncode == 0 and len((tmp_path / "calls.txt").read_text().splitlines()) == 8  # all skipped


def test_splits_may_leave_a_class_without_images(tiny_data, backbone, tmp_path, capsys):
    """VTAB's small splits (val200 of SUN397's 397 classes) cannot hold every class: an empty class folder is
    counted, not refused; a split without any image is."""
    import shutil

    data = tmp_path / "task"
    shutil.copytree(tiny_data, data)
    for image in (data / "val" / "circle").iterdir():
        image.unlink()
    status, out, err = run_cli(vpt.main, [*TINY, "--epochs", "2", "--data-path", data, "--finetune", backbone], capsys)
    assert status == 0, err
    assert "10 classes (1 without images), 36 images" in out
    for folder in (data / "val").iterdir():
        shutil.rmtree(folder)
        folder.mkdir()
    status, _, err = run_cli(vpt.main, [*TINY, "--data-path", data, "--finetune", backbone], capsys)
    assert_one_line_error(status, err, f"data folder {data / 'val'} holds no images")


@pytest.mark.slow
def test_torchrun_two_processes_prompt_tune_in_sync(tiny_data, backbone, tmp_path):
    """DDP over a frozen backbone: only prompts and head have gradients to average; both ranks end equal."""
    import os
    import subprocess
    import sys

    from helpers import ROOT

    flags = [*TINY, *TOE, "--batch-size", "8", "--data-path", tiny_data, "--finetune", backbone]
    result = subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"),
            *("--master_port", str(free_port()), ROOT / "ToE" / "vpt" / "main.py", *flags, "--output_dir", tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = read_log(tmp_path)
    assert all(r["replicas_in_sync"] is True for r in log) and [r["toe_tokens"] for r in log] == [36, 52, 68]
