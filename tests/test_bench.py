"""`toe bench` on a tiny model: every variant measured, analytic ratios from toe flops, JSON and plot written."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_one_line_error, run_cli, tiny_model_kwargs, tiny_vit

from toe import bench
from toe.cli import main as toe_main
from toe.flops import forward_macs, vit_shape

TINY = [
    "--model",
    "deit_tiny_patch16_224",
    "--input-size",
    "32",
    "--batch-size",
    "4",
    "--warmup",
    "1",
    "--rounds",
    "2",
    "--device",
    "cpu",
    "--model-kwargs",
    *tiny_model_kwargs("patch_size", "embed_dim", "depth", "num_heads", depth=2),
]


def test_bench_measures_every_stage_next_to_the_analytic_ratio(tmp_path, capsys, monkeypatch):
    op_times = []  # the selector's measured seconds per stage; its share of a step is timing, never asserted

    def recorded_op_time(*args, **kwargs):
        op_times.append(real_op_time(*args, **kwargs))
        return op_times[-1]

    real_op_time = bench._op_time
    monkeypatch.setattr(bench, "_op_time", recorded_op_time)
    argv = ["bench", *TINY, "--json", tmp_path / "b.json", "--plot", tmp_path / "b.png"]
    status, out, err = run_cli(toe_main, argv, capsys)
    assert status == 0, err
    rows = [line.split() for line in out.splitlines() if line.startswith(("plain", "ToE off", "stage"))]
    assert [r[0] for r in rows] == ["plain", "ToE", "stage", "stage"]
    result = json.loads((tmp_path / "b.json").read_text())
    variants = {v["name"]: v for v in result["variants"]}
    assert [v["tokens"] for v in result["variants"]] == [65, 65, 33, 49]  # 64 patches: .5 / .75 kept
    assert variants["plain timm"]["speedup"] == 1.0 and variants["plain timm"]["op_share"] is None
    assert len(op_times) == 3 and all(t > 0 for t in op_times)  # ToE off, stage 1, stage 2
    for name, op_time in zip(("ToE off", "stage 1", "stage 2"), op_times):
        step_time = 4 / variants[name]["images_per_sec"]  # batch 4
        assert variants[name]["op_share"] == pytest.approx(op_time / step_time)
    with torch.device("meta"):
        shape = vit_shape(tiny_vit(depth=2))
    assert variants["stage 1"]["analytic_speedup"] == pytest.approx(forward_macs(shape) / forward_macs(shape, 32))
    assert (tmp_path / "b.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "extra,fragments",
    [
        (["--batch-size", "0"], ["argument --batch-size: must be at least 1"]),
        (["--rounds", "0"], ["argument --rounds: must be at least 1"]),
        (["--model", "not_a_model"], ["--model not_a_model"]),
        (["--keep-rate", "0.75", "0.5", "1.0"], ["--keep-rate"]),
        (["--plot", "{tmp}/no/speedup.png"], ["--plot", "does not exist"]),
        (["--json", "{tmp}/no/bench.json"], ["--json", "does not exist"]),
        (["--json", "{tmp}"], ["--json {tmp} is a folder"]),
        (["--model", "resnet18"], ["--model resnet18 cannot be built"]),
        (["--input-size", "4"], ["1 patch token gives 0 seeds"]),
        (["--input-size", "30"], ["--input-size 30 is not divisible by the patch size 4"]),
        (["--device", "foo"], ["argument --device: 'foo' is not a device"]),
        (["--input-size", "100000"], ["--input-size 100000 is beyond 4096 px"]),
        (["--batch-size", "1000000000"], ["out of memory at --batch-size 1000000000", "smaller batch"]),
        (["--model-kwargs", "num_heads=0"], ["cannot be built with", "num_heads=0"]),
        (["--model-kwargs", "depth=-1"], ["cannot be built with", "depth=-1"]),
        (["--vpt", "deep", "--prompt-tokens", "0"], ["argument --prompt-tokens: must be at least 1"]),
    ],
)
def test_bench_bad_input_is_one_line(extra, fragments, tmp_path, capsys):
    argv = ["bench", *TINY, *[a.format(tmp=tmp_path) for a in extra]]
    status, _, err = run_cli(toe_main, argv, capsys)
    assert_one_line_error(status, err, *[f.format(tmp=tmp_path) for f in fragments])


@pytest.mark.slow  # over 8 s: compiles the models stage by stage
def test_bench_compiles_one_graph_per_model_and_stage(monkeypatch, capsys):
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend="aot_eager"))  # no C++ build
    status, out, err = run_cli(toe_main, ["bench", *TINY, "--compile"], capsys)
    assert status == 0, err
    # plain timm, and the ToE model off / stage 1 / stage 2: no graph breaks, no recompiles between rounds
    assert "torch.compile: 4 graphs for 4 variants" in out


def test_bench_measures_vpt_and_the_memory_of_every_stage(tmp_path, capsys):
    argv = ["bench", *TINY, "--vpt", "deep", "--prompt-tokens", "3", "--memory", "--json", tmp_path / "m.json"]
    status, out, err = run_cli(toe_main, argv, capsys)
    assert status == 0, err
    assert "+ VPT-deep (3 prompt tokens)" in out and "memory MiB" in out
    variants = json.loads((tmp_path / "m.json").read_text())["variants"]
    assert [v["tokens"] for v in variants] == [68, 68, 36, 52]  # class token + 3 prompts + 64 / 32 / 48 patches
    plain, off, stage1, stage2 = (v["memory_mb"] for v in variants)
    assert plain == off and stage1 < stage2 < plain  # the activations saved for backward shrink with the tokens
    # the estimate scales the full-token step by the tokens blocks see: (68 + 1 * 36) / (2 * 68) at stage 1
    assert variants[2]["memory_analytic_mb"] == pytest.approx(plain * (68 + 36) / (2 * 68))


def test_saved_tensor_meter_counts_activations_once_and_not_the_weights():
    from toe.engine.memory import SavedTensorMeter

    layer = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    meter = SavedTensorMeter(layer)
    with meter.measure():
        y = layer(x)  # saves its input (4 x 8 floats); its weight is the layer's own
        z = y * y  # saves y (twice, one storage)
    assert meter.bytes == 2 * 4 * 8 * 4
    z.sum().backward()  # the saved tensors unpack unchanged
    torch.testing.assert_close(x.grad, (2 * y @ layer.weight).detach())


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_timing(tmp_path, capsys, monkeypatch):
    """A read-only (or full) folder for --json: one line before any step is timed (root may write anywhere, so
    the file system's refusal is simulated)."""
    import tempfile

    from toe import bench

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(bench, "measure", lambda *a: pytest.fail("timed before checking the output"))
    status, _, err = run_cli(toe_main, ["bench", *TINY, "--json", tmp_path / "b.json"], capsys)
    assert_one_line_error(status, err, f"--json {tmp_path / 'b.json'} cannot be written (Read-only file system)")
