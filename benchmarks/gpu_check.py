"""One command for the first minutes on a GPU: check every CUDA path the recipes use, measure the real speedups.

    python benchmarks/gpu_check.py --out output/gpu_check            # on a CUDA machine, about 8 minutes
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu_check     # the same steps on the CPU, tiny shapes

Runs its steps in order of priority, each in a fresh process, and plans them to fit --budget-min: a step
whose estimated time no longer fits is skipped, and the summary says so. Correctness first: a short DeiT
training with ToE on generated 224 px images in each precision the recipes offer on CUDA (fp16 with a
gradient scaler, the default; bf16; fp32): losses finite and falling, the scaler's scale, the ToE stage
switches crossed; a kill mid-epoch and --auto-resume against the uninterrupted run (the largest weight
difference); torchrun with NCCL; the VPT recipe; YOLOS with --amp and LV-ViT with token labels for an epoch
each. Then speed: `toe bench` of DeiT-S/16 at 224 px, batch 256, in bf16 and fp16, eager and compiled,
channels_last, with each stage's training memory; ViT-B/16 with VPT-deep; DeiT-B; and the data loader's
images/s against what each stage consumes. Everything lands in OUT/gpu_check.json and OUT/gpu_check.md.

--dry-run runs the same sequence on the CPU with tiny models (32 px, 4 px patches, 2 blocks), gloo for
torchrun and fp32/bf16 autocast, within a minute: it keeps the script tested (make test runs it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # this checkout's library, as the commands it runs (PYTHONPATH)


@dataclass
class Step:
    """One check: its name, estimated seconds (GPU, dry run) and outcome."""

    name: str
    estimate: tuple[float, float]
    dry: str | None = None  # why a dry run skips it (it would run the same code as an earlier step), or None
    status: str = "not run"  # ok, FAILED, skipped (...)
    seconds: float = 0.0
    results: dict = field(default_factory=dict)
    detail: str = ""


class Checker:
    """Runs the steps against a time budget, recording what each found."""

    def __init__(self, out: Path, budget_s: float, dry_run: bool) -> None:
        self.out, self.budget_s, self.dry = out, budget_s, dry_run
        self.start = time.monotonic()
        self.steps: list[Step] = []
        self.device = "cpu" if dry_run else "cuda"

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def run(self, step: Step, body) -> Step:
        """Run ``body(step)`` unless its estimate exceeds the time left; a failure is recorded, not raised."""
        self.steps.append(step)
        if self.dry and step.dry:
            step.status = f"skipped (dry run: {step.dry})"
            print(f"[{step.name}] {step.status}", flush=True)
            return step
        estimate = step.estimate[1 if self.dry else 0]
        if estimate > self.left():
            step.status = f"skipped (needs about {estimate:.0f}s, {max(self.left(), 0):.0f}s of the budget left)"
            print(f"[{step.name}] {step.status}", flush=True)
            return step
        began = time.monotonic()
        print(f"[{step.name}] running (about {estimate:.0f}s)", flush=True)
        try:
            body(step)
            step.status = "ok" if step.status == "not run" else step.status
        except CheckFailed as failure:
            step.status, step.detail = "FAILED", str(failure)
        step.seconds = time.monotonic() - began
        print(f"[{step.name}] {step.status} in {step.seconds:.0f}s {step.detail[:300]}", flush=True)
        return step

    def command(self, argv: list, env: dict | None = None, timeout: float | None = None, check: bool = True):
        """Run a command of this repository (its src/ first on PYTHONPATH); its output is kept in OUT/logs/."""
        inherited = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        environment = {**inherited, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}", **(env or {})}
        limit = max(5.0, min(timeout or 1e9, self.left() + 30))
        try:
            result = subprocess.run(
                [str(a) for a in argv], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=limit
            )
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"timed out after {limit:.0f}s: {' '.join(map(str, argv[:4]))} ...") from None
        logs = self.out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "commands.log", "a") as handle:
            handle.write(f"$ {' '.join(map(str, argv))}\n{result.stdout}\n{result.stderr}\n")
        if check and result.returncode != 0:
            raise CheckFailed(f"exit {result.returncode}: {result.stderr.strip()[-600:]}")
        return result


class CheckFailed(Exception):
    """A check found something wrong."""


def records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "log.txt").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _generator(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Plan:
    """The shapes and flags of every step: the real ones on CUDA, tiny ones in a dry run."""

    def __init__(self, dry: bool, work: Path) -> None:
        self.dry, self.work = dry, work
        self.size = 32 if dry else 224
        self.data = work / "data"
        device = ["--device", "cpu" if dry else "cuda"]
        tiny = ["--model-kwargs", "patch_size=4", "depth=2", "embed_dim=64", "num_heads=2"] if dry else []
        self.model = ["--model", "deit_small_patch16_224", "--input-size", str(self.size), *tiny, *device]
        self.train = [
            *("--batch-size", "8" if dry else "64", "--epochs", "3", "--unscale-lr", "--lr", "5e-4"),
            *("--warmup-epochs", "0", "--mixup", "0", "--cutmix", "0", "--aa", "none", "--reprob", "0"),
            *("--num_workers", "0" if dry else "8", "--no-progress", "--seed", "0"),
            *("--toe", "--expansion-step", "0", "1", "2", "--keep-rate", "0.5", "0.75", "1.0"),
        ]
        self.bench_model = (
            ["--model", "deit_small_patch16_224", "--input-size", "32", "--model-kwargs", "patch_size=4", "depth=2"]
            if dry
            else ["--model", "deit_small_patch16_224", "--input-size", "224"]
        )
        self.bench_batch = ["--batch-size", "8" if dry else "256", "--device", "cpu" if dry else "cuda"]
        self.bench_rounds = ["--warmup", "0", "--rounds", "1"] if dry else ["--warmup", "3", "--rounds", "10"]

    def make_data(self) -> None:
        if not self.data.exists():
            per_class = (4, 2) if self.dry else (26, 6)
            _generator("make_demo_data").generate(self.data, *per_class, size=self.size, image_format="jpeg")


def check_environment(checker: Checker, step: Step) -> None:
    info = {"torch": torch.__version__, "python": sys.version.split()[0], "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info |= {
            "device": torch.cuda.get_device_name(0),
            "device_count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "bf16": torch.cuda.is_bf16_supported(),
            "nccl": torch.distributed.is_nccl_available(),
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        }
    elif not checker.dry:
        raise CheckFailed("no CUDA device: run with --dry-run on a machine without a GPU")
    import timm

    step.results = info | {"timm": timm.__version__}


def train_in_precision(checker: Checker, plan: Plan, step: Step, precision: str) -> None:
    """DeiT + ToE for 3 epochs (stages at 0, 1, 2) in ``precision``: finite, falling losses, the stage switches,
    the scaler's scale."""
    plan.make_data()
    flags = {"fp16": [], "bf16": ["--amp-dtype", "bf16"], "fp32": ["--no-amp"]}[precision]
    output = plan.work / f"deit_{precision}"
    shutil.rmtree(output, ignore_errors=True)
    run = checker.command(
        [
            sys.executable,
            "ToE/deit/main.py",
            *plan.model,
            *plan.train,
            *flags,
            "--data-path",
            plan.data,
            "--output_dir",
            output,
        ]
    )
    log = records(output)
    losses = [r["train_loss"] for r in log]
    checkpoint = torch.load(output / "checkpoint.pth", map_location="cpu", weights_only=True)
    scaler = checkpoint.get("scaler") or {}
    step.results = {
        "losses": losses,
        "toe_tokens": [r["toe_tokens"] for r in log],
        "top1": log[-1]["test_acc1"],
        "memory_mb": [r.get("train_memory_mb") for r in log],
        "images_per_sec": [r["train_images_per_sec"] for r in log],
        "scaler_scale": scaler.get("scale"),
        "precision_line": next((line for line in run.stdout.splitlines() if "lr " in line and "process" in line), ""),
    }
    if not all(map(_finite, losses)):
        raise CheckFailed(f"non-finite losses {losses}")
    if not losses[-1] < losses[0]:
        raise CheckFailed(f"losses do not fall: {losses}")
    tokens = step.results["toe_tokens"]
    if not tokens[0] < tokens[1] < tokens[2]:
        raise CheckFailed(f"the ToE stages were not crossed: tokens {tokens}")


def kill_and_resume(checker: Checker, plan: Plan, step: Step) -> None:
    """The fp16 run again, killed after its 6th update (mid-epoch 1; a checkpoint after every update), then
    --auto-resume: compared with the uninterrupted run."""
    whole = plan.work / "deit_fp16"
    if not (whole / "checkpoint.pth").exists():
        raise CheckFailed("needs the fp16 training step's run")
    output = plan.work / "deit_fp16_killed"
    shutil.rmtree(output, ignore_errors=True)
    argv = [
        sys.executable,
        "ToE/deit/main.py",
        *plan.model,
        *plan.train,
        "--data-path",
        plan.data,
        "--output_dir",
        output,
        "--save-every-steps",
        "1",
    ]
    killed = checker.command(argv, env={"TOE_FAILPOINT": "train-step:6"}, check=False)
    if killed.returncode != -9:
        raise CheckFailed(f"the kill did not happen (exit {killed.returncode})")
    resumed = checker.command([*argv, "--auto-resume"])
    a = torch.load(whole / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    b = torch.load(output / "checkpoint.pth", map_location="cpu", weights_only=True)["model"]
    largest = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    step.results = {
        "resumed_at": next((line.split(": ")[-1] for line in resumed.stdout.splitlines() if "continuing" in line), ""),
        "bit_identical": largest == 0.0,
        "largest_weight_difference": largest,
        "loss_differences": [
            x - y for x, y in zip([r["train_loss"] for r in records(whole)], [r["train_loss"] for r in records(output)])
        ],
    }
    if not step.results["resumed_at"]:
        raise CheckFailed("the resumed run did not continue mid-epoch")


def torchrun_check(checker: Checker, plan: Plan, step: Step) -> None:
    plan.make_data()
    processes = max(1, torch.cuda.device_count()) if not plan.dry else 2
    output = plan.work / "torchrun"
    shutil.rmtree(output, ignore_errors=True)
    checker.command(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            processes,
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            free_port(),
            "ToE/deit/main.py",
            *plan.model,
            *plan.train,
            "--epochs",
            "1",
            "--data-path",
            plan.data,
            "--output_dir",
            output,
        ],
        env={"OMP_NUM_THREADS": "1"},
    )
    record = records(output)[-1]
    step.results = {
        "processes": processes,
        "backend": "gloo" if plan.dry else "nccl",
        "replicas_in_sync": record.get("replicas_in_sync"),
        "train_loss": record["train_loss"],
    }
    if processes > 1 and record.get("replicas_in_sync") is not True:
        raise CheckFailed("the processes ended with different weights")
    if processes == 1 and not plan.dry:  # one GPU: torchrun runs one plain process; NCCL itself on one rank
        environment = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "WORLD_SIZE": "1"}
        step.results["nccl_all_reduce"] = checker.command([sys.executable, "-c", NCCL_ONE_RANK], env=environment).stdout


NCCL_ONE_RANK = (
    "import torch, torch.distributed as d; d.init_process_group('nccl'); x = torch.ones(4, device='cuda'); "
    "d.all_reduce(x); torch.cuda.synchronize(); print('nccl', torch.cuda.nccl.version(), x.tolist()); "
    "d.destroy_process_group()"
)


def vpt_check(checker: Checker, plan: Plan, step: Step) -> None:
    """The VPT recipe on the fp16 run's weights (a stand-in for a pre-trained backbone), with ToE."""
    backbone = plan.work / "deit_fp16" / "checkpoint.pth"
    if not backbone.exists():
        raise CheckFailed("needs the fp16 training step's run")
    output = plan.work / "vpt"
    shutil.rmtree(output, ignore_errors=True)
    checker.command(
        [
            sys.executable,
            "ToE/vpt/main.py",
            *plan.model,
            "--finetune",
            backbone,
            "--data-path",
            plan.data,
            "--output_dir",
            output,
            "--epochs",
            "3",
            "--warmup-epochs",
            "1",
            "--batch-size",
            "8" if plan.dry else "64",
            "--prompt-tokens",
            "10",
            "--num_workers",
            "0" if plan.dry else "8",
            "--no-progress",
            "--toe",
            "--expansion-step",
            "0",
            "1",
            "2",
        ]
    )
    log = records(output)
    step.results = {
        "losses": [r["train_loss"] for r in log],
        "memory_mb": [r.get("train_memory_mb") for r in log],
        "toe_tokens": [r["toe_tokens"] for r in log],
        "top1": log[-1]["test_acc1"],
    }
    if not all(map(_finite, step.results["losses"])):
        raise CheckFailed(f"non-finite losses {step.results['losses']}")


def yolos_check(checker: Checker, plan: Plan, step: Step) -> None:
    """YOLOS with --amp for one epoch on the generated shapes (a tiny backbone of random weights)."""
    data = plan.work / "coco"
    if not data.exists():
        checker.command(
            [
                sys.executable,
                "datasets/make_detection_demo_data.py",
                "--out",
                data,
                "--train-images",
                "32",
                "--val-images",
                "8",
            ]
        )
    output = plan.work / "yolos"
    shutil.rmtree(output, ignore_errors=True)
    device = "cpu" if plan.dry else "cuda"
    checker.command(
        [
            sys.executable,
            "ToE/YOLOS/main.py",
            "--coco_path",
            data,
            "--output_dir",
            output,
            "--device",
            device,
            "--num_workers",
            "0",
            "--no-progress",
            "--backbone_name",
            "tiny",
            "--model-kwargs",
            "img_size=32",
            "patch_size=8",
            "embed_dim=64",
            "depth=4",
            "num_heads=2",
            "--det_token_num",
            "10",
            "--init_pe_size",
            "64",
            "64",
            "--eval_size",
            "64",
            "--aug-scale",
            "0.1",
            "--batch_size",
            "8",
            "--lr",
            "5e-4",
            "--epochs",
            "2",
            "--amp",
            "--toe",
            "--expansion-step",
            "0",
            "1",
            "--keep-rate",
            "0.5",
            "1.0",
        ]
    )
    log = records(output)
    step.results = {"losses": [r["train_loss"] for r in log], "ap50": log[-1].get("test_ap50")}
    if not all(map(_finite, step.results["losses"])):
        raise CheckFailed(f"non-finite losses {step.results['losses']}")


def lvvit_check(checker: Checker, plan: Plan, step: Step) -> None:
    """Token labels from the fp16 run's model, then LV-ViT-T with token labelling and ToE for two epochs."""
    teacher = plan.work / "deit_fp16" / "checkpoint.pth"
    if not teacher.exists():
        raise CheckFailed("needs the fp16 training step's run")
    labels, output = plan.work / "labels", plan.work / "lvvit"
    shutil.rmtree(output, ignore_errors=True)
    device = "cpu" if plan.dry else "cuda"
    if not labels.exists():
        checker.command(
            [
                sys.executable,
                "ToE/lvvit/generate_label.py",
                plan.data,
                labels,
                "--checkpoint",
                teacher,
                "--crop-pct",
                "1.0",
                "--device",
                device,
                "-j",
                "0",
                "--no-progress",
            ]
        )
    tiny = ["--model-kwargs", "patch_size=4", "depth=2"] if plan.dry else []
    checker.command(
        [
            sys.executable,
            "ToE/lvvit/main.py",
            plan.data,
            "--output",
            output,
            "--device",
            device,
            "-j",
            "0",
            "--model",
            "lvvit_t",
            "--img-size",
            plan.size,
            *tiny,
            "--epochs",
            "2",
            "--cooldown-epochs",
            "0",
            "-b",
            "8" if plan.dry else "64",
            "--warmup-epochs",
            "0",
            "--amp",
            "--token-label",
            "--token-label-data",
            labels,
            "--toe",
            "--expansion-step",
            "0",
            "1",
            "--keep-rate",
            "0.4",
            "1.0",
            "--initialization-keep-rate",
            "0.2",
            "--no-progress",
        ]
    )
    log = records(output)
    step.results = {"losses": [r["train_loss"] for r in log], "toe_tokens": [r["toe_tokens"] for r in log]}
    if not all(map(_finite, step.results["losses"])):
        raise CheckFailed(f"non-finite losses {step.results['losses']}")


def bench(checker: Checker, plan: Plan, step: Step, extra: list[str], model: list[str] | None = None) -> None:
    """`toe bench` with ``extra`` flags, in this process (one torch import for all of them): images/s, measured
    and analytic speedup and memory of every variant. A dry run measures fp16 as bf16 (the CPU emulates fp16)."""
    from toe.bench import add_bench_arguments, bench_main
    from toe.errors import UserError
    from toe.options import ArgumentParser, add_toe_arguments

    if plan.dry:
        extra = ["bf16" if flag == "fp16" else flag for flag in extra]
    parser = ArgumentParser(prog="toe bench")
    add_bench_arguments(parser)
    add_toe_arguments(parser, "deit", always_on=True)
    out = checker.out / f"bench_{re.sub('[^a-z0-9]+', '_', step.name.lower()).strip('_')}.json"
    argv = [*(model or plan.bench_model), *plan.bench_batch, *plan.bench_rounds, "--memory", "--json", out, *extra]
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            bench_main(parser.parse_args([str(a) for a in argv]))
    except (UserError, RuntimeError) as error:  # torch's errors (out of memory, compile) included
        raise CheckFailed(f"toe bench {' '.join(map(str, argv))}: {type(error).__name__}: {error}") from None
    finally:
        if not plan.dry:
            torch.cuda.empty_cache()
    step.results = json.loads(out.read_text())
    step.results["table"] = printed.getvalue().strip()
    out.unlink()


def loader_check(checker: Checker, plan: Plan, step: Step) -> None:
    """DeiT's training pipeline through 8 and 16 workers (0 and 2 in a dry run) on generated 256 px JPEGs."""
    workers = ["0", "2"] if plan.dry else ["8", "16"]
    run = checker.command(
        [
            sys.executable,
            "benchmarks/bench_loader.py",
            "--image-size",
            32 if plan.dry else 256,
            "--input-size",
            plan.size,
            "--batches",
            "3" if plan.dry else "8",
            "--batch-size",
            "16" if plan.dry else "128",
            "--workers",
            *workers,
        ]
    )
    step.results = {"table": run.stdout.strip()}


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def summary(checker: Checker, args: argparse.Namespace) -> str:
    lines = [
        f"# GPU check ({'dry run on the CPU' if checker.dry else 'CUDA'}), {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"budget {args.budget_min:g} min, used {(time.monotonic() - checker.start) / 60:.1f} min",
        "",
        "| step | status | seconds | what it found |",
        "|---|---|---|---|",
    ]
    for step in checker.steps:
        found = {k: v for k, v in step.results.items() if k not in ("table", "args", "variants")}
        text = (step.detail or json.dumps(found, default=str))[:400].replace("|", "/")
        lines.append(f"| {step.name} | {step.status} | {step.seconds:.0f} | {text} |")
    for step in checker.steps:
        if "table" in step.results:
            lines += ["", f"## {step.name}", "", "```", step.results["table"], "```"]
    return "\n".join(lines) + "\n"


SAME_CODE = "on the CPU it runs the code of an earlier step with other flags"
COMPILE = "torch.compile takes minutes on the CPU; tests/test_compile.py covers it"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("output/gpu_check"), help="folder for the JSON and markdown")
    parser.add_argument("--budget-min", type=float, default=None, help="wall-time budget (default 8; dry run 1)")
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny shapes")
    args = parser.parse_args(argv)
    args.budget_min = args.budget_min or (1.0 if args.dry_run else 8.0)
    if args.budget_min <= 0:
        parser.error(f"--budget-min must be above 0, got {args.budget_min}")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--out {args.out} cannot be created ({error.strerror or error})")
    checker = Checker(args.out, args.budget_min * 60, args.dry_run)
    plan = Plan(args.dry_run, args.out / "work")
    plan.work.mkdir(exist_ok=True)
    steps = [
        (Step("environment", (0, 0)), lambda s: check_environment(checker, s)),
        (Step("train fp16 + scaler", (45, 8)), lambda s: train_in_precision(checker, plan, s, "fp16")),
        (Step("train bf16", (30, 6), SAME_CODE), lambda s: train_in_precision(checker, plan, s, "bf16")),
        (Step("train fp32", (35, 6), SAME_CODE), lambda s: train_in_precision(checker, plan, s, "fp32")),
        (Step("bench DeiT-S bf16", (35, 6)), lambda s: bench(checker, plan, s, ["--amp-dtype", "bf16"])),
        (Step("bench DeiT-S fp16", (35, 6), SAME_CODE), lambda s: bench(checker, plan, s, ["--amp-dtype", "fp16"])),
        (Step("kill and resume", (50, 10)), lambda s: kill_and_resume(checker, plan, s)),
        (Step("torchrun", (30, 10)), lambda s: torchrun_check(checker, plan, s)),
        (Step("VPT recipe", (35, 6)), lambda s: vpt_check(checker, plan, s)),
        (
            Step("bench ViT-B/16 VPT-deep bf16", (45, 6)),
            lambda s: bench(
                checker,
                plan,
                s,
                ["--amp-dtype", "bf16", "--vpt", "deep", "--prompt-tokens", "50"],
                None if plan.dry else ["--model", "vit_base_patch16_224", "--input-size", "224"],
            ),
        ),
        (
            Step("bench DeiT-S bf16 channels-last", (35, 6), SAME_CODE),
            lambda s: bench(checker, plan, s, ["--amp-dtype", "bf16", "--channels-last"]),
        ),
        (
            Step("bench DeiT-S bf16 compiled", (150, 30), COMPILE),
            lambda s: bench(checker, plan, s, ["--amp-dtype", "bf16", "--compile"]),
        ),
        (Step("YOLOS --amp", (40, 10)), lambda s: yolos_check(checker, plan, s)),
        (Step("LV-ViT token labels", (60, 12)), lambda s: lvvit_check(checker, plan, s)),
        (Step("loader", (60, 8)), lambda s: loader_check(checker, plan, s)),
        (
            Step("bench DeiT-B bf16", (45, 6), SAME_CODE),
            lambda s: bench(
                checker,
                plan,
                s,
                ["--amp-dtype", "bf16"],
                None if plan.dry else ["--model", "deit_base_patch16_224", "--input-size", "224"],
            ),
        ),
        (
            Step("bench DeiT-S fp16 compiled", (150, 30), COMPILE),
            lambda s: bench(checker, plan, s, ["--amp-dtype", "fp16", "--compile"]),
        ),
    ]
    for step, body in steps:
        checker.run(step, body)
        (args.out / "gpu_check.json").write_text(
            json.dumps({"dry_run": args.dry_run, "steps": [asdict(s) for s in checker.steps]}, indent=1, default=str)
        )
        (args.out / "gpu_check.md").write_text(summary(checker, args))
    failed = [s.name for s in checker.steps if s.status == "FAILED"]
    print(
        f"\n{args.out / 'gpu_check.md'}: {len(checker.steps) - len(failed)} steps ok or skipped, failed: "
        f"{', '.join(failed) or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
