"""Crossing a resolution change: position embedding and AdamW moments resampled, training goes on."""

from __future__ import annotations

import pytest
import timm
import torch
from helpers import tiny_vit
from timm.layers import resample_abs_pos_embed
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3

from toe.errors import UserError
from toe.recipes.resample import resample_checkpoint


def vit(img_size: int) -> torch.nn.Module:
    return tiny_vit(seed=0, img_size=img_size, depth=2, num_classes=5)


def train(model, optimizer, size: int, steps: int) -> list[float]:
    """A few AdamW steps on random data at ``size`` px; returns the losses."""
    generator = torch.Generator().manual_seed(size)
    losses = []
    for _ in range(steps):
        images = torch.randn(8, 3, size, size, generator=generator)
        labels = torch.randint(0, 5, (8,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def trained_state(size: int = 16) -> tuple[dict, torch.nn.Module]:
    """A checkpoint-like state (model, EMA, optimizer) after 3 steps at ``size`` px."""
    model = vit(size)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-2, weight_decay=0.05)
    ema = ModelEmaV3(model, decay=0.9)
    train(model, optimizer, size, 3)
    ema.update(model)
    return {
        "model": model.state_dict(),
        "model_ema": ema.module.state_dict(),
        "optimizer": optimizer.state_dict(),
    }, model


def pos_embed_moments(optimizer_state: dict, model: torch.nn.Module) -> dict:
    """The optimizer state of ``model.pos_embed`` (packed index: order of create_optimizer_v2's groups)."""
    params = [p for group in create_optimizer_v2(model, opt="adamw").param_groups for p in group["params"]]
    return optimizer_state["state"][next(i for i, p in enumerate(params) if p is model.pos_embed)]


def efficienttrain_resample(tensor: torch.Tensor, old: int, new: int) -> torch.Tensor:
    """EfficientTrain's update_ckpt: the class token's row kept, the g x g grid resampled bilinearly."""
    grid = tensor[:, 1:].transpose(1, 2).reshape(1, -1, old, old)
    grid = torch.nn.functional.interpolate(grid, size=(new, new), mode="bilinear", align_corners=False)
    return torch.cat((tensor[:, :1], grid.flatten(2).transpose(1, 2)), dim=1)


@pytest.mark.parametrize(("old_size", "new_size"), [(16, 24), (24, 16)])
def test_embedding_and_moments_are_resampled_as_efficienttrain_does(old_size, new_size):
    """Bilinear without antialiasing (up and down), for the model, its EMA and both AdamW moments."""
    state, old_model = trained_state(old_size)
    old_moments = {k: v.clone() for k, v in pos_embed_moments(state["optimizer"], old_model).items()}
    old_pos, old_ema_pos = state["model"]["pos_embed"].clone(), state["model_ema"]["pos_embed"].clone()
    model = vit(new_size)
    resample_checkpoint(state, model, create_optimizer_v2(model, opt="adamw"), "test")
    g, h = old_size // 4, new_size // 4
    torch.testing.assert_close(state["model"]["pos_embed"], efficienttrain_resample(old_pos, g, h))
    torch.testing.assert_close(state["model_ema"]["pos_embed"], efficienttrain_resample(old_ema_pos, g, h))
    moments = pos_embed_moments(state["optimizer"], model)
    for name in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(moments[name], efficienttrain_resample(old_moments[name], g, h))


def test_moments_are_resampled_to_the_new_grid_with_sensible_values():
    state, old_model = trained_state(16)  # 4 x 4 grid
    old_moments = {k: v.clone() for k, v in pos_embed_moments(state["optimizer"], old_model).items()}
    old_pos = state["model"]["pos_embed"].clone()
    model = vit(24)  # 6 x 6 grid
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-2, weight_decay=0.05)
    message = resample_checkpoint(state, model, optimizer, "test")
    assert message == "position embedding resampled from 4x4 to 6x6 (with the optimizer's exp_avg, exp_avg_sq)"

    assert state["model"]["pos_embed"].shape == (1, 1 + 36, 32) == state["model_ema"]["pos_embed"].shape
    assert not torch.allclose(state["model"]["pos_embed"], resample_abs_pos_embed(old_pos, [6, 6]))  # not bicubic
    moments = pos_embed_moments(state["optimizer"], model)
    for name in ("exp_avg", "exp_avg_sq"):
        new, old = moments[name], old_moments[name]
        assert new.shape == (1, 37, 32)
        torch.testing.assert_close(new[:, :1], old[:, :1], rtol=0, atol=0)  # the class token's row is kept
        # a smooth upsampling: the grid's mean per channel barely moves
        torch.testing.assert_close(new[:, 1:].mean(1), old[:, 1:].mean(1), rtol=0.2, atol=1e-3 * old.abs().max())
    sq_new, sq_old = moments["exp_avg_sq"][:, 1:], old_moments["exp_avg_sq"][:, 1:]
    # second moments: bilinear weights are non-negative, so values stay within the old per-channel range
    assert (sq_new >= sq_old.amin(1, keepdim=True) - 1e-12).all()
    assert (sq_new <= sq_old.amax(1, keepdim=True) + 1e-12).all()
    assert moments["step"] == old_moments["step"]
    # other parameters' moments are untouched
    assert all(s["exp_avg"].shape != (1, 17, 32) for s in state["optimizer"]["state"].values())


def test_training_goes_on_across_the_resolution_change_and_fails_without_resampling():
    state, _ = trained_state(16)
    model = vit(24)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-2, weight_decay=0.05)
    naive = {"model": dict(state["model"]), "optimizer": state["optimizer"]}
    naive["model"]["pos_embed"] = resample_abs_pos_embed(state["model"]["pos_embed"], [6, 6])
    model.load_state_dict(naive["model"])
    optimizer.load_state_dict(state["optimizer"])  # the moments keep the old 4 x 4 shape
    with pytest.raises(RuntimeError):
        train(model, optimizer, 24, 1)

    model = vit(24)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-2, weight_decay=0.05)
    resample_checkpoint(state, model, optimizer, "test")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    before = model.pos_embed.detach().clone()
    losses = train(model, optimizer, 24, 3)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, model.pos_embed.detach())
    assert optimizer.state[model.pos_embed]["exp_avg_sq"].shape == (1, 37, 32)


def test_same_grid_or_no_position_embedding_needs_nothing():
    state, _ = trained_state(16)
    model = vit(16)
    assert resample_checkpoint(state, model, create_optimizer_v2(model, opt="adamw"), "test") is None
    cnn = timm.create_model("resnet10t", num_classes=5)
    cnn_state = {"model": cnn.state_dict(), "optimizer": {"state": {}}}
    assert resample_checkpoint(cnn_state, cnn, create_optimizer_v2(cnn, opt="adamw"), "test") is None


def test_a_position_embedding_of_another_width_is_a_user_error():
    state, _ = trained_state(16)
    model = tiny_vit(img_size=24, depth=2, num_classes=5, embed_dim=64)
    with pytest.raises(UserError, match="ckpt.pth has a position embedding of shape"):
        resample_checkpoint(state, model, create_optimizer_v2(model, opt="adamw"), "--resume ckpt.pth")
