"""The ToE stage schedule: argument validation, stage from epoch, and token counts per stage.

Pure Python, no tensors. Every recipe and report derives its numbers from here, so the arithmetic
follows the reference exactly (float subtraction of keep rates, integer truncation), see
docs/token-expansion-spec.md sections 3-5.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

DISTANCES = ("cosine", "euclidean", "manhattan")
SEEDINGS = ("reference", "uniform")
# token-reduction variants (what becomes of the tokens left out) and how reports name them; every
# variant keeps the same number M of tokens per stage, so their compute is the same
REDUCTIONS = {
    "toe": "toe (the paper: tokens left out are merged into the kept ones)",
    "toe-drop": "toe-drop (ToE's selection, tokens left out are discarded)",
    "random": "random (a random subset of the same size per image and step)",
}


@dataclass(frozen=True)
class TokenCounts:
    """Token counts of a schedule for a grid of ``num_patches`` patch tokens.

    ``substeps[s]`` lists the sizes of the greedy sub-steps that stage ``s + 1`` adds on top of the
    stages before it; ``kept[s]`` is the number M of patch tokens fed to blocks 1.. in stage ``s + 1``
    (``num_patches`` when that stage is inactive, i.e. its keep rate is 1.0).
    """

    num_patches: int
    seeds: int
    substeps: tuple[tuple[int, ...], ...]
    kept: tuple[int, ...]

    def kept_in(self, stage: int) -> int:
        """Patch tokens fed to blocks 1.. in ``stage``: all of them before the first stage (stage 0) and in a
        stage whose keep rate is 1.0."""
        return self.kept[stage - 1] if stage >= 1 else self.num_patches

    def replayed_substeps(self, stage: int) -> tuple[int, ...]:
        """All sub-step sizes run in ``stage`` (>= 1): every earlier stage's expansion is replayed."""
        return tuple(m for s in range(stage) for m in self.substeps[s])


@dataclass(frozen=True)
class ToESchedule:
    """Validated ToE hyper-parameters (the command-line flags of every recipe).

    Args:
        expansion_step: epoch at which each stage starts, strictly ascending, >= 0.
        keep_rate: cumulative fraction of patch tokens kept in each stage, strictly ascending in (0, 1].
        initialization_keep_rate: fraction of patch tokens taken as seeds, 0 < R0 < keep_rate[0].
        expansion_multiple_stage: number of greedy sub-steps K each stage's expansion is split into.
    """

    expansion_step: tuple[int, ...]
    keep_rate: tuple[float, ...]
    initialization_keep_rate: float
    expansion_multiple_stage: int

    def __init__(
        self,
        expansion_step: Sequence[int],
        keep_rate: Sequence[float],
        initialization_keep_rate: float,
        expansion_multiple_stage: int,
    ) -> None:
        steps, rates = tuple(expansion_step), tuple(float(r) for r in keep_rate)
        validate_schedule(steps, rates, initialization_keep_rate, expansion_multiple_stage)
        object.__setattr__(self, "expansion_step", tuple(int(s) for s in steps))
        object.__setattr__(self, "keep_rate", rates)
        object.__setattr__(self, "initialization_keep_rate", float(initialization_keep_rate))
        object.__setattr__(self, "expansion_multiple_stage", int(expansion_multiple_stage))

    @property
    def num_stages(self) -> int:
        return len(self.expansion_step)

    def stage(self, epoch: int) -> int:
        """Stage of ``epoch``: how many stage starts are <= epoch (0 = before the first stage)."""
        return bisect.bisect_right(self.expansion_step, epoch)

    def is_active(self, stage: int) -> bool:
        """ToE changes the tokens in ``stage``: a stage >= 1 whose keep rate is below 1."""
        return stage >= 1 and self.keep_rate[stage - 1] < 1.0

    def stage_epochs(self, epochs: int) -> list[tuple[int, int, int]]:
        """(stage, first epoch, end epoch exclusive) of every stage that occurs in ``epochs`` epochs."""
        starts = [0] + [s for s in self.expansion_step if 0 < s < epochs]
        bounds = sorted(set(starts)) + [epochs]
        return [(self.stage(a), a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]

    def unreached_warning(self, epochs: int) -> str | None:
        """A warning when stages start at or after the end of a run of ``epochs`` epochs (the run never trains
        in them, e.g. the paper's 0 100 200 over 100 epochs never reaches full tokens), else None."""
        late = [(stage, start) for stage, start in enumerate(self.expansion_step, start=1) if start >= epochs]
        if not late:
            return None
        listed = ", ".join(f"stage {stage} (epoch {start})" for stage, start in late)
        last = self.stage(epochs - 1)
        ends = f"keep rate {self.keep_rate[last - 1]}" if last else "no reduction"
        return (
            f"warning: {listed} of expansion_step {' '.join(map(str, self.expansion_step))} start after the run's "
            f"{epochs} epochs: the run never trains in them and ends in stage {last} ({ends})"
        )

    def token_counts(self, num_patches: int) -> TokenCounts:
        """Seeds, sub-step sizes and kept tokens per stage for ``num_patches`` patch tokens (spec 4); a
        ValueError when the schedule keeps no token of so few patches (no seed)."""
        if num_patches < 1:
            raise ValueError(f"the number of patch tokens must be at least 1, got {num_patches}")
        r0, rates, k = self.initialization_keep_rate, self.keep_rate, self.expansion_multiple_stage
        seeds = math.floor(num_patches * r0)
        if seeds < 1:
            fix = (
                f"raise it to at least {1 / num_patches:.4g}"
                if 1 / num_patches < rates[0]
                else "the model has too few patch tokens for ToE (use a larger input or a smaller patch)"
            )
            raise ValueError(
                f"ToE would keep no patch token: initialization_keep_rate {r0} of {num_patches} patch "
                f"token{'s' if num_patches > 1 else ''} gives 0 seeds; {fix}"
            )
        increments = [rates[0] - r0] + [rates[s] - rates[s - 1] for s in range(1, len(rates))]
        substeps, kept = [], []
        total = seeds
        for s, increment in enumerate(increments):
            if s == len(increments) - 1:
                # the reference's float arithmetic: R0 + sum(increments before s), the increments summed first
                before = r0 + sum(increments[:s])
                added = math.floor(num_patches * rates[s]) - math.floor(num_patches * before)
            else:
                added = math.floor(num_patches * increment)
            added = max(0, min(added, num_patches - total))
            stage_substeps = _split(added, k)
            substeps.append(stage_substeps)
            total += added
            kept.append(total if rates[s] < 1.0 else num_patches)
        return TokenCounts(num_patches, seeds, tuple(substeps), tuple(kept))


def _split(added: int, k: int) -> tuple[int, ...]:
    """Split ``added`` tokens into ``k`` sub-steps: k-1 of floor(added/k), the last takes the rest."""
    base = added // k
    return tuple([base] * (k - 1) + [added - base * (k - 1)])


def validate_schedule(
    expansion_step: Sequence[int],
    keep_rate: Sequence[float],
    initialization_keep_rate: float,
    expansion_multiple_stage: int,
) -> None:
    """Raise one ValueError naming the parameter for the first mistake in a ToE schedule (the command line
    turns the parameter names into its flags, see ``toe.options``)."""
    if len(expansion_step) == 0:
        raise ValueError("expansion_step needs at least one epoch")
    if len(expansion_step) != len(keep_rate):
        raise ValueError(
            f"expansion_step and keep_rate need the same number of values, "
            f"got {len(expansion_step)} and {len(keep_rate)}"
        )
    if any(not float(s).is_integer() or s < 0 for s in expansion_step):
        raise ValueError(f"expansion_step must be whole epochs >= 0, got {list(expansion_step)}")
    if any(b <= a for a, b in zip(expansion_step[:-1], expansion_step[1:])):
        raise ValueError(f"expansion_step must be strictly ascending, got {list(expansion_step)}")
    if any(not 0.0 < r <= 1.0 for r in keep_rate):
        raise ValueError(f"keep_rate values must lie in (0, 1], got {list(keep_rate)}")
    if any(b <= a for a, b in zip(keep_rate[:-1], keep_rate[1:])):
        raise ValueError(f"keep_rate must be strictly increasing, got {list(keep_rate)}")
    if not 0.0 < initialization_keep_rate < keep_rate[0]:
        raise ValueError(
            f"initialization_keep_rate must lie in (0, {keep_rate[0]}) (below the first keep_rate), "
            f"got {initialization_keep_rate}"
        )
    if (
        isinstance(expansion_multiple_stage, bool)
        or not float(expansion_multiple_stage).is_integer()
        or (expansion_multiple_stage < 1)
    ):
        raise ValueError(f"expansion_multiple_stage must be a whole number >= 1, got {expansion_multiple_stage}")
