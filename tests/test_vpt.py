"""Visual Prompt Tuning as a plug-in (toe.vpt): the forward matches a slow loop written from the VPT paper,
prompts are prefix tokens for ToE in every token-reduction variant, only prompts and head train, the
plug-in composes with ToE in either order and comes off again."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import tiny_vit

from toe import TokenSelect, apply_toe, apply_vpt, has_vpt, remove_toe, remove_vpt
from toe.schedule import REDUCTIONS

N = 3  # prompt tokens


def selector(reduction: str = "toe") -> TokenSelect:
    """Stage 1 keeps 32 of the 64 patches (seeds 16, two sub-steps of 8)."""
    select = TokenSelect([0, 1], [0.5, 1.0], 0.25, 2, reduction=reduction)
    select.update_current_stage(0)
    return select


def slow_vpt_forward(model, images, deep: bool, select: TokenSelect | None = None) -> torch.Tensor:
    """VPT as the paper writes it, block by block: embed (class token + position embedding), insert the
    prompts after the class token, for every block after the first replace the prompt tokens by that block's
    (VPT-deep), run the block; ToE after block 0 on the patch tokens, the prompts with the prefix; final norm,
    the class token into the head."""
    prompts = model.vpt
    x = model._pos_embed(model.patch_embed(images))
    batch = x.shape[0]
    x = torch.cat((x[:, :1], prompts.dropout(prompts.prompt_embeddings.expand(batch, -1, -1)), x[:, 1:]), dim=1)
    for index, block in enumerate(model.blocks):
        if deep and index > 0:
            deep_prompts = prompts.dropout(prompts.deep_prompt_embeddings[index - 1].expand(batch, -1, -1))
            x = torch.cat((x[:, :1], deep_prompts, x[:, 1 + N :]), dim=1)
        x = block(x)
        if index == 0 and select is not None:
            x, _ = select(x, num_prefix_tokens=1 + N)
    return model.head(model.norm(x)[:, 0])


def prompted(deep: bool, seed: int = 0, toe: TokenSelect | None = None):
    model = tiny_vit(seed=seed, num_classes=5)
    apply_vpt(model, num_tokens=N, deep=deep, dropout=0.0)
    if toe is not None:
        apply_toe(model, toe)
    return model


@pytest.mark.parametrize("deep", [False, True])
@pytest.mark.parametrize("with_toe", [False, True])
def test_forward_matches_the_papers_block_loop(deep, with_toe):
    images = torch.randn(4, 3, 32, 32)
    model = prompted(deep, toe=selector() if with_toe else None).train()
    reference = copy.deepcopy(model)
    remove_toe(reference)
    for module in (reference.norm, *reference.blocks):  # no hooks: the slow loop does it all by hand
        module._forward_pre_hooks.clear()
        module._forward_hooks.clear()
    expected = slow_vpt_forward(reference, images, deep, selector() if with_toe else None)
    torch.testing.assert_close(model(images), expected, rtol=0, atol=0)
    assert model.vpt.prompt_embeddings.shape == (1, N, 32)
    if deep:
        assert model.vpt.deep_prompt_embeddings.shape == (2, N, 32)  # blocks 1 and 2 of 3
    else:
        assert not hasattr(model.vpt, "deep_prompt_embeddings")


def test_eval_is_the_frozen_model_with_the_prompts_and_full_tokens():
    images = torch.randn(4, 3, 32, 32)
    with_toe = prompted(True, toe=selector()).eval()
    without = prompted(True).eval()
    assert torch.equal(with_toe(images), without(images))  # ToE is off in eval mode, the prompts stay


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("deep", [False, True])
def test_prompts_are_never_selected_merged_or_dropped(reduction, deep):
    model = prompted(deep, toe=selector(reduction)).train()
    seen = {}
    model.blocks[0].register_forward_hook(lambda m, a, out: seen.setdefault("block0", out))
    model.blocks[1].register_forward_hook(lambda m, a, out: seen.setdefault("block1_in", a[0]))
    model(torch.randn(4, 3, 32, 32))
    index = model.token_select.last_index
    assert index.shape == (4, 1 + N + 32)
    assert torch.equal(index[:, : 1 + N], torch.arange(1 + N).expand(4, -1))  # class token and prompts in front
    assert bool((index[:, 1 + N :] >= 1 + N).all())  # every other output token is a patch
    block1_input = seen["block1_in"]
    if deep:  # block 1's own prompts replace the prompt outputs of block 0
        assert torch.equal(block1_input[:, 1 : 1 + N], model.vpt.deep_prompt_embeddings[0].expand(4, -1, -1))
    else:  # the prompt outputs of block 0 pass untouched (no patch merged into them)
        assert torch.equal(block1_input[:, : 1 + N], seen["block0"][:, : 1 + N])


def test_the_order_of_apply_toe_and_apply_vpt_does_not_matter():
    images = torch.randn(4, 3, 32, 32)
    vpt_first = prompted(True, seed=1, toe=selector()).train()
    toe_first = apply_toe(tiny_vit(seed=1, num_classes=5), selector())
    apply_vpt(toe_first, num_tokens=N, deep=True, dropout=0.0)
    toe_first.load_state_dict(vpt_first.state_dict())  # the same prompts
    assert torch.equal(toe_first.train()(images), vpt_first(images))
    assert toe_first.token_select.last_index.shape == (4, 1 + N + 32)


def test_only_prompts_and_head_train():
    model = prompted(True, toe=selector()).train()
    model.vpt.dropout.p = 0.1
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("vpt.", "head."))}
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert sorted(trainable) == ["head.bias", "head.weight", "vpt.deep_prompt_embeddings", "vpt.prompt_embeddings"]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("vpt.", "head."))}
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # the backbone is bit-identical
    assert all(not torch.equal(after[k], v) for k, v in before.items())  # prompts (every block's) and head moved


def test_state_dict_loads_back_into_a_prompted_model_and_the_plug_in_comes_off():
    images = torch.randn(2, 3, 32, 32)
    plain = tiny_vit(seed=2, num_classes=5).eval()
    plain.blocks[0].attn.qkv.weight.requires_grad = False  # a choice of the user's, restored by remove_vpt
    wanted = {name: p.requires_grad for name, p in plain.named_parameters()}
    expected = plain(images)
    model = apply_vpt(copy.deepcopy(plain), num_tokens=N, deep=True)
    state = model.state_dict()
    assert set(state) == set(plain.state_dict()) | {"vpt.prompt_embeddings", "vpt.deep_prompt_embeddings"}
    other = apply_vpt(tiny_vit(seed=3, num_classes=5), num_tokens=N, deep=True)
    other.load_state_dict(state)
    assert torch.equal(other.eval()(images), model.eval()(images))
    apply_toe(model, selector())
    remove_vpt(model)
    assert not has_vpt(model) and set(model.state_dict()) == set(plain.state_dict())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == wanted
    assert torch.equal(model.eval()(images), expected)
    model.train()(images)  # ToE stayed, with the plain prefix again
    assert model.token_select.last_index.shape == (2, 1 + 32)


def test_a_deep_copy_prompts_with_its_own_prompts():
    """timm's ModelEma deep-copies the model: the copy's hooks must use the copy's prompts."""
    model = prompted(True).eval()
    twin = copy.deepcopy(model)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        twin.vpt.prompt_embeddings.add_(1.0)
    assert not torch.equal(twin(images), model(images))
    remove_vpt(twin)
    assert has_vpt(model)
    assert len(model.blocks[0]._forward_pre_hooks) == 1  # the copy's removal left the original's hooks


def test_bad_arguments_and_models_are_refused():
    with pytest.raises(ValueError, match="num_tokens must be a positive integer"):
        apply_vpt(tiny_vit(), num_tokens=0)
    with pytest.raises(ValueError, match="dropout"):
        apply_vpt(tiny_vit(), num_tokens=2, dropout=1.0)
    with pytest.raises(TypeError, match="VisionTransformer"):
        apply_vpt(torch.nn.Linear(2, 2), num_tokens=2)
    model = apply_vpt(tiny_vit(), num_tokens=2)
    with pytest.raises(ValueError, match="already applied"):
        apply_vpt(model, num_tokens=2)
