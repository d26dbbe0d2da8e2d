"""Profile one DeiT training step (forward + backward + AdamW) at each ToE stage with torch.profiler.

For every variant (full-token, stage 1, stage 2, ...) prints the step's top operators by self time, the
time under TokenSelect (forward, marked with record_function "toe.TokenSelect") and the count of host
syncs (aten::item / aten::_local_scalar_dense), which the full-token path does not have. With
--trace DIR also writes Chrome traces (open in chrome://tracing or Perfetto).

    python benchmarks/profile_step.py --model deit_small_patch16_224 --batch-size 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from toe import TokenSelect, apply_toe

SYNC_OPS = ("aten::item", "aten::_local_scalar_dense")


class MarkedTokenSelect(TokenSelect):
    """TokenSelect whose forward shows up as one labelled range in the profile."""

    def forward(self, x: torch.Tensor, num_prefix_tokens: int = 1):
        with record_function("toe.TokenSelect"):
            return super().forward(x, num_prefix_tokens)


def profile_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epoch: int):
    """Warm up, then profile one training step; returns the profiler."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    model.token_select.update_current_stage(epoch)  # epoch -1: before the first stage, ToE inactive

    def step() -> None:
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if images.is_cuda else [])
    with profile(activities=activities) as prof:
        step()
        if images.is_cuda:
            torch.cuda.synchronize()
    return prof


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small_patch16_224")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--top", type=int, default=12, help="operators listed per variant")
    parser.add_argument("--trace", type=Path, default=None, help="folder for Chrome traces")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = apply_toe(timm.create_model(args.model), MarkedTokenSelect()).to(args.device).train()
    size = model.patch_embed.img_size
    images = torch.randn(args.batch_size, 3, *size, device=args.device)
    labels = torch.randint(0, model.num_classes, (args.batch_size,), device=args.device)
    schedule = model.token_select.schedule
    active = [s for s in range(1, schedule.num_stages + 1) if schedule.is_active(s)]
    variants = [("full-token", -1)] + [(f"stage {s}", schedule.expansion_step[s - 1]) for s in active]
    sort_key = "self_cuda_time_total" if images.is_cuda else "self_cpu_time_total"
    for name, epoch in variants:
        prof = profile_step(model, images, labels, epoch)
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        marked = sum(e.cpu_time_total for e in events if e.key == "toe.TokenSelect")
        syncs = sum(e.count for e in events if e.key in SYNC_OPS)
        print(
            f"\n== {name}: step {total / 1e3:.1f} ms CPU self time; TokenSelect forward {marked / 1e3:.1f} ms "
            f"({100 * marked / total:.2f}%); host syncs {syncs}"
        )
        print(events.table(sort_by=sort_key, row_limit=args.top))
        if args.trace:
            args.trace.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(args.trace / f"{name.replace(' ', '_')}.json"))


if __name__ == "__main__":
    main()
