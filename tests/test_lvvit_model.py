"""The LV-ViT family in timm's registry: sizes, forward/backward, MixToken un-mixing, ToE scatter-back, FLOPs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from helpers import TINY_VIT, run_cli, tiny_vit, upstream_lvvit_layout

from toe import TokenSelect, apply_toe
from toe.models import LVViT, scatter_tokens, swap_box
from toe.models.lvvit import mix_token_box

NAMES = ["lvvit_t", "lvvit_s", "lvvit_m", "lvvit_l"]
TINY = {**TINY_VIT, "depth": 2, "num_classes": 10}


def tiny(name: str = "lvvit_s", **kwargs) -> LVViT:
    return tiny_vit(name, seed=0, **{**TINY, **kwargs})


def dense(model: LVViT, mix_token: bool = True) -> LVViT:
    """The model with token labeling's training outputs switched on (as the recipe does)."""
    model.return_dense, model.mix_token = True, mix_token
    return model


@pytest.mark.parametrize(
    ("name", "millions", "skip_lam", "stem"),
    [("lvvit_t", 8.5, 1.0, 64), ("lvvit_s", 26, 2.0, 64), ("lvvit_m", 56, 2.0, 64), ("lvvit_l", 150, 3.0, 128)],
)
def test_full_size_models_match_the_published_sizes(name, millions, skip_lam, stem):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, rel=0.02)
    assert model.patch_embed.grid_size == (14, 14) and model.num_prefix_tokens == 1
    assert model.blocks[0].skip_lam == skip_lam and model.patch_embed.stem[0].out_channels == stem
    assert model.blocks[0].mlp.fc1.out_features == 3 * model.embed_dim
    assert model.pretrained_cfg["classifier"] == ("head", "aux_head")


@pytest.mark.parametrize("name", NAMES)
def test_every_model_trains_and_evaluates_at_a_tiny_size(name):
    model = dense(tiny(name)).train()
    images = torch.randn(4, 3, 32, 32)
    cls_logits, aux_logits, lam = model(images)
    assert cls_logits.shape == (4, 10) and aux_logits.shape == (4, 64, 10) and 0 <= lam <= 1
    (cls_logits.sum() + aux_logits.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        tokens = model.forward_tokens(images)
        expected = model.head(tokens[:, 0]) + 0.5 * model.aux_head(tokens[:, 1:]).max(dim=1).values
        assert torch.equal(model(images), expected)


@pytest.mark.parametrize("name", NAMES)
def test_a_plain_training_forward_gives_logits_as_timm_models_do(name):
    model = tiny(name).train()
    assert not model.return_dense and not model.mix_token
    logits = model(torch.randn(2, 3, 32, 32))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_layer_norms_use_tokenlabelings_eps():
    norms = [m for m in tiny().modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and all(m.eps == 1e-5 for m in norms)


def test_evaluation_crops_are_tokenlabelings():
    crops = {name: timm.create_model(name, pretrained=False, **TINY).pretrained_cfg["crop_pct"] for name in NAMES}
    assert crops == {"lvvit_t": 0.9, "lvvit_s": 0.9, "lvvit_m": 1.0, "lvvit_l": 1.0}


def test_timm_interface():
    model = tiny().eval()
    images = torch.randn(2, 3, 32, 32)
    assert {"pos_embed", "cls_token"} <= model.no_weight_decay()
    assert model.num_features == model.head_hidden_size == 32 and model.in_chans == 3
    features = model.forward_features(images)  # the 65 tokens as a 65 x 1 NHWC map
    assert features.shape == (2, 65, 1, 32) and torch.equal(features.squeeze(2), model.forward_tokens(images))
    assert torch.equal(model.forward_head(features, pre_logits=True), features[:, 0, 0])
    model.reset_classifier(5)
    assert model.head.out_features == model.aux_head.out_features == 5 and not model.head.training
    model.reset_classifier(0)
    assert torch.equal(model(images), features[:, 0, 0])
    model.reset_classifier(0, "")
    assert torch.equal(model(images), features)
    with pytest.raises(ValueError, match="even patch size"):
        tiny(patch_size=3)


def test_features_only_gives_patch_maps_of_the_last_blocks():
    model = timm.create_model("lvvit_s", features_only=True, **{**TINY, "depth": 4}).eval()
    assert model.feature_info.channels() == [32, 32, 32] and model.feature_info.reduction() == [4, 4, 4]
    maps = model(torch.randn(2, 3, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(2, 32, 8, 8)] * 3
    plain = tiny(depth=4).eval()
    plain.load_state_dict(model.model.state_dict())
    with torch.no_grad():
        last, every = plain.forward_intermediates(torch.randn(2, 3, 32, 32))
    assert len(every) == 4 and last.shape == (2, 65, 1, 32)


def zero_residual_branches(model: LVViT) -> None:
    """Blocks become the identity: every token's output then depends on that token alone."""
    with torch.no_grad():
        for block in model.blocks:
            for layer in (block.attn.proj, block.mlp.fc2):
                layer.weight.zero_()
                layer.bias.zero_()


def test_mixtoken_mixes_a_box_of_tokens_and_unmixing_returns_each_samples_own_dense_predictions():
    model = dense(tiny()).train()
    zero_residual_branches(model)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.mix_token = False
        own_cls, own_aux, own_lam = model(images)
        patches = model.patch_embed(images)
        model.mix_token = True
        seen = []
        model.norm.register_forward_hook(lambda module, args, out: seen.append(args[0][:, 1:] - model.pos_embed[:, 1:]))
        np.random.seed(3)
        cls_logits, aux_logits, lam = model(images)
    assert own_lam == 1.0 and 0 < lam < 1
    # the blocks saw each sample's own tokens outside the box and the flipped sample's inside it
    from_flipped = torch.isclose(seen[0], patches.flip(0), atol=1e-5).all(-1)
    from_own = torch.isclose(seen[0], patches, atol=1e-5).all(-1)
    assert (from_flipped | from_own).all()
    assert ((from_flipped & ~from_own).sum(1) == round((1 - lam) * 64)).all()
    torch.testing.assert_close(aux_logits, own_aux)  # un-mixed: row b holds sample b's dense predictions
    torch.testing.assert_close(cls_logits, own_cls)  # the class token does not see patches here


def test_swap_box_is_its_own_inverse():
    x = torch.randn(3, 12, 5)
    box = (1, 3, 0, 2)  # rows 1-2, columns 0-1 of a 3 x 4 grid
    swapped = swap_box(x, (3, 4), box)
    inside = torch.zeros(3, 4, dtype=torch.bool)
    inside[1:3, 0:2] = True
    inside = inside.flatten()
    assert torch.equal(swapped[:, inside], x.flip(0)[:, inside]) and torch.equal(swapped[:, ~inside], x[:, ~inside])
    assert torch.equal(swap_box(swapped, (3, 4), box), x)


def test_scatter_tokens_puts_every_token_at_its_index_and_zeros_elsewhere():
    tokens = torch.randn(2, 3, 4, requires_grad=True)
    index = torch.tensor([[0, 5, 2], [0, 1, 6]])
    full = scatter_tokens(tokens, index, 7)
    assert full.shape == (2, 7, 4)
    for b in range(2):
        for j, position in enumerate(index[b].tolist()):
            assert torch.equal(full[b, position], tokens[b, j])
        others = [p for p in range(7) if p not in index[b].tolist()]
        assert not full[b, others].any()
    full.sum().backward()
    assert torch.equal(tokens.grad, torch.ones_like(tokens))


def test_with_toe_the_reduced_tokens_are_scattered_back_to_their_positions():
    model = apply_toe(dense(tiny(depth=3)), TokenSelect([0, 1, 2], [0.4, 0.7, 1.0], 0.2, 2)).train()
    reduced = []
    model.norm.register_forward_hook(lambda module, args, out: reduced.append(out))
    tokens = model.forward_tokens(torch.randn(2, 3, 32, 32))
    index = model.token_select.last_index
    assert reduced[0].shape == (2, 1 + 24, 32) and index.shape == (2, 1 + 24)  # 64 patches at keep rate .4
    assert tokens.shape == (2, 1 + 64, 32)
    for b in range(2):
        assert torch.equal(tokens[b, index[b]], reduced[0][b])
        dropped = torch.ones(65, dtype=torch.bool)
        dropped[index[b]] = False
        assert dropped.sum() == 40 and not tokens[b, dropped].any()
    cls_logits, aux_logits, _ = model(torch.randn(2, 3, 32, 32))
    assert aux_logits.shape == (2, 64, 10)
    (cls_logits.sum() + aux_logits.sum()).backward()


def test_toe_keeps_the_state_dict_and_eval_is_bit_identical():
    plain = tiny(depth=3).eval()
    model = apply_toe(copy.deepcopy(plain), TokenSelect([0, 1, 2], [0.4, 0.7, 1.0], 0.2, 2)).eval()
    assert list(model.state_dict()) == list(plain.state_dict())
    images = torch.randn(3, 3, 32, 32)
    assert torch.equal(model(images), plain(images)) and model.token_select.last_index is None


def test_toe_flops_counts_the_stem_and_the_dense_head(capsys):
    from toe.cli import main as toe_main

    status, out, err = run_cli(
        toe_main,
        ["flops", "--model", "lvvit_s", "--keep-rate", "0.4", "0.7", "1", "--initialization-keep-rate", "0.2"],
        capsys,
    )
    assert status == 0, err
    full = float(out.split("full-token: ")[1].split()[0])
    # by hand: 16 blocks of 197 tokens, width 384, MLP ratio 3; the 4-layer stem at 224 px; class + dense heads
    blocks = 16 * ((4 + 2 * 3) * 197 * 384**2 + 2 * 197**2 * 384)
    stem = 112**2 * 64 * (3 * 49 + 2 * 64 * 9) + 14**2 * 384 * 64 * 64
    heads = 384 * 1000 * (1 + 196)
    assert full == pytest.approx((blocks + stem + heads) / 1e9, abs=0.01)
    assert 6.4 < full < 6.7  # LV-ViT-S: about 6.6 GFLOPs
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [" ".join(row[2:5]) for row in rows] == ["78 of 196", "136 of 196", "196 of 196"]  # patch tokens


def test_mixtoken_draws_tokenlabelings_box():
    """TokenLabeling's rand_bbox: a side of int(side * sqrt(1 - lam)) per axis and cut // 2 either side of a
    centre drawn row first (timm 1.0's helper puts (cut + 1) // 2 after the centre)."""
    for trial in range(200):
        np.random.seed(trial)
        (y0, y1, x0, x1), lam = mix_token_box((14, 14))
        np.random.seed(trial)
        cut = int(14 * np.sqrt(1 - np.random.beta(1.0, 1.0)))
        cy, cx = np.random.randint(14), np.random.randint(14)
        expected = (max(cy - cut // 2, 0), min(cy + cut // 2, 14), max(cx - cut // 2, 0), min(cx + cut // 2, 14))
        assert (y0, y1, x0, x1) == expected, trial
        assert lam == 1 - (y1 - y0) * (x1 - x0) / 196


@pytest.mark.parametrize("wrapped", [False, True])
def test_tokenlabeling_weights_load_through_timm(tmp_path, wrapped):
    source = tiny().eval()
    state = upstream_lvvit_layout(source.state_dict())
    assert {"patch_embed.conv1.weight", "patch_embed.bn3.running_var", "patch_embed.proj.weight"} <= set(state)
    file = tmp_path / "lvvit_s_upstream.pth"
    torch.save({"state_dict": state, "epoch": 299, "arch": "lvvit_s"} if wrapped else state, file)
    overlay = {"file": str(file), "num_classes": 10}
    model = timm.create_model("lvvit_s", pretrained=True, pretrained_cfg_overlay=overlay, **TINY).eval()
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(images), source(images))
    bigger = timm.create_model("lvvit_s", pretrained=True, pretrained_cfg_overlay=overlay, **{**TINY, "img_size": 48})
    assert bigger.pos_embed.shape == (1, 1 + 12 * 12, 32)  # the position embedding resampled to the new grid
