"""Training-step throughput of a timm ViT at every ToE stage against full-token training (`toe bench`).

One process, synthetic input (data loading excluded), forward + backward + AdamW step. The variants
(plain timm, ToE attached but inactive, stage 1, stage 2, ...) take turns step by step: every round
times one step of each, starting one variant later than the round before, so that the machine's
noise, which drifts over seconds, hits all of them alike. Each variant is warmed up first (and
compiled, with --compile; one graph per stage). Reported: median images/s, the median over rounds of
each variant's speedup over plain timm in the same round, the analytic ratio of `toe flops`, and the
TokenSelect op's share of a step (the op timed alone at the block-0 output shape).

``--vpt shallow|deep --prompt-tokens N`` measures Visual Prompt Tuning instead (frozen backbone, prompts and
head train; see toe.vpt). ``--memory`` adds the memory one training step of every variant needs on top of
what is held between steps (weights, optimizer state): on CUDA its peak over the memory allocated before it
(activations, gradients, workspace), on the CPU the activations saved for backward (toe.engine.memory), next
to an analytic estimate: activations grow with the tokens every block sees, so a stage needs the full-token
step's memory times (full + (depth - 1) * reduced tokens) / (depth * full tokens).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import cast

import torch
from matplotlib.figure import Figure
from torch import nn
from torch._dynamo.utils import counters  # torch.compile's statistics (graphs compiled)

from .engine.memory import SavedTensorMeter, cuda_peak, mebibytes, reset_peak
from .errors import UserError
from .figures import check_output, save_figure
from .flag_types import device as device_name
from .flag_types import positive
from .flops import ViTShape, forward_macs, vit_shape
from .integration import apply_toe
from .models.factory import check_input_size, create_model, parse_model_kwargs
from .options import flag_names, token_select_from_args
from .schedule import REDUCTIONS, ToESchedule
from .token_select import TokenSelect
from .vpt import apply_vpt


@dataclass
class Variant:
    """One measured configuration."""

    name: str
    stage: int | None  # None: plain timm (no ToE attached); 0 or a full stage: ToE attached but inactive
    tokens: int
    analytic_speedup: float
    images_per_sec: float = 0.0
    speedup: float = 0.0
    op_share: float | None = None  # TokenSelect fwd+bwd time (inactive for ToE off) over the step time
    memory_mb: float | None = None  # --memory: measured memory of one training step (see the module docstring)
    memory_analytic_mb: float | None = None  # --memory: the full-token step's scaled by the tokens


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="deit_small_patch16_224", help="timm model name")
    parser.add_argument("--batch-size", type=positive, default=64)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument(
        "--model-kwargs",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra timm.create_model arguments, e.g. patch_size=4 depth=6",
    )
    parser.add_argument("--device", type=device_name, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp-dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (once per stage)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant before timing")
    parser.add_argument("--rounds", type=positive, default=10, help="timed rounds of one step per variant")
    parser.add_argument(
        "--vpt",
        choices=("shallow", "deep"),
        default=None,
        help="measure Visual Prompt Tuning (frozen backbone; prompts at block 0 or at every block)",
    )
    parser.add_argument("--prompt-tokens", type=positive, default=50, metavar="N", help="prompt tokens with --vpt")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also measure each variant's training memory (CUDA peak; on the CPU the activations saved for backward)",
    )
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--plot", default=None, metavar="PNG", help="also plot measured vs analytic speedup")


def bench_main(args: argparse.Namespace) -> list[Variant]:
    """Run the benchmark described by ``args`` and print the table."""
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            check_output(Path(path), flag)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {args.device} was asked for but this machine has no CUDA device")
    select = cast(TokenSelect, token_select_from_args(args))  # ToE always on (toe bench): never None
    schedule = select.schedule
    torch.manual_seed(0)
    plain = create_model(args.model, 1000, img_size=args.input_size, **parse_model_kwargs(args.model_kwargs))
    check_input_size(plain, args.input_size)
    if args.vpt:
        try:
            apply_vpt(plain, args.prompt_tokens, deep=args.vpt == "deep")
        except (TypeError, ValueError) as error:
            raise UserError(f"--vpt cannot prompt --model {args.model}: {error}") from None
    plain.to(device)
    try:
        with_toe = apply_toe(copy.deepcopy(plain), select)
    except (TypeError, ValueError) as error:
        raise UserError(f"--model {args.model} cannot train with ToE: {flag_names(str(error))}") from None
    shape = vit_shape(plain)
    variants = plan_variants(shape, schedule)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp_dtype]
    graphs_before = counters["stats"]["unique_graphs"]
    try:
        plain_trainer = _Trainer(plain, device, dtype, args)
        toe_trainer = _Trainer(with_toe, device, dtype, args)
        steps: dict[str, Callable[[], float]] = {
            v.name: plain_trainer.step if v.stage is None else partial(toe_trainer.step, v.stage) for v in variants
        }
        measure(variants, steps, args.batch_size, args.warmup, args.rounds)
        if args.memory:
            measure_memory(variants, plain_trainer, toe_trainer, shape)
        for variant in variants:
            if variant.stage is not None:  # ToE off: the inactive selector's own cost
                op_time = _op_time(select, variant.stage, args.batch_size, shape, device, dtype)
                variant.op_share = op_time / (args.batch_size / variant.images_per_sec)
    except RuntimeError as error:  # torch.OutOfMemoryError on CUDA; the CPU allocator's "can't allocate memory"
        if not isinstance(error, torch.OutOfMemoryError) and "allocate" not in str(error):
            raise
        raise UserError(
            f"out of memory at --batch-size {args.batch_size} and --input-size {args.input_size} on {args.device}: "
            "use a smaller batch"
        ) from None
    print(format_bench(args, variants))
    if args.compile:
        graphs = counters["stats"]["unique_graphs"] - graphs_before
        print(f"torch.compile: {graphs} graphs for {len(variants)} variants on 2 models (a recompile per ToE stage)")
    if args.json:
        with open(args.json, "w") as handle:  # its folder was checked before the benchmark
            json.dump(
                {
                    "args": {k: v for k, v in vars(args).items() if not callable(v)},
                    "device": _device_name(device),
                    "variants": [asdict(v) for v in variants],
                },
                handle,
                indent=2,
            )
    if args.plot:
        title = f"{args.model}, batch {args.batch_size}, {args.amp_dtype}, {_device_name(device)}"
        save_figure(speedup_figure(variants, title), Path(args.plot), "--plot")
    return variants


def plan_variants(shape: ViTShape, schedule: ToESchedule) -> list[Variant]:
    """Plain timm, ToE off, then every reduced stage of ``schedule``, with tokens and analytic speedups."""
    counts = schedule.token_counts(shape.num_patches)
    full_tokens = shape.num_prefix_tokens + shape.num_patches
    variants = [Variant("plain timm", None, full_tokens, 1.0), Variant("ToE off", 0, full_tokens, 1.0)]
    for stage in range(1, schedule.num_stages + 1):
        if schedule.is_active(stage):
            kept = counts.kept_in(stage)
            speedup = forward_macs(shape) / forward_macs(shape, kept)
            variants.append(Variant(f"stage {stage}", stage, shape.num_prefix_tokens + kept, speedup))
    return variants


def measure(
    variants: list[Variant], steps: dict[str, Callable[[], float]], batch_size: int, warmup: int, rounds: int
) -> None:
    """Fill in images/s and speedup over the first variant: ``warmup`` untimed steps each, then ``rounds``
    rounds of one timed step per variant, each round starting one variant later."""
    for variant in variants:
        for _ in range(warmup):
            steps[variant.name]()
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for round_ in range(rounds):
        for variant in variants[round_ % len(variants) :] + variants[: round_ % len(variants)]:
            times[variant.name].append(steps[variant.name]())
    reference = times[variants[0].name]
    for variant in variants:
        variant.images_per_sec = batch_size / statistics.median(times[variant.name])
        variant.speedup = statistics.median(r / t for r, t in zip(reference, times[variant.name]))


def measure_memory(variants: list[Variant], plain: _Trainer, with_toe: _Trainer, shape: ViTShape) -> None:
    """Fill in each variant's measured memory of one training step and the analytic estimate from the plain
    model's (see the module docstring)."""
    for variant in variants:
        variant.memory_mb = mebibytes((plain if variant.stage is None else with_toe).memory(variant.stage))
    full = variants[0]
    full_mb = cast(float, full.memory_mb)  # measured just above
    for variant in variants:
        blocks = full.tokens + (shape.depth - 1) * variant.tokens
        variant.memory_analytic_mb = full_mb * blocks / (shape.depth * full.tokens)


class _Trainer:
    """Training steps of one model on a fixed synthetic batch."""

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype | None, args) -> None:
        self.model, self.device, self.dtype = model.train(), device, dtype
        memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.images = torch.randn(args.batch_size, 3, args.input_size, args.input_size, device=device)
        self.images = self.images.contiguous(memory_format=memory_format)
        self.labels = torch.randint(0, cast(int, model.num_classes), (args.batch_size,), device=device)
        self.forward = torch.compile(model) if args.compile else model
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step(self, stage: int | None = None, meter: SavedTensorMeter | None = None) -> float:
        """One training step (at ToE ``stage``; 0: attached but inactive); returns its seconds. ``meter``
        counts the activations its forward saves."""
        if stage is not None:  # epoch -1 is before every stage: ToE attached but inactive
            select = cast(TokenSelect, self.model.token_select)  # attached by apply_toe
            select.update_current_stage(-1 if stage == 0 else select.schedule.expansion_step[stage - 1])
        start = time.perf_counter()
        counting = meter.measure() if meter is not None else contextlib.nullcontext()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None), counting:
            loss = nn.functional.cross_entropy(self.forward(self.images), self.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def memory(self, stage: int | None) -> int:
        """Bytes one training step at ``stage`` needs: on CUDA its peak over what was allocated before it, on
        the CPU the activations its forward saves for backward."""
        if self.device.type != "cuda":
            meter = SavedTensorMeter(self.model)
            self.step(stage, meter)
            return meter.bytes
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        reset_peak(self.device)
        self.step(stage)
        return cuda_peak(self.device) - before


def _op_time(
    select: TokenSelect,
    stage: int,
    batch: int,
    shape: ViTShape,
    device: torch.device,
    dtype: torch.dtype | None,
    repeats: int = 5,
) -> float:
    """Median seconds of TokenSelect forward + backward alone at the block-0 output [batch, prefix + P, C]
    (``repeats`` calls after one untimed); stage 0: the inactive selector's call."""
    select = copy.deepcopy(select).train()
    select.update_current_stage(-1 if stage == 0 else select.schedule.expansion_step[stage - 1])
    tokens = shape.num_prefix_tokens + shape.num_patches
    x = torch.randn(batch, tokens, shape.embed_dim, device=device, dtype=dtype or torch.float32, requires_grad=True)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        out, index = select(x, num_prefix_tokens=shape.num_prefix_tokens)
        if index is not None:  # the inactive selector returns x itself: nothing to differentiate
            out.backward(torch.ones_like(out))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def format_bench(args: argparse.Namespace, variants: list[Variant]) -> str:
    vpt = f" + VPT-{args.vpt} ({args.prompt_tokens} prompt tokens)" if args.vpt else ""
    lines = [
        f"{args.model}{vpt} at {args.input_size} px, batch {args.batch_size}, {args.amp_dtype}"
        f"{', channels-last' if args.channels_last else ''}{', torch.compile' if args.compile else ''}, "
        f"{_device_name(torch.device(args.device))}; median of {args.rounds} rounds of one step per variant",
        f"ToE stages: token reduction {REDUCTIONS[args.token_reduction]}",
        "",
        f"{'variant':<11} {'tokens':>6} {'images/s':>9} {'measured':>9} {'analytic':>9} {'of limit':>8} "
        f"{'op share':>8}" + (f" {'memory MiB':>10} {'vs full':>7} {'analytic':>8}" if args.memory else ""),
    ]
    for v in variants:
        share = "-" if v.op_share is None else f"{100 * v.op_share:.3f}%"
        memory = ""
        if args.memory:  # measure_memory filled them in
            measured, full = cast(float, v.memory_mb), cast(float, variants[0].memory_mb)
            memory = f" {measured:>10.1f} {measured / full:>7.2f} {v.memory_analytic_mb:>8.1f}"
        lines.append(
            f"{v.name:<11} {v.tokens:>6} {v.images_per_sec:>9.2f} {v.speedup:>8.2f}x {v.analytic_speedup:>8.2f}x "
            f"{v.speedup / v.analytic_speedup:>8.2f} {share:>8}{memory}"
        )
    if args.memory:
        what = (
            "its peak over the memory held before it"
            if args.device.startswith("cuda")
            else ("the activations saved for backward")
        )
        lines.append(f"memory: one training step's, {what}; analytic: the full-token step's scaled by the tokens")
    return "\n".join(lines)


def speedup_figure(variants: list[Variant], title: str) -> Figure:
    """Bar chart: measured and analytic speedup of each ToE stage over plain full-token training."""
    stages = [v for v in variants if v.stage]
    x = range(len(stages))
    figure = Figure(figsize=(5, 3.2))
    axis = figure.add_subplot()
    axis.bar(
        [i - 0.2 for i in x], [v.analytic_speedup for v in stages], 0.4, label="analytic (toe flops)", color="#9ecae1"
    )
    axis.bar([i + 0.2 for i in x], [v.speedup for v in stages], 0.4, label="measured", color="#3182bd")
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_xticks(list(x), [f"{v.name}\n{v.tokens} tokens" for v in stages])
    axis.set_ylabel("speedup over full-token")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
