"""TokenSelect against the spec: counts, seeds, a brute-force reference, gradients, modes, validation."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from reference_toe import reference_counts, reference_seeds, reference_token_select

from toe import ToESchedule, TokenSelect, seed_positions

# (R0, keep rates, K, P) -> seeds, sub-steps of each stage, M of each active stage (spec section 4)
REFERENCE_TABLE = [
    ((0.25, (0.5, 0.75, 1.0), 2, 196), 49, ((24, 25), (24, 25)), (98, 147)),
    ((0.2, (0.4, 0.7, 1.0), 2, 196), 39, ((19, 20), (29, 29)), (78, 136)),
    ((0.3, (0.6, 0.8, 1.0), 2, 100), 30, ((15, 15), (10, 10)), (60, 80)),
    ((0.3, (0.6, 0.8, 1.0), 2, 144), 43, ((21, 22), (14, 14)), (86, 114)),
    ((0.3, (0.6, 0.8, 1.0), 2, 196), 58, ((29, 29), (19, 20)), (116, 155)),
    ((0.4, (0.5, 0.75, 1.0), 5, 196), 78, ((3, 3, 3, 3, 7), (9, 9, 9, 9, 13)), (97, 146)),
    ((0.2, (0.4, 0.7, 0.9), 2, 196), 39, ((19, 20), (29, 29), (19, 20)), (78, 136, 175)),
    # the last stage subtracts floor(P * (R0 + (inc1 + inc2))) = 48, the reference's order (not 49)
    ((0.02, (0.04, 0.25, 0.5), 1, 196), 3, ((3,), (41,), (50,)), (6, 47, 97)),
]


@pytest.mark.parametrize(("config", "seeds", "substeps", "kept"), REFERENCE_TABLE)
def test_reference_token_count_table(config, seeds, substeps, kept):
    r0, rates, k, num_patches = config
    counts = ToESchedule([0, 100, 200], rates, r0, k).token_counts(num_patches)
    assert counts.seeds == seeds
    active = [s for s, r in enumerate(rates) if r < 1.0]
    assert tuple(counts.substeps[s] for s in active) == substeps
    assert tuple(counts.kept[s] for s in active) == kept
    if rates[-1] == 1.0:
        assert counts.kept[-1] == num_patches
    assert [counts.kept_in(stage) for stage in range(4)] == [num_patches, *counts.kept]  # stage 0: no reduction


@pytest.mark.parametrize(("config", "seeds", "substeps", "kept"), REFERENCE_TABLE)
def test_output_length_matches_table(config, seeds, substeps, kept):
    r0, rates, k, num_patches = config
    select = TokenSelect([0, 1, 2], rates, r0, k).train()
    x = torch.randn(2, 1 + num_patches, 8)
    for epoch, m in enumerate(kept):
        select.update_current_stage(epoch)
        tokens, index = select(x)
        assert tokens.shape == (2, 1 + m, 8) and index.shape == (2, 1 + m)
        assert index.unique(dim=1).shape[1] == 1 + m  # no position used twice


def test_reference_seeds_follow_float_floor_division():
    assert seed_positions(196, 0.25).tolist() == list(range(0, 196, 4))
    seeds_02 = seed_positions(196, 0.2).tolist()
    assert seeds_02 == list(range(0, 153, 4)) and len(seeds_02) == 39  # 1 // 0.2 == 4, not 5
    assert all(s < 14 * 11 for s in seeds_02)  # the bottom three rows of a 14x14 grid get no seed
    assert seed_positions(196, 0.3).tolist() == list(range(0, 172, 3))  # 58 seeds, step 3


@pytest.mark.parametrize(("num_patches", "r0"), [(196, 0.2), (196, 0.25), (100, 0.3), (144, 0.3), (50, 0.1)])
def test_uniform_seeds_spread_evenly(num_patches, r0):
    seeds = seed_positions(num_patches, r0, "uniform").tolist()
    count = int(num_patches * r0)
    assert len(seeds) == count and seeds == sorted(set(seeds))
    gaps = {b - a for a, b in zip(seeds[:-1], seeds[1:])}
    assert gaps <= {num_patches // count, -(-num_patches // count)}
    assert seeds[0] < num_patches / count and seeds[-1] >= num_patches - num_patches / count
    assert seeds == reference_seeds(num_patches, r0, "uniform")


schedules = (
    st.integers(1, 4)
    .flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(1, 99), min_size=n, max_size=n, unique=True).map(lambda v: sorted(x / 100 for x in v)),
            st.integers(1, 5),
        )
    )
    .filter(lambda s: s[0][0] > 0.02)
)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    schedule=schedules,
    r0_fraction=st.floats(0.05, 0.95),
    stage_pick=st.integers(0, 3),
    num_patches=st.integers(4, 64),
    channels=st.integers(1, 12),
    batch=st.integers(1, 3),
    prefix=st.integers(0, 2),
    distance=st.sampled_from(["cosine", "euclidean", "manhattan"]),
    seeding=st.sampled_from(["reference", "uniform"]),
    seed=st.integers(0, 2**16),
)
def test_matches_brute_force_reference(
    schedule, r0_fraction, stage_pick, num_patches, channels, batch, prefix, distance, seeding, seed
):
    rates, k = schedule
    r0 = round(rates[0] * r0_fraction, 4)
    assume(0 < r0 < rates[0] and int(num_patches * r0) > 0)
    active = [s + 1 for s, r in enumerate(rates) if r < 1.0]
    assume(active)
    stage = active[stage_pick % len(active)]
    select = TokenSelect(list(range(len(rates))), rates, r0, k, distance=distance, seeding=seeding).train()
    select.update_current_stage(stage - 1)
    x = torch.randn(batch, prefix + num_patches, channels, generator=torch.Generator().manual_seed(seed))
    x = x.double()
    tokens, index = select(x, num_prefix_tokens=prefix)
    want_tokens, want_index = reference_token_select(x, rates, r0, k, stage, distance, prefix, seeding)
    assert torch.equal(index, want_index)
    torch.testing.assert_close(tokens, want_tokens)


def test_counts_agree_with_reference_counting():
    for r0, rates, k, num_patches in [c for c, *_ in REFERENCE_TABLE]:
        counts = ToESchedule([0, 1, 2], rates, r0, k).token_counts(num_patches)
        for stage in range(1, len(rates) + 1):
            seeds, sizes = reference_counts(num_patches, rates, r0, k, stage)
            assert counts.seeds == seeds and counts.replayed_substeps(stage) == tuple(sizes)


def test_merge_is_plain_mean_of_assignees():
    # one stage, 4 patches: seed 0 = e0; patch 1 = e1 is the most dissimilar and is added;
    # patch 2 (= 2 e0) merges into the seed, patch 3 (~ e1) merges into patch 1.
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    cls = torch.tensor([7.0, 7.0])
    x = torch.stack([cls, e0, e1, 2 * e0, e1 + 0.1 * e0]).unsqueeze(0)
    select = TokenSelect([0], [0.5], 0.25, 1).train()
    tokens, index = select(x)
    assert index.tolist() == [[0, 1, 2]]
    torch.testing.assert_close(tokens[0], torch.stack([cls, (e0 + 2 * e0) / 2, (e1 + e1 + 0.1 * e0) / 2]))


@pytest.mark.parametrize("distance, added", [("euclidean", 3), ("manhattan", 4)])
def test_distances_add_the_farthest_and_merge_to_the_nearest(distance, added):
    """Distances between L2-normalised tokens (spec section 6, step 1; the reference normalises for every
    distance): the seed (patch 0) points at 0 degrees, patch 1 at 10 degrees with 5 times its length, patch 2
    at 180 degrees, patch 3 at 150 degrees with half the length. By direction, the farthest from the seed is
    patch 2 for the L2 distance (2.0 against 1.93) and patch 3 for L1 (2.37 against 2.0): it is added; patch 1
    merges into the seed (nearest, though 4 units away unnormalised) and the other into the added patch. The
    reference code's max/argmax would invert both choices."""
    angle = torch.deg2rad(torch.tensor([0.0, 10.0, 180.0, 150.0]))
    points = torch.stack([angle.cos(), angle.sin()], dim=1) * torch.tensor([[1.0], [5.0], [1.0], [0.5]])
    x = torch.cat([torch.zeros(1, 2), points]).unsqueeze(0)
    select = TokenSelect([0], [0.5], 0.25, 1, distance=distance).train()
    tokens, index = select(x)
    assert index.tolist() == [[0, 1, added]]
    torch.testing.assert_close(tokens[0, 1:], torch.stack([(points[0] + points[1]) / 2, (points[2] + points[3]) / 2]))


@pytest.mark.parametrize("stage_epoch", [0, 100])
def test_every_input_token_receives_gradient(stage_epoch):
    select = TokenSelect().train()
    select.update_current_stage(stage_epoch)
    x = torch.randn(3, 197, 16, requires_grad=True)
    tokens, _ = select(x)
    (tokens * torch.randn_like(tokens)).sum().backward()
    assert (x.grad.abs().sum(-1) > 0).all()


def test_gradient_is_that_of_the_gathers_and_the_mean():
    x = torch.randn(2, 1 + 36, 5, dtype=torch.double, requires_grad=True)
    select = TokenSelect([0], [0.5], 0.25, 2).train()
    weight = torch.randn(2, 1 + 18, 5, dtype=torch.double)
    (select(x)[0] * weight).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    (reference_token_select(x_ref, [0.5], 0.25, 2, 1)[0] * weight).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)


def test_inactive_stages_and_eval_return_input_untouched():
    x = torch.randn(2, 197, 8)
    select = TokenSelect([5, 100, 200], [0.5, 0.75, 1.0], 0.25, 2).train()
    assert select.stage == 0
    assert select(x)[0] is x and select(x)[1] is None  # stage 0: full-token warm-up
    select.update_current_stage(250)
    assert select.stage == 3 and select(x)[0] is x  # last stage, keep rate 1
    select.update_current_stage(5)
    assert select(x)[1] is not None
    select.eval()
    out, index = select(x)
    assert out is x and index is None


def test_sparse_eval_applies_in_eval_mode():
    select = TokenSelect(sparse_eval=True).eval()
    tokens, index = select(torch.randn(2, 197, 8))
    assert tokens.shape[1] == 99 and index is not None


def test_stage_is_bisect_right_of_expansion_step():
    select = TokenSelect([0, 100, 200], [0.5, 0.75, 1.0], 0.25, 2)
    assert [select.update_current_stage(e) for e in (0, 99, 100, 199, 200, 299)] == [1, 1, 2, 2, 3, 3]
    assert TokenSelect([5, 10], [0.5, 1.0], 0.25, 2).stage == 0


@pytest.mark.parametrize("prefix", [0, 1, 2, 5])
def test_prefix_tokens_untouched(prefix):
    x = torch.randn(2, prefix + 64, 8)
    tokens, index = TokenSelect().train()(x, num_prefix_tokens=prefix)
    assert torch.equal(tokens[:, :prefix], x[:, :prefix])
    assert index[:, :prefix].tolist() == [list(range(prefix))] * 2
    assert (index[:, prefix:] >= prefix).all()
    assert tokens.shape[1] == prefix + 32


def test_no_parameters_or_buffers():
    select = TokenSelect()
    select(torch.randn(1, 197, 8))
    assert select.state_dict() == {} and list(select.parameters()) == [] and list(select.buffers()) == []


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_and_autocast(dtype):
    x = torch.randn(4, 197, 32)
    select = TokenSelect().train()
    want_tokens, want_index = select(x.to(dtype).float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens, index = select(x.to(dtype))
    assert tokens.dtype == dtype and torch.equal(index, want_index)
    torch.testing.assert_close(tokens.float(), want_tokens, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "manhattan"])
def test_zero_norm_tokens_are_safe(distance):
    x = torch.randn(2, 197, 16, dtype=torch.double)
    x[:, 1::3] = 0.0  # a third of the patches (seeds among them) are exactly zero
    select = TokenSelect(distance=distance).train()
    tokens, index = select(x)
    assert torch.isfinite(tokens).all()
    assert all(len(set(row.tolist())) == 99 and max(row.tolist()) <= 196 for row in index)
    if distance == "cosine":  # a zero token's cosine to anything is exactly 0: ties both codes break alike
        want_tokens, want_index = reference_token_select(x, [0.5, 0.75, 1.0], 0.25, 2, 1, distance)
        assert torch.equal(index, want_index)
        torch.testing.assert_close(tokens, want_tokens)
    # (the distances of a normalised zero token to unit tokens are all 1 up to rounding, so which of those
    # near-ties wins depends on the summation order; the random-data comparison above covers these distances)


def test_seeds_are_cached_per_size_and_device():
    select = TokenSelect().train()
    select(torch.randn(1, 197, 4))
    first = select._seed_cache[(196, torch.device("cpu"))]
    select(torch.randn(1, 197, 4))
    select(torch.randn(1, 65, 4))
    assert select._seed_cache[(196, torch.device("cpu"))] is first and len(select._seed_cache) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"expansion_step": [0, 100], "keep_rate": [0.5, 0.75, 1.0]}, "same number of values"),
        ({"expansion_step": [0, 200, 100]}, "strictly ascending"),
        ({"expansion_step": [-1, 100, 200]}, ">= 0"),
        ({"keep_rate": [0.5, 0.75, 1.5]}, "(0, 1]"),
        ({"keep_rate": [0.0, 0.75, 1.0]}, "(0, 1]"),
        ({"keep_rate": [0.75, 0.5, 1.0]}, "strictly increasing"),
        ({"initialization_keep_rate": 0.5}, "initialization_keep_rate must lie in (0, 0.5)"),
        ({"initialization_keep_rate": 0.0}, "initialization_keep_rate"),
        ({"expansion_multiple_stage": 0}, "expansion_multiple_stage"),
        ({"distance": "cosin"}, "distance must be one of"),
        ({"seeding": "random"}, "seeding must be one of"),
        ({"reduction": "merge"}, "reduction must be one of"),
        ({"expansion_step": [], "keep_rate": []}, "at least one"),
    ],
)
def test_validation_errors_name_the_parameters(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        TokenSelect(**kwargs)
    assert "--" not in str(raised.value)  # the library names its parameters; the command line, its flags


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--initialization-keep-rate", "0.6"],
            "--initialization-keep-rate must lie in (0, 0.5) (below the first --keep-rate)",
        ),
        (["--expansion-step", "0", "100"], "--expansion-step and --keep-rate need the same number of values"),
        (["--expansion-multiple-stage", "0"], "--expansion-multiple-stage must be a whole number"),
    ],
)
def test_the_command_line_names_its_flags_in_the_same_errors(flags, message):
    from toe.errors import UserError
    from toe.options import ArgumentParser, add_toe_arguments, schedule_from_args

    parser = ArgumentParser()
    add_toe_arguments(parser, "deit")
    with pytest.raises(UserError, match=re.escape(message)):
        schedule_from_args(parser.parse_args(["--toe", *flags]))
