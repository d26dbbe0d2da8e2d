"""benchmarks/study.py: the resumable study runner (a tiny grid end to end, the table's arithmetic, bad input)."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import pytest
from helpers import ROOT, TINY_DEIT, assert_one_line_error, run_cli

from toe.engine import read_log

sys.path.insert(0, str(ROOT / "benchmarks"))
study = importlib.import_module("study")
report = importlib.import_module("study_report")
holdout = importlib.import_module("study_holdout")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _files(folder: Path) -> dict[str, tuple[int, bytes]]:
    """(modification time, bytes) of a cell's log and checkpoint."""
    return {
        name: ((folder / name).stat().st_mtime_ns, (folder / name).read_bytes())
        for name in ("log.txt", "checkpoint.pth")
    }


@pytest.mark.slow  # trains its cells in fresh processes
def test_tiny_grid_runs_resumes_and_skips(tiny_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    grid = ["--out", out, "--data", tiny_data, "--epochs", "3", "--seeds", "0", "--threads", "1"]
    tiny = ["--", *TINY_DEIT]
    toe, baseline = out / "e3" / "toe" / "seed0", out / "e3" / "baseline" / "seed0"

    # the toe cell alone, killed (SIGKILL) at its 7th update: 80 images in batches of 16, so in epoch 1
    monkeypatch.setenv("TOE_FAILPOINT", "train-step:7")
    status, printed, _ = run_cli(study.main, [*grid, "--variants", "toe", *tiny], capsys)
    assert status == 1
    assert "e3/toe/seed0: FAILED (exit -9)" in printed
    assert [r["epoch"] for r in read_log(toe)] == [0]
    monkeypatch.delenv("TOE_FAILPOINT")

    status, printed, _ = run_cli(study.main, [*grid, "--variants", "baseline", "toe", "--dry-run", *tiny], capsys)
    assert status == 0
    assert "e3/baseline/seed0: new" in printed
    assert "e3/toe/seed0: partial at epoch 1 of 3" in printed
    assert "--expansion-step 0 1 2" in printed and not baseline.exists()

    # the 2 x 1 x 1 grid: the baseline from scratch, the toe cell continued, both at once
    status, printed, _ = run_cli(study.main, [*grid, "--variants", "baseline", "toe", "--parallel", "2", *tiny], capsys)
    assert status == 0, printed
    for cell in (baseline, toe):
        assert [r["epoch"] for r in read_log(cell)] == [0, 1, 2]
    assert "resumed from" in (toe / "console.log").read_text()
    assert "resumed from" not in (baseline / "console.log").read_text()
    assert [r["toe_tokens"] for r in read_log(toe)] == [33, 49, 65]  # 32, 48, 64 of 64 patches + class token
    assert [r["toe_tokens"] for r in read_log(baseline)] == [65, 65, 65]

    result = json.loads((out / "study.json").read_text())
    assert [(c["cell"], c["status"], len(c["epochs"])) for c in result["cells"]] == [
        ("e3/baseline/seed0", "done", 3),
        ("e3/toe/seed0", "done", 3),
    ]
    assert result["settings"]["pass_through"] == [str(a) for a in TINY_DEIT]
    assert [len(c["attempts"]) for c in result["cells"]] == [1, 2]
    logged = read_log(toe)
    toe_cell = result["cells"][1]
    assert [e["test_acc1"] for e in toe_cell["epochs"]] == [r["test_acc1"] for r in logged]
    assert toe_cell["totals"]["train_compute_time"] == pytest.approx(sum(r["train_compute_time"] for r in logged))
    macs = [e["forward_macs"] for e in toe_cell["epochs"]]
    assert macs[0] < macs[1] < macs[2] == result["cells"][0]["epochs"][2]["forward_macs"]
    table = (out / "study.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith(("| baseline |", "| toe |"))]
    assert len(rows) == 2
    base_row, toe_row = rows
    final = f"{logged[-1]['test_acc1']:.2f}"
    assert toe_row.split(" | ")[2] == final  # one seed: no spread
    assert f"{sum(macs[2:]) * 3 / sum(macs):.2f}x" in toe_row  # analytic speedup
    assert "All cells are done." in table
    for name in ("study_curves.png", "study_final.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)

    # running it again trains nothing
    before = {cell: _files(cell) for cell in (baseline, toe)}
    status, printed, _ = run_cli(study.main, [*grid, "--variants", "baseline", "toe", *tiny], capsys)
    assert status == 0
    assert "e3/baseline/seed0: done, skipped" in printed and "e3/toe/seed0: done, skipped" in printed
    assert {cell: _files(cell) for cell in (baseline, toe)} == before

    # --holdout: the final weights evaluated once more through the recipe's --eval (the finished cells first, a
    # cell trained now as soon as it finishes); on the validation data itself this must give back the logged
    # final top-1 of the model and its EMA
    random = out / "e3" / "random" / "seed0"
    status, printed, _ = run_cli(
        study.main, [*grid, "--variants", "baseline", "toe", "random", "--holdout", tiny_data, *tiny], capsys
    )
    assert status == 0, printed
    assert {cell: _files(cell) for cell in (baseline, toe)} == before  # the runs' files are left as they were
    assert printed.index("e3/toe/seed0: holdout") < printed.index("e3/random/seed0: done in")
    assert printed.index("e3/random/seed0: done in") < printed.index("e3/random/seed0: holdout")
    for cell in (baseline, toe, random):
        last = read_log(cell)[-1]
        held = json.loads((cell / "holdout.json").read_text())
        assert held["epoch"] == 2 and held["data"] == str(tiny_data.resolve())
        assert held["test_acc1"] == pytest.approx(last["test_acc1"], abs=0.005)
        assert held["test_ema_acc1"] == pytest.approx(last["test_ema_acc1"], abs=0.005)
        assert f"{cell.relative_to(out)}: holdout top-1 {held['test_acc1']:.2f}%" in printed
    table = (out / "study.md").read_text()
    toe_row = next(line for line in table.splitlines() if line.startswith("| toe |"))
    held = json.loads((toe / "holdout.json").read_text())
    delta = held["test_acc1"] - json.loads((baseline / "holdout.json").read_text())["test_acc1"]
    assert toe_row.endswith(f"| {held['test_acc1']:.2f} | {held['test_ema_acc1']:.2f} | {delta:.2f} |")
    evaluated = (toe / "holdout.json").stat().st_mtime_ns
    status, printed, _ = run_cli(study.main, [*grid, "--variants", "toe", "--holdout", tiny_data, *tiny], capsys)
    assert status == 0 and "holdout top-1" not in printed  # evaluated once
    assert (toe / "holdout.json").stat().st_mtime_ns == evaluated

    # other recipe flags than the study was started with: refused
    status, _, err = run_cli(study.main, [*grid, "--report-only", "--", *TINY_DEIT, "--lr", "0.01"], capsys)
    assert_one_line_error(status, err, "other recipe flags after --", "--lr 0.01")


def _cell(variant: str, seed: int, compute: list[float], top1: list[float], macs: list[float] | None = None) -> dict:
    """A study.json cell entry built by hand (3-epoch run)."""
    macs = macs or [None] * len(compute)
    epochs = [
        {
            "epoch": i,
            "test_acc1": a,
            "test_ema_acc1": a - 1,
            "train_compute_time": c,
            "epoch_time": c + 1,
            "toe_tokens": None,
            "forward_macs": m,
        }
        for i, (c, a, m) in enumerate(zip(compute, top1, macs))
    ]
    return {
        "cell": f"e3/{variant}/seed{seed}",
        "variant": variant,
        "length": 3,
        "seed": seed,
        "status": "done" if len(epochs) == 3 else "partial",
        "epochs_finished": len(epochs),
        "token_reduction": None,
        "attempts": [],
        "epochs": epochs,
        "totals": report.totals(epochs),
    }


def test_table_arithmetic_on_hand_written_records():
    cells = [
        _cell("baseline", 0, [10, 10, 10], [20, 40, 60], [4, 4, 4]),
        _cell("baseline", 1, [10, 12, 10], [30, 50, 70], [4, 4, 4]),
        # seed 0: 18 s, between the baseline's 10 s (20%) and 20 s (40%): 20 + 20 * 8/10 = 36%
        # on the analytic axis 6 MACs, between 4 (20%) and 8 (40%): 30%
        _cell("toe", 0, [4, 6, 8], [25, 45, 50], [1, 2, 3]),
        # seed 1: 12 s, between 10 s (30%) and 22 s (50%): 30 + 20 * 2/12 = 33.33%; 6 MACs: 40%
        _cell("toe", 1, [3, 4, 5], [35, 30, 52], [1, 2, 3]),
        # beyond the baseline's whole run: unknown; a partial cell stays out of the table
        _cell("random", 0, [20, 20, 20], [10, 20, 30], [4, 4, 4]),
        _cell("toe-drop", 0, [3, 3], [10, 20]),
    ]
    rows = {row.variant: row for row in report.summary_rows(cells)}
    assert set(rows) == {"baseline", "toe", "random"}
    toe = rows["toe"]
    assert toe.seeds == [0, 1]
    assert toe.equal_measured.mean == pytest.approx((36 + 30 + 20 * 2 / 12) / 2)
    assert toe.equal_measured.std == pytest.approx(abs(36 - (30 + 20 * 2 / 12)) / 2**0.5)
    assert toe.equal_analytic.mean == pytest.approx(35.0)
    assert toe.speedup_measured == pytest.approx(((30 + 32) / 2) / ((18 + 12) / 2))
    assert toe.speedup_analytic == pytest.approx(12 / 6)
    # final top-1 minus the same seed's baseline: 50 - 60 and 52 - 70
    assert toe.paired_delta.mean == pytest.approx(-14.0) and toe.paired_delta.std == pytest.approx(8 / 2**0.5)
    assert rows["random"].paired_delta.mean == pytest.approx(30 - 60) and rows["baseline"].paired_delta is None
    assert toe.values["final_acc1"].mean == pytest.approx(51.0)
    assert toe.values["best_acc1"].mean == pytest.approx(51.0)  # max(25, 45, 50) and max(35, 30, 52)
    assert toe.values["best_ema_acc1"].mean == pytest.approx(50.0)
    assert toe.values["wall_time"].mean == pytest.approx((21 + 15) / 2)
    assert rows["random"].equal_measured is None and rows["random"].equal_analytic.mean == pytest.approx(60.0)
    assert rows["baseline"].speedup_measured == pytest.approx(1.0) and rows["baseline"].equal_measured is None

    study_json = {
        "date": "2024-01-01T00:00:00",
        "commit": "abc",
        "torch": "2.x",
        "threads": 1,
        "parallel": 1,
        "settings": {"base_flags": ["--x"], "pass_through": [], "data": "d"},
        "grid": {"variants": ["baseline", "toe", "toe-drop", "random"], "seeds": [0, 1], "lengths": [3]},
        "cells": cells,
    }
    table = report.markdown(study_json)
    toe_line = next(line for line in table.splitlines() if line.startswith("| toe |"))
    assert "| 0 1 | 51.00 ± 1.41 |" in toe_line
    assert toe_line.endswith(
        f"| -14.00 ± 5.66 | 2.07x | 2.00x | {toe.equal_measured.mean:.2f} ± {toe.equal_measured.std:.2f} "
        "| 35.00 ± 7.07 |"
    )
    random_line = next(line for line in table.splitlines() if line.startswith("| random |"))
    assert random_line.endswith("| -30.00 | 0.52x | 1.00x | - | 60.00 |")
    assert "`e3/toe-drop/seed0` (partial at epoch 2 of 3)" in table


def test_top1_at_compute_interpolates_between_epochs():
    spent, top1 = [10.0, 20.0, 30.0], [20.0, 40.0, 60.0]
    assert report.top1_at_compute(spent, top1, 15.0) == pytest.approx(30.0)
    assert report.top1_at_compute(spent, top1, 20.0) == pytest.approx(40.0)
    assert report.top1_at_compute(spent, top1, 10.0) == pytest.approx(20.0)
    assert report.top1_at_compute(spent, top1, 5.0) is None  # before the first epoch's record
    assert report.top1_at_compute(spent, top1, 30.5) is None  # beyond the run


def test_stage_starts_and_cell_commands(tmp_path):
    assert study.stage_starts(9) == [0, 3, 6]
    assert study.stage_starts(36) == [0, 12, 24]
    assert study.stage_starts(3) == [0, 1, 2]
    assert study.stage_starts(4) == [0, 1, 3]
    run = study.parse(["--out", str(tmp_path / "o"), "--epochs", "9", "--seeds", "2", "--", "--lr", "0.01"])
    commands = {c.variant: study.cell_command(run, c) for c in run.cells}
    assert list(commands) == ["baseline", "toe", "toe-drop", "random"]
    assert "--toe" not in commands["baseline"] and "--token-reduction" not in commands["baseline"]
    random = commands["random"]
    tail = random[random.index("--toe") :]
    assert tail[:7] == ["--toe", "--token-reduction", "random", "--expansion-step", "0", "3", "6"]
    assert random.index("--lr") > random.index("--model-kwargs")  # pass-through after the base flags
    assert random[random.index("--seed") + 1] == "2" and random[random.index("--epochs") + 1] == "9"
    assert random[random.index("--output_dir") + 1] == str(tmp_path / "o" / "e9" / "random" / "seed2")


def test_cells_run_the_library_of_the_runners_checkout(tmp_path, monkeypatch):
    """A cell imports toe from the checkout whose commit its attempt records, not from whatever toe the
    interpreter has installed (e.g. another checkout's editable install, which moves while a study runs)."""
    started = {}

    def fake_popen(command, env, **kwargs):
        started.update(command=command, env=env)

    monkeypatch.setattr(study.subprocess, "Popen", fake_popen)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    run = study.parse(["--out", str(tmp_path / "o"), "--epochs", "3", "--seeds", "0", "--variants", "toe"])
    cell = run.cells[0]
    (run.out / cell.name).mkdir(parents=True)
    study.start(run, cell, lock=-1, commit="abc123")
    assert started["env"]["PYTHONPATH"].split(os.pathsep) == [str(ROOT / "src"), "/elsewhere"]
    assert started["command"][1] == str(ROOT / "ToE" / "deit" / "main.py")
    attempt = json.loads((run.out / cell.name / report.ATTEMPTS_FILE).read_text())
    assert attempt["commit"] == "abc123"


@pytest.mark.parametrize(
    "script, error",
    [
        ("import sys; print('error: --resume x: no such file', file=sys.stderr); sys.exit(2)", "error: --resume x"),
        (
            "print('evaluating c (finished epoch 3)'); print('Accuracy of the network on the 10 test images: 50.00%')",
            "holds epoch 3, not the last one (8)",
        ),
    ],
)
def test_a_failed_holdout_evaluation_names_the_cause_and_writes_nothing(tmp_path, script, error):
    """An evaluation that fails, or that evaluated another epoch than the cell's last, leaves no holdout.json."""
    result, said = holdout.evaluate_cell(tmp_path, 9, [sys.executable, "-c", script], tmp_path, dict(os.environ))
    assert result is None and error in said
    assert not (tmp_path / holdout.HOLDOUT_FILE).exists()


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--variants", "toe", "merge"], ["--variants", "merge"]),
        (["--epochs", "9", "2"], ["--epochs 2", "0 1 1", "at least 3 epochs"]),
        (["--epochs", "-3"], ["--epochs -3", "at least 3 epochs"]),
        (["--parallel", "0"], ["argument --parallel: must be at least 1"]),
        (["--threads", "0"], ["argument --threads: must be at least 1"]),
        (["--seeds", "-1"], ["argument --seeds: must be at least 0"]),
        (["--python", "/no/such/python"], ["--python /no/such/python"]),
        (["--", "--no-such-flag", "3"], ["--no-such-flag"]),
        (["--", "--epochs", "5"], ["--epochs is set by the study"]),
        (["--", "--expansion-step", "0", "5"], ["--expansion-step is set by the study"]),
        (["--", "--lr", "fast"], ["--lr", "fast"]),
        (["--holdout", "/no/such/data"], ["--holdout /no/such/data", "no val/ folder"]),
        (["--report-only"], ["does not exist"]),
        (["--dry-run", "--report-only"], ["--report-only"]),
        (["--data", "/no/such/dataa"], ["--data /no/such/dataa does not exist", "only the default, data/demo,"]),
    ],
)
def test_bad_input_is_one_line(argv, fragments, tmp_path, capsys):
    out = tmp_path / "study"
    status, _, err = run_cli(study.main, ["--out", out, *argv], capsys)
    assert_one_line_error(status, err, *fragments)
    assert not out.exists()


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("not a folder")
    status, _, err = run_cli(study.main, ["--out", file, "--dry-run"], capsys)
    assert_one_line_error(status, err, f"--out {file} is a file")
    assert file.read_text() == "not a folder"


@pytest.mark.slow  # trains its cells in fresh processes
def test_a_vpt_grid_prompt_tunes_the_backbone_in_every_cell(tiny_data, tiny_runs, tmp_path, capsys):
    """--recipe vpt: every cell is the VPT recipe on --backbone (here a tiny DeiT run); the baseline is plain VPT."""
    out = tmp_path / "study"
    backbone = tiny_runs["baseline"] / "checkpoint.pth"
    grid = ["--recipe", "vpt", "--backbone", backbone, "--out", out, "--data", tiny_data, "--epochs", "3"]
    tiny = ["--seeds", "0", "--threads", "1", "--", "--model-kwargs", "patch_size=4", "embed_dim=32", "depth=3"]
    tiny += ["num_heads=2", "--batch-size", "16"]
    status, printed, _ = run_cli(study.main, [*grid, "--variants", "baseline", "toe", *tiny], capsys)
    assert status == 0, printed
    toe, baseline = read_log(out / "e3" / "toe" / "seed0"), read_log(out / "e3" / "baseline" / "seed0")
    assert [r["toe_tokens"] for r in toe] == [1 + 8 + 32, 1 + 8 + 48, 1 + 8 + 64]  # 8 prompt tokens kept apart
    assert [r["toe_tokens"] for r in baseline] == [73] * 3 and all(r["vpt"] == "deep" for r in baseline)
    settings = json.loads((out / "study-settings.json").read_text())
    base_flags = settings["base_flags"]
    assert settings["script"] == "ToE/vpt/main.py"
    assert base_flags[-2:] == ["--finetune", str(backbone)] and "--prompt-tokens" in base_flags
    assert (out / "study.md").is_file()
    status, _, err = run_cli(study.main, [*grid[:2], "--backbone", tmp_path / "none.pth", "--out", out], capsys)
    assert_one_line_error(status, err, f"--backbone {tmp_path / 'none.pth'}: no such file")


@pytest.mark.slow  # trains a cell in a fresh process
def test_a_cell_whose_folder_is_taken_by_a_file_fails_alone(tiny_data, tmp_path, capsys):
    """The docs' promise: that cell FAILED, the others go on (it was a FileExistsError ending the whole grid)."""
    out = tmp_path / "study"
    (out / "e3" / "baseline").mkdir(parents=True)
    (out / "e3" / "baseline" / "seed0").write_text("not a folder")
    grid = ["--out", out, "--data", tiny_data, "--epochs", "3", "--seeds", "0", "--threads", "1"]
    argv = [*grid, "--variants", "baseline", "toe", "--", *TINY_DEIT]
    status, printed, _ = run_cli(study.main, argv, capsys)
    assert status == 1
    assert f"e3/baseline/seed0: FAILED: cannot use {out / 'e3' / 'baseline' / 'seed0'}" in printed
    assert "e3/toe/seed0: done in" in printed and "1 cell(s) failed: e3/baseline/seed0" in printed


def test_a_damaged_cell_log_is_named_and_the_cell_resumed_not_counted(tmp_path):
    """A repeated epoch record (or a damaged line) marks the cell damaged: it is trained again with --auto-resume
    (which rewrites its log from the checkpoint) and left out of the tables meanwhile."""
    folder = tmp_path / "e3" / "toe" / "seed0"
    folder.mkdir(parents=True)
    record = {"epoch": 0, "train_compute_time": 1.0, "epoch_time": 1.0, "test_acc1": 10.0}
    (folder / "log.txt").write_text(json.dumps(record) + "\n" + json.dumps(record) + "\n")
    assert report.cell_status(folder, 3) == ("damaged", 0)
    assert "damaged log.txt" in report.describe_status("damaged", 0, 3)
    entry = report.collect_cell(tmp_path, report.Cell(3, "toe", 0), report.ShapeCache())
    assert entry["status"] == "damaged" and entry["epochs"] == [] and entry["totals"] is None


@pytest.mark.slow  # trains a cell in a fresh process
def test_a_second_runner_leaves_a_cell_another_runner_trains_alone(tiny_data, tmp_path, capsys):
    """Two study.py on one --out: a cell whose lock another process holds is left to it (no second training of
    the same folder); the rest of the grid goes on."""
    out = tmp_path / "study"
    folder = out / "e3" / "baseline" / "seed0"
    folder.mkdir(parents=True)
    held = study.try_lock(folder)  # what the other runner's training process holds
    assert held is not None
    grid = ["--out", out, "--data", tiny_data, "--epochs", "3", "--seeds", "0", "--threads", "1"]
    status, printed, _ = run_cli(study.main, [*grid, "--variants", "baseline", "toe", "--", *TINY_DEIT], capsys)
    os.close(held)
    assert status == 0, printed
    assert "e3/baseline/seed0: being trained by another process, left alone" in printed
    assert "1 cell(s) left to the other process training them: e3/baseline/seed0" in printed
    assert not (folder / "log.txt").exists() and "e3/toe/seed0: done in" in printed


def test_report_only_on_a_half_written_study(tmp_path, capsys):
    """--report-only while cells are being written: an unfinished last log line is left out, the cell is
    reported as partial."""
    out = tmp_path / "study"
    folder = out / "e3" / "toe" / "seed0"
    folder.mkdir(parents=True)
    record = {"epoch": 0, "train_compute_time": 1.0, "epoch_time": 1.5, "test_acc1": 12.0, "toe_tokens": 33}
    (folder / "log.txt").write_text(json.dumps(record) + '\n{"epoch": 1, "train_comp')
    status, printed, err = run_cli(study.main, ["--out", out, "--epochs", "3", "--seeds", "0", "--report-only"], capsys)
    assert status == 0, err
    cells = {c["cell"]: c for c in json.loads((out / "study.json").read_text())["cells"]}
    assert (cells["e3/toe/seed0"]["status"], cells["e3/toe/seed0"]["epochs_finished"]) == ("partial", 1)
    assert cells["e3/baseline/seed0"]["status"] == "new"
