"""apply_toe / remove_toe on real timm models (tiny sizes): keys, eval equality, training behaviour."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from helpers import tiny_vit

from toe import TokenSelect, apply_toe, has_toe, remove_toe

MODELS = {
    "deit_tiny_patch16_224": 1,
    "deit_tiny_distilled_patch16_224": 2,
    "deit3_small_patch16_224": 1,
    "vit_medium_patch16_reg4_gap_256": 4,
}


def tiny(name: str, **kwargs) -> torch.nn.Module:
    return tiny_vit(name, seed=0, **{"num_classes": 10, **kwargs})


@pytest.mark.parametrize(("name", "prefix"), MODELS.items())
def test_keys_unchanged_and_eval_bit_identical(name, prefix):
    plain = tiny(name).eval()
    model = apply_toe(copy.deepcopy(plain))
    assert model.num_prefix_tokens == prefix
    assert list(model.state_dict()) == list(plain.state_dict())
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(model(x), plain(x))
    assert model.token_select.last_index is None
    plain.load_state_dict(model.state_dict())  # a ToE checkpoint loads into plain timm, and back
    model.load_state_dict(plain.state_dict())


@pytest.mark.parametrize(("name", "prefix"), MODELS.items())
def test_training_forward_reduces_tokens_after_block_zero(name, prefix):
    model = apply_toe(tiny(name)).train()
    seen = []
    model.blocks[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    model.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    out = model(torch.randn(2, 3, 32, 32))
    out = out[0] if isinstance(out, tuple) else out
    out.sum().backward()
    assert seen == [prefix + 64, prefix + 32]  # block 0 sees all 64 patches, block 1 half of them
    assert model.token_select.last_index.shape == (2, prefix + 32)
    assert model.token_select.last_index[:, :prefix].tolist() == [list(range(prefix))] * 2
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)


def test_distilled_model_keeps_both_prefix_tokens_in_training():
    model = apply_toe(tiny("deit_tiny_distilled_patch16_224")).train()
    model.set_distilled_training(True)
    cls_logits, dist_logits = model(torch.randn(2, 3, 32, 32))
    assert cls_logits.shape == dist_logits.shape == (2, 10)
    assert model.token_select.last_index[:, :2].tolist() == [[0, 1], [0, 1]]


def test_dynamic_image_size_adapts_token_counts():
    model = apply_toe(tiny("vit_tiny_patch16_224", dynamic_img_size=True)).train()
    model(torch.randn(2, 3, 48, 48))  # 12 x 12 = 144 patches -> 72 kept
    assert model.token_select.last_index.shape == (2, 1 + 72)
    model(torch.randn(2, 3, 32, 32))
    assert model.token_select.last_index.shape == (2, 1 + 32)


def test_gradient_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for checkpointing in (False, True):
        model = apply_toe(tiny("deit_tiny_patch16_224")).train()
        model.set_grad_checkpointing(checkpointing)
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for plain_grad, checkpointed_grad in zip(*grads):
        torch.testing.assert_close(plain_grad, checkpointed_grad)


def test_assigning_token_select_replaces_the_selector():
    model = apply_toe(tiny("deit_tiny_patch16_224")).train()
    model.token_select = TokenSelect([0], [0.25], 0.125, 2)
    model(torch.randn(1, 3, 32, 32))
    assert model.token_select.last_index.shape == (1, 1 + 16)
    apply_toe(model)  # applying again keeps the selector and does not stack hooks
    model(torch.randn(1, 3, 32, 32))
    assert model.token_select.last_index.shape == (1, 1 + 16)
    assert len(model.blocks[0]._forward_hooks) == 1


def test_the_hook_holds_the_selector_and_the_prefix_count_only():
    model = apply_toe(tiny("vit_medium_patch16_reg4_gap_256"))
    (hook,) = model.blocks[0]._forward_hooks.values()
    assert vars(hook) == {"selector": model.token_select, "num_prefix_tokens": 4}
    replacement = TokenSelect([0], [0.25], 0.125, 2)
    model.token_select = replacement  # the assignment re-points the hook
    assert hook.selector is replacement


def test_a_toe_model_and_its_ema_are_freed_without_the_garbage_collector():
    """No reference cycle: reference counting alone frees a trained ToE model and its EMA copy."""
    import gc
    import weakref

    from timm.utils import ModelEmaV3

    gc.collect()
    gc.disable()
    try:
        model = apply_toe(tiny("deit_tiny_patch16_224")).train()
        ema = ModelEmaV3(model, decay=0.9)
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        ema.update(model)
        ema.module(torch.randn(1, 3, 32, 32))
        alive = [weakref.ref(o) for o in (model, model.token_select, ema.module, ema.module.token_select)]
        del model, ema
        assert [ref() is None for ref in alive] == [True] * 4
    finally:
        gc.enable()


def test_deepcopy_drives_its_own_selector():
    model = apply_toe(tiny("deit_tiny_patch16_224")).train()
    ema = copy.deepcopy(model)
    ema.token_select.update_current_stage(250)  # last stage: full tokens
    ema(torch.randn(1, 3, 32, 32))
    model(torch.randn(1, 3, 32, 32))
    assert ema.token_select.last_index is None and model.token_select.last_index.shape == (1, 33)


def test_remove_toe_restores_the_plain_model():
    model = apply_toe(tiny("deit_tiny_patch16_224"))
    remove_toe(model)
    assert not has_toe(model) and not hasattr(model, "token_select")
    seen = []
    model.blocks[1].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    model.train()(torch.randn(1, 3, 32, 32))
    assert seen == [65]


def test_ema_of_a_toe_model_is_full_token_in_eval():
    from timm.utils import ModelEmaV3

    model = apply_toe(tiny("deit_tiny_patch16_224")).train()
    ema = ModelEmaV3(model, decay=0.9)
    x = torch.randn(2, 3, 32, 32)
    plain = remove_toe(copy.deepcopy(ema.module)).eval()
    assert torch.equal(ema.module(x), plain(x)) and ema.module.token_select.last_index is None


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: timm.create_model("resnet18", num_classes=10), TypeError),
        (lambda: timm.create_model("vit_relpos_small_patch16_224", img_size=32, patch_size=4, depth=2), TypeError),
        (lambda: tiny("deit_tiny_patch16_224", patch_drop_rate=0.5), ValueError),
        (lambda: tiny("deit_tiny_patch16_224", depth=1), ValueError),
    ],
)
def test_unsupported_models_get_a_clear_error(build, error):
    with pytest.raises(error, match="ToE"):
        apply_toe(build())
