"""One-paragraph description of a model's ToE schedule, printed when training starts."""

from __future__ import annotations

from typing import cast

from torch import nn

from ..integration import has_toe, prefix_tokens
from ..options import flag_names
from ..schedule import REDUCTIONS
from ..token_select import TokenSelect


def describe_toe(model: nn.Module, epochs: int) -> str:
    """E.g. 'ToE: stage 1 (epochs 0-99) 98 of 196 patch tokens after block 0; ...' or the baseline note."""
    if not has_toe(model):
        return "ToE: off (full-token training)"
    select = cast(TokenSelect, model.token_select)  # has_toe: there is one
    schedule = select.schedule
    warning = schedule.unreached_warning(epochs)
    return _describe(model, select, schedule, epochs) + (f"\n{flag_names(warning)}" if warning else "")


def _describe(model: nn.Module, select, schedule, epochs: int) -> str:
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is None:  # the input size changes from batch to batch (YOLOS): the keep rates
        parts = [
            f"stage {stage} (epochs {first}-{end - 1}) "
            + (f"{schedule.keep_rate[stage - 1]:.0%} of the patch tokens" if schedule.is_active(stage) else "all")
            for stage, first, end in schedule.stage_epochs(epochs)
        ]
        return (
            f"ToE: {'; '.join(parts)} after block 0, of every batch's patch grid, plus the class token and the "
            f"{model.num_extra_tokens} [DET] tokens, token reduction {REDUCTIONS[select.reduction]} "
            f"(seeds {schedule.initialization_keep_rate:.0%}, {select.distance}, {select.seeding} seeding, "
            f"{'sparse' if select.sparse_eval else 'full-token'} evaluation)"
        )
    num_patches = patch_embed.num_patches
    prefix, prompts = cast(int, model.num_prefix_tokens), prefix_tokens(model) - cast(int, model.num_prefix_tokens)
    counts = schedule.token_counts(num_patches)
    parts = []
    for stage, first, end in schedule.stage_epochs(epochs):
        parts.append(f"stage {stage} (epochs {first}-{end - 1}) {counts.kept_in(stage)} of {num_patches} patch tokens")
    return (
        f"ToE: {'; '.join(parts)} after block 0, plus the {prefix} prefix token{'s' if prefix != 1 else ''}"
        + (f" and {prompts} prompt tokens" if prompts else "")
        + ", "
        f"token reduction {REDUCTIONS[select.reduction]} "
        f"(seeds {counts.seeds}, {select.distance}, {select.seeding} seeding, "
        f"{'sparse' if select.sparse_eval else 'full-token'} evaluation)"
    )
