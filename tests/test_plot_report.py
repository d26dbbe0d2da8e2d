"""toe plot and toe report on the logs of tiny runs (a ToE run and a baseline), and the demo's last steps."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess

import numpy as np
import yaml
from helpers import ROOT, assert_one_line_error, run_cli
from PIL import Image

from toe.cli import build_parser
from toe.cli import main as toe_main
from toe.engine import read_log
from toe.figures import DPI
from toe.plot import curves_figure, load_runs


def table_rows(report: str) -> list[list[str]]:
    return [line.split() for line in report.splitlines() if line.strip()[:1].isdigit() or line.strip()[:2] == "- "]


def test_plot_overlays_the_runs_curves(tiny_runs, tmp_path, capsys):
    out = tmp_path / "curves.png"
    status, stdout, err = run_cli(toe_main, ["plot", tiny_runs["toe"], tiny_runs["baseline"], "--out", out], capsys)
    assert status == 0, err
    assert f"wrote {out}: training curves of toe, baseline" in stdout
    figure = curves_figure(load_runs([tiny_runs["toe"], tiny_runs["baseline"]]))
    with Image.open(out) as png:
        assert png.size == tuple(round(v * DPI) for v in figure.get_size_inches())

    acc, loss, lr, tokens, compute, acc_compute = figure.axes
    assert [t.get_text() for t in acc.get_legend().get_texts()] == ["toe", "baseline"]
    logs = [read_log(tiny_runs["toe"]), read_log(tiny_runs["baseline"])]
    for i, log in enumerate(logs):
        epochs = [r["epoch"] for r in log]
        model_line, ema_line = acc.get_lines()[2 * i : 2 * i + 2]
        assert list(model_line.get_xdata()) == epochs
        assert list(model_line.get_ydata()) == [r["test_acc1"] for r in log]
        assert list(ema_line.get_ydata()) == [r["test_ema_acc1"] for r in log]
        assert list(loss.get_lines()[i].get_ydata()) == [r["train_loss"] for r in log]
        assert list(lr.get_lines()[i].get_ydata()) == [r["train_lr"] for r in log]
        assert list(tokens.get_lines()[i].get_ydata()) == [r["toe_tokens"] for r in log]
        cumulative = np.cumsum([r["train_compute_time"] for r in log])
        np.testing.assert_allclose(compute.get_lines()[i].get_ydata(), cumulative)
        np.testing.assert_allclose(acc_compute.get_lines()[i].get_xdata(), cumulative)
    assert list(tokens.get_lines()[0].get_ydata()) == [33, 65] and list(tokens.get_lines()[1].get_ydata()) == [65]


def test_plot_writes_into_the_first_run_by_default(tiny_runs, tmp_path, capsys):
    run = tmp_path / "copy"
    run.mkdir()
    shutil.copy(tiny_runs["toe"] / "log.txt", run / "log.txt")
    status, _, err = run_cli(toe_main, ["plot", run], capsys)
    assert status == 0, err
    assert (run / "training_curves.png").is_file()


def test_plot_mistakes_are_one_line(tiny_runs, tmp_path, capsys):
    status, _, err = run_cli(toe_main, ["plot", tiny_runs["toe"], tmp_path / "missing"], capsys)
    assert_one_line_error(status, err, str(tmp_path / "missing"), "no log.txt")
    status, _, err = run_cli(toe_main, ["plot", tiny_runs["toe"], "--out", tmp_path / "no" / "x.png"], capsys)
    assert_one_line_error(status, err, "--out", "does not exist")
    status, _, err = run_cli(toe_main, ["plot", tiny_runs["toe"], "--out", tmp_path], capsys)
    assert_one_line_error(status, err, f"--out {tmp_path} is a folder")


def test_a_log_that_is_not_a_log_is_one_line(tiny_runs, tmp_path, capsys):
    binary, foreign = tmp_path / "binary", tmp_path / "foreign"
    binary.mkdir()
    (binary / "log.txt").write_bytes(bytes(range(256)) * 8)
    foreign.mkdir()
    (foreign / "log.txt").write_text('{"epoch": 0, "train_loss": 6.9, "test_acc1": 0.1}\n')  # upstream DeiT's log
    for command in ("report", "plot"):
        status, _, err = run_cli(toe_main, [command, binary], capsys)
        assert_one_line_error(status, err, f"{binary} has no log.txt with epoch records")
    status, _, err = run_cli(toe_main, ["report", foreign], capsys)
    assert_one_line_error(status, err, f"{foreign}/log.txt lacks train_compute_time")


def flops_speedups(capsys) -> tuple[list[str], str]:
    """`toe flops` for the tiny run's model shape and schedule: per-stage 'vs full' and the whole schedule's."""
    argv = ["flops", "--embed-dim", "32", "--depth", "3", "--patch-size", "4", "--input-size", "32", "--epochs", "2"]
    status, out, err = run_cli(toe_main, [*argv, "--expansion-step", "0", "1", "--keep-rate", "0.5", "1.0"], capsys)
    assert status == 0, err
    whole = out.split("whole schedule over 2 epochs: ")[1].split(" ")[0]
    return [row[-1] for row in table_rows(out)], whole


def test_report_has_measured_and_analytic_speedups_and_top1(tiny_runs, capsys):
    status, out, err = run_cli(toe_main, ["report", tiny_runs["toe"]], capsys)
    assert status == 0, err
    log = read_log(tiny_runs["toe"])
    times = [r["train_compute_time"] for r in log]
    rows = table_rows(out)
    assert [r[:5] for r in rows] == [["1", "0-0", "32", "of", "64"], ["2", "1-1", "64", "of", "64"]]
    assert [r[5] for r in rows] == [f"{t:.2f}" for t in times]
    assert [r[7] for r in rows] == [f"{times[1] / times[0]:.2f}x", "1.00x"]
    stage_analytic, whole_analytic = flops_speedups(capsys)
    assert [r[8] for r in rows] == stage_analytic and stage_analytic[1] == "1.00x"
    assert f"whole run vs full-token training: {2 * times[1] / sum(times):.2f}x measured" in out
    assert f"x 2 epochs), {whole_analytic} analytic" in out
    last = log[-1]
    assert f"top-1 (model): final {last['test_acc1']:.2f}%, best {last['best_test_acc1']:.2f}%" in out
    assert f"top-1 (EMA): final {last['test_ema_acc1']:.2f}%, best {last['best_test_ema_acc1']:.2f}%" in out


def test_report_of_a_baseline_and_of_a_run_without_args(tiny_runs, tmp_path, capsys):
    status, out, err = run_cli(toe_main, ["report", tiny_runs["baseline"]], capsys)
    assert status == 0, err
    assert [r[:5] + r[7:] for r in table_rows(out)] == [["-", "0-0", "64", "of", "64", "-", "1.00x"]]
    assert "whole run: full-token training (ToE off)" in out
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tiny_runs["toe"] / "log.txt", bare / "log.txt")
    status, out, err = run_cli(toe_main, ["report", bare], capsys)
    assert status == 0, err
    assert [r[2] for r in table_rows(out)] == ["33", "65"] and [r[6] for r in table_rows(out)] == ["-", "-"]
    assert "patch tokens: the model is unknown, so the counts include its prefix (class) tokens" in out
    assert f"analytic: forward multiply-adds unknown (no args.json or args.yaml in {bare})" in out
    first_epoch = (tiny_runs["toe"] / "log.txt").read_text().splitlines()[0]
    (bare / "log.txt").write_text(first_epoch + "\n")  # a run still in its reduced stage
    recorded = json.loads((tiny_runs["toe"] / "args.json").read_text())
    (bare / "args.yaml").write_text(yaml.safe_dump(recorded))  # the recipes with YAML configs write args.yaml
    status, out, err = run_cli(toe_main, ["report", bare], capsys)
    assert status == 0, err
    stage_analytic, _ = flops_speedups(capsys)
    assert f"- measured (no full-token stage to compare with yet), {stage_analytic[0]} analytic" in out


def demo_calls(tmp_path, **env) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """demo.sh with a stub python that records its calls: (the script's result, the calls' arguments)."""
    tmp_path.mkdir(exist_ok=True)
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> {shlex.quote(str(calls))}\n')
    stub.chmod(0o755)
    env = {**os.environ, "PYTHON": str(stub), "OUTPUT": "runs/demo", "DATA": "data/demo", **env}
    result = subprocess.run(["bash", ROOT / "ToE/deit/run/demo.sh"], env=env, capture_output=True, text=True)
    lines = calls.read_text().splitlines() if calls.exists() else []
    return result, [line.split() for line in lines]


def test_demo_ends_with_plot_visualize_and_report_of_its_run(tmp_path):
    result, calls = demo_calls(tmp_path)
    assert result.returncode == 0, result.stderr
    *_, plot, visualize, report = calls
    parser = build_parser()
    assert plot[:2] == visualize[:2] == report[:2] == ["-m", "toe.cli"]
    plot, visualize, report = (parser.parse_args(call[2:]) for call in (plot, visualize, report))
    assert (plot.command, plot.output_dirs, plot.out) == ("plot", ["runs/demo"], "runs/demo/training_curves.png")
    assert (visualize.checkpoint, visualize.data_path) == ("runs/demo/checkpoint.pth", "data/demo")
    assert visualize.out == "runs/demo/toe_selection.png"
    assert (report.command, report.output_dirs) == ("report", ["runs/demo"])


def test_demo_baseline_is_the_same_training_without_the_toe_flags(tmp_path):
    _, with_toe = demo_calls(tmp_path / "toe")
    result, baseline = demo_calls(tmp_path / "baseline", TOE="0")
    assert result.returncode == 0, result.stderr
    train_toe, train_baseline = with_toe[1], baseline[1]
    assert train_toe[0] == train_baseline[0] == "ToE/deit/main.py"
    toe_flags = train_toe[train_toe.index("--toe") :]
    assert toe_flags[:2] == ["--toe", "--expansion-step"] and train_toe == train_baseline + toe_flags
    assert [call[2] for call in baseline[2:]] == ["plot", "report"]  # nothing to visualize without ToE
    result, calls = demo_calls(tmp_path / "bad", TOE="yes")
    assert result.returncode == 2 and calls == []
    assert result.stderr.strip() == "demo.sh: TOE must be 1 (with ToE) or 0 (the baseline), got 'yes'"


def test_damaged_or_repeated_records_are_named_not_counted(tiny_runs, tiny_data, tmp_path, capsys):
    """toe report and toe plot read log.txt strictly: a damaged line or an epoch written twice is one line naming
    it (it was skipped, or counted twice in the totals); an unfinished last line (a run writing it) is left out;
    --auto-resume of the run rewrites the log from its checkpoint, one record per epoch."""
    import shutil

    from helpers import TINY_DEIT

    from toe.options import run_main
    from toe.recipes import deit

    run = tmp_path / "run"
    shutil.copytree(tiny_runs["toe"], run)
    log = run / "log.txt"
    lines = log.read_text().splitlines()
    log.write_text(lines[0] + '\n{"epoch": 1, "train_l')  # a run writing its second record now
    status, out, err = run_cli(toe_main, ["report", run], capsys)
    assert status == 0 and "run " in out and "1 epochs" in out, err
    for damaged, fragment in [
        ([lines[0], "garbage", lines[1]], "line 2 is damaged"),
        ([lines[0], lines[0], lines[1]], "line 2 records epoch 0 again or out of order (after line 1)"),
    ]:
        log.write_text("\n".join(damaged) + "\n")
        for command in (["report", run], ["plot", run, "--out", tmp_path / "c.png"]):
            status, _, err = run_cli(toe_main, command, capsys)
            assert_one_line_error(status, err, f"{log} {fragment}")
    flags = ["--epochs", "2", "--toe", "--expansion-step", "0", "1", "--keep-rate", "0.5", "1.0", "--auto-resume"]
    run_main(deit.main, [*TINY_DEIT, *flags, "--data-path", str(tiny_data), "--output_dir", str(run)])
    assert log.read_text().splitlines() == lines  # one record per epoch again, as the uninterrupted run wrote them


def test_side_by_side_shows_each_runs_accuracy_compute_and_memory(tiny_runs, tmp_path, capsys):
    """Classification runs: final and best top-1; detection runs: final AP50 and AP; compute time and its
    ratio to the first run; a mix of the two kinds is one line."""
    status, out, err = run_cli(toe_main, ["report", "--side-by-side", tiny_runs["baseline"], tiny_runs["toe"]], capsys)
    assert status == 0, err
    header, *rows = out.splitlines()
    assert header.split()[2:4] == ["top-1", "best"]
    for row, name in zip(rows, ("baseline", "toe")):
        last, log = read_log(tiny_runs[name])[-1], read_log(tiny_runs[name])
        compute = sum(r["train_compute_time"] for r in log)
        assert row.split()[2:5] == [f"{last['test_acc1']:.2f}%", f"{last['best_test_acc1']:.2f}%", f"{compute:.1f}"]
    base_compute = sum(r["train_compute_time"] for r in read_log(tiny_runs["baseline"]))
    toe_compute = sum(r["train_compute_time"] for r in read_log(tiny_runs["toe"]))
    assert rows[1].split()[5] == f"{base_compute / toe_compute:.2f}x" and rows[0].split()[5] == "1.00x"

    detection = tmp_path / "detection"
    detection.mkdir()
    records = [
        {"epoch": e, "train_loss": 3.0 - e, "train_compute_time": 2.0, "test_ap": 10.0 + e, "test_ap50": 30.0 + e}
        for e in range(2)
    ]
    (detection / "log.txt").write_text("".join(json.dumps(r) + "\n" for r in records))
    status, out, err = run_cli(toe_main, ["report", "--side-by-side", detection], capsys)
    assert status == 0, err
    header, row = out.splitlines()
    assert header.split()[2:4] == ["AP50", "AP"] and row.split()[1:5] == ["off", "31.00%", "11.00%", "4.0"]
    status, _, err = run_cli(toe_main, ["report", "--side-by-side", detection, tiny_runs["toe"]], capsys)
    assert_one_line_error(status, err, "these mix detection and classification runs")
