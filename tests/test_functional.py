"""toe.functional: the algorithm as functions on tensors, without TokenSelect's state (stage, caches)."""

from __future__ import annotations

import pytest
import torch
from reference_toe import reference_token_select

from toe import TokenSelect
from toe.functional import (
    gather_tokens,
    initial_tokens,
    kept_slots,
    merge_tokens,
    random_tokens,
    seed_positions,
    select_tokens,
)
from toe.schedule import ToESchedule


def test_merge_averages_every_patch_into_its_slot_and_keeps_the_prefix():
    # 1 prefix token, 4 patches; patches 0 and 3 kept (slots 0 and 1), patch 1 merges into 0, patch 2 into 1
    x = torch.tensor([[[9.0], [1.0], [2.0], [4.0], [8.0]]])
    kept, slot = torch.tensor([[0, 3]]), torch.tensor([[0, 0, 1, 1]])
    tokens, index = merge_tokens(x, kept, slot, num_prefix_tokens=1)
    assert tokens.tolist() == [[[9.0], [1.5], [6.0]]]
    assert index.tolist() == [[0, 1, 4]]


def test_gather_keeps_the_prefix_and_the_kept_patches_only():
    x = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)  # 2 prefix tokens, 4 patches
    kept = torch.tensor([[3, 0], [1, 2]])
    tokens, index = gather_tokens(x, kept, num_prefix_tokens=2)
    assert index.tolist() == [[0, 1, 5, 2], [0, 1, 3, 4]]
    assert torch.equal(tokens, torch.stack([x[b, index[b]] for b in range(2)]))


def test_selection_and_merge_are_toe_and_what_token_select_runs():
    """The functions reproduce the brute-force reference and TokenSelect's training forward."""
    torch.manual_seed(0)
    x = torch.randn(2, 1 + 64, 16)
    schedule = ToESchedule((0, 100, 200), (0.5, 0.75, 1.0), 0.25, 2)
    substeps = schedule.token_counts(64).replayed_substeps(2)  # stage 2: 16 seeds + 16 + 16 tokens kept
    seeds, rest = initial_tokens(64, 0.25)
    kept, slot = select_tokens(x[:, 1:], seeds, rest, substeps, "cosine")
    tokens, index = merge_tokens(x, kept, slot, num_prefix_tokens=1)
    assert kept.shape == (2, 48) and slot.shape == (2, 64)
    assert torch.equal(kept[:, : len(seeds)], seeds.expand(2, -1))
    assert torch.equal(slot.gather(1, kept), torch.arange(48).expand(2, -1))  # every kept patch is its own slot
    want_tokens, want_index = reference_token_select(x, [0.5, 0.75, 1.0], 0.25, 2, 2, "cosine")
    assert torch.equal(index, want_index)
    torch.testing.assert_close(tokens, want_tokens)

    select = TokenSelect((0, 100, 200), (0.5, 0.75, 1.0), 0.25, 2).train()
    select.update_current_stage(150)
    module_tokens, module_index = select(x)
    assert torch.equal(module_tokens, tokens) and torch.equal(module_index, index)
    assert select.last_index is module_index


def test_gradients_reach_every_input_token_through_the_merge():
    x = torch.randn(1, 1 + 16, 8, requires_grad=True)
    seeds, rest = initial_tokens(16, 0.25)
    kept, slot = select_tokens(x[:, 1:], seeds, rest, (2, 2))
    tokens, _ = merge_tokens(x, kept, slot)
    tokens.sum().backward()
    assert (x.grad.abs().sum(-1) > 0).all()


def test_random_tokens_are_a_subset_drawn_from_the_torch_seed():
    torch.manual_seed(4)
    kept = random_tokens(3, 64, 20)
    torch.manual_seed(4)
    assert torch.equal(random_tokens(3, 64, 20), kept)
    assert kept.shape == (3, 20) and all(len(set(row.tolist())) == 20 for row in kept)
    assert 0 <= kept.min() and kept.max() < 64


def test_kept_slots_mark_the_discarded_patches():
    slot = kept_slots(torch.tensor([[2, 0]]), 4)
    assert slot.tolist() == [[1, -1, 0, -1]]


def test_initial_tokens_split_the_patches_into_seeds_and_the_rest():
    seeds, rest = initial_tokens(196, 0.2)
    assert torch.equal(seeds, seed_positions(196, 0.2))
    assert sorted(seeds.tolist() + rest.tolist()) == list(range(196))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: select_tokens(torch.randn(1, 4, 2), *initial_tokens(4, 0.25), (1,), "cosin"),
            "distance must be one of",
        ),
        (lambda: seed_positions(16, 0.25, "random"), "seeding must be one of"),
    ],
)
def test_errors_name_the_parameter(call, message):
    with pytest.raises(ValueError, match=message):
        call()
