"""Benchmark TokenSelect alone: forward + backward time and memory at DeiT shapes [B, 197, C].

Side by side in one process: our vectorised op, the brute-force loop reference from the tests, and
(for the record) the reference implementation's timings measured on the project's 2-core machine
(docs/token-expansion-spec.md section 12). The op's share of a DeiT training step at the same shape is
measured on a DeiT with ToE at the same stage (forward + backward + AdamW step; at --step-batch
images, scaled linearly to B when B is larger).

    python benchmarks/bench_token_select.py                      # full table (a few minutes on CPU)
    python benchmarks/bench_token_select.py --channels 384 --batch 64 --no-reference
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_toe import reference_token_select  # noqa: E402

from toe import TokenSelect, apply_toe  # noqa: E402

DEIT = {192: "deit_tiny_patch16_224", 384: "deit_small_patch16_224", 768: "deit_base_patch16_224"}
# fwd + bwd of the reference implementation's op, DeiT recipe, 2-core CPU, fp32 (spec section 12)
REFERENCE_OP_MS = {(64, 384, 1): 193, (64, 384, 2): 262, (256, 384, 1): 1770, (256, 384, 2): 2370}


def op_time(fn, x: torch.Tensor, repeats: int, warmup: int = 1) -> float:
    """Median seconds of forward + backward of ``fn(x)`` over ``repeats`` calls after ``warmup``."""
    times = []
    for i in range(repeats + warmup):
        x.grad = None
        start = time.perf_counter()
        tokens = fn(x)[0]
        tokens.backward(torch.ones_like(tokens))
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def saved_bytes(fn, x: torch.Tensor) -> int:
    """Bytes the op keeps alive for its backward (excluding x itself)."""
    total = 0

    def pack(tensor):
        nonlocal total
        if tensor.data_ptr() != x.data_ptr():
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return total


def step_time(channels: int, stage_epoch: int, batch: int, device: torch.device) -> float:
    """Seconds of one DeiT training step (fwd + bwd + AdamW) with ToE at the stage of ``stage_epoch``."""
    model = apply_toe(timm.create_model(DEIT[channels])).to(device).train()
    model.token_select.update_current_stage(stage_epoch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, 224, 224, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    times = []
    for i in range(3):
        start = time.perf_counter()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, nargs="+", default=[192, 384, 768], choices=sorted(DEIT))
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--stages", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-reference", action="store_true", help="skip the slow brute-force reference")
    parser.add_argument(
        "--reference-max-batch",
        type=int,
        default=64,
        help="run the brute-force reference only up to this batch (it takes minutes at 256)",
    )
    parser.add_argument("--no-step", action="store_true", help="skip the DeiT training-step share")
    parser.add_argument("--step-batch", type=int, default=32, help="largest batch for the DeiT step timing")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    print(
        "| B | C | stage | ours fwd+bwd | brute-force ref | ref / ours | reference impl (spec 12) | "
        "impl / ours | saved for bwd | share of DeiT step |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for channels in args.channels:
        for batch in args.batch:
            for stage in args.stages:
                select = TokenSelect().train()
                select.update_current_stage((stage - 1) * 100)
                x = torch.randn(batch, 197, channels, device=device, requires_grad=True)
                ours = op_time(select, x, args.repeats)
                cells = [f"{ours * 1e3:.1f} ms"]
                if args.no_reference or batch > args.reference_max_batch:
                    cells += ["-", "-"]
                else:
                    ref = op_time(lambda t, s=stage: reference_token_select(t, [0.5, 0.75, 1.0], 0.25, 2, s), x, 1, 0)
                    cells += [f"{ref * 1e3:.0f} ms", f"{ref / ours:.0f}x"]
                impl_ms = REFERENCE_OP_MS.get((batch, channels, stage))
                cells += [f"{impl_ms} ms", f"{impl_ms / 1e3 / ours:.1f}x"] if impl_ms else ["-", "-"]
                cells.append(f"{saved_bytes(select, x) / 2**20:.2f} MiB")
                if args.no_step:
                    cells.append("-")
                else:
                    measured = min(batch, args.step_batch)
                    step = step_time(channels, (stage - 1) * 100, measured, device) * batch / measured
                    note = "" if measured == batch else f" (step at B={measured} x{batch // measured})"
                    cells.append(f"{ours / step * 100:.2f}% of {step:.1f} s{note}")
                print(f"| {batch} | {channels} | {stage} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
