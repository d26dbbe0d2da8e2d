"""benchmarks/gpu_check.py --dry-run: the GPU check's whole sequence on the CPU with tiny shapes, so that the
command a GPU's first minutes are spent on cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ROOT


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_writes_the_record(tmp_path):
    out = tmp_path / "check"
    result = subprocess.run(
        [sys.executable, ROOT / "benchmarks" / "gpu_check.py", "--dry-run", "--budget-min", "8", "--out", out],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads((out / "gpu_check.json").read_text())
    status = {step["name"]: step["status"] for step in record["steps"]}
    same_code = {
        "train bf16",
        "train fp32",
        "bench DeiT-S fp16",
        "bench DeiT-S bf16 channels-last",
        "bench DeiT-B bf16",
    }
    skipped = same_code | {"bench DeiT-S bf16 compiled", "bench DeiT-S fp16 compiled"}
    assert {name for name, s in status.items() if s.startswith("skipped (dry run")} == skipped, status
    assert all(status[name] == "ok" for name in status if name not in skipped), status
    steps = {step["name"]: step["results"] for step in record["steps"]}
    assert steps["train fp16 + scaler"]["toe_tokens"] == [33, 49, 65]  # the stage switches crossed
    assert steps["kill and resume"]["resumed_at"].startswith("continuing at epoch 1, step")
    assert steps["torchrun"]["replicas_in_sync"] is True
    bench = steps["bench DeiT-S bf16"]["variants"]
    assert [v["name"] for v in bench] == ["plain timm", "ToE off", "stage 1", "stage 2"]
    assert all(v["memory_mb"] > 0 for v in bench)
    summary = (out / "gpu_check.md").read_text()
    assert "| kill and resume | ok |" in summary and "## bench DeiT-S bf16" in summary


@pytest.mark.slow  # over 8 s: a fresh process
def test_a_budget_too_small_skips_steps_and_says_so(tmp_path):
    out = tmp_path / "check"
    result = subprocess.run(
        [sys.executable, ROOT / "benchmarks" / "gpu_check.py", "--dry-run", "--budget-min", "0.01", "--out", out],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    steps = json.loads((out / "gpu_check.json").read_text())["steps"]
    assert steps[0]["status"] == "ok"  # the environment costs nothing
    assert all(s["status"].startswith("skipped (") for s in steps[1:])
    assert "of the budget left" in steps[1]["status"]
