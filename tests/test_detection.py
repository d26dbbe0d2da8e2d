"""YOLOS building blocks: boxes, matcher, set criterion, model with ToE, transforms, COCO data and metrics."""

from __future__ import annotations

import argparse
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error, detection_demo_generator, run_cli

from toe.detection.backbone import load_backbone_weights
from toe.detection.boxes import coco_to_xyxy, denormalize_cxcywh, normalize_xyxy, xyxy_to_coco
from toe.detection.coco import build_coco_split, collate_detection, num_classes_of
from toe.detection.criterion import SetCriterion
from toe.detection.evaluation import coco_metrics, detections
from toe.detection.matcher import HungarianMatcher
from toe.detection.model import YOLOS, create_backbone
from toe.detection.transforms import (
    crop,
    eval_transforms,
    hflip,
    resized_size,
    single_scale_train_transforms,
    train_transforms,
)
from toe.engine import load_weights
from toe.options import UserError
from toe.token_select import TokenSelect

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}


def tiny_yolos(det_tokens: int = 4, mid: bool = True, seed: int = 0, **kwargs) -> YOLOS:
    torch.manual_seed(seed)
    backbone = create_backbone("tiny", **{**TINY, **kwargs})
    return YOLOS(backbone, 6, det_tokens, init_pe_size=(48, 64), mid_pe_size=(40, 40) if mid else None)


# ---------------------------------------------------------------- boxes


def test_box_conversions_round_trip_and_normalise():
    coco = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 5.0, 5.0]])
    xyxy = coco_to_xyxy(coco)
    assert xyxy.tolist() == [[10, 20, 40, 60], [0, 0, 5, 5]]
    assert torch.equal(xyxy_to_coco(xyxy), coco)
    # a 100 x 200 (height x width) image: centre (25, 40) -> (0.125, 0.4), size (30, 40) -> (0.15, 0.4)
    normal = normalize_xyxy(xyxy, height=100, width=200)
    assert torch.allclose(normal[0], torch.tensor([0.125, 0.4, 0.15, 0.4]))
    back = denormalize_cxcywh(normal[None], torch.tensor([[100, 200]]))[0]
    assert torch.allclose(back, xyxy)


# ---------------------------------------------------------------- matcher


def _giou(a: list[float], b: list[float]) -> float:
    """GIoU of two corner boxes, from the definition."""
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def _corners(box: list[float]) -> list[float]:
    cx, cy, w, h = box
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _pair_cost(logits, box, label, target, weights) -> float:
    probability = torch.softmax(logits, -1)[label].item()
    l1 = sum(abs(p - t) for p, t in zip(box.tolist(), target.tolist()))
    return (
        -weights[0] * probability
        + weights[1] * l1
        - weights[2] * _giou(_corners(box.tolist()), _corners(target.tolist()))
    )


@pytest.mark.parametrize("seed", range(6))
def test_matcher_finds_the_cheapest_assignment_found_by_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    queries, classes = 5, 4
    weights = (1.0, 5.0, 2.0)
    matcher = HungarianMatcher(*weights)
    sizes = [3, 0, 5, 1]
    logits = torch.randn(len(sizes), queries, classes + 1, generator=generator)
    boxes = torch.rand(len(sizes), queries, 4, generator=generator) * 0.5 + 0.1
    targets = [
        {
            "labels": torch.randint(classes, (n,), generator=generator),
            "boxes": torch.rand(n, 4, generator=generator) * 0.5 + 0.1,
        }
        for n in sizes
    ]
    matches = matcher(logits, boxes, targets)
    for image, (target, (rows, cols)) in enumerate(zip(targets, matches)):
        n = len(target["labels"])
        assert len(rows) == len(cols) == min(queries, n)
        cost = [
            [
                _pair_cost(logits[image, q], boxes[image, q], target["labels"][t], target["boxes"][t], weights)
                for t in range(n)
            ]
            for q in range(queries)
        ]
        found = sum(cost[q][t] for q, t in zip(rows.tolist(), cols.tolist()))
        best = min(
            (sum(cost[q][t] for t, q in enumerate(chosen)) for chosen in itertools.permutations(range(queries), n)),
            default=0.0,
        )
        assert found == pytest.approx(best, abs=1e-5)
        assert sorted(cols.tolist()) == list(range(n))  # every target matched once


def test_matcher_rejects_all_zero_costs():
    with pytest.raises(ValueError, match="cannot all be 0"):
        HungarianMatcher(0, 0, 0)


# ---------------------------------------------------------------- criterion


def test_set_criterion_on_a_hand_checked_case():
    """Two predictions, one target of class 0 at (0.5, 0.5, 0.2, 0.2).

    Prediction 0: uniform logits, box (0.5, 0.5, 0.2, 0.4): L1 0.2, IoU 0.5, hull = its own box, GIoU 0.5.
    Prediction 1: logits (0, 0, ln 2), i.e. p(no object) = 0.5, far-away box: unmatched.
    CE = (1 * ln 3 + 0.1 * ln 2) / (1 + 0.1); L1 = 0.2; GIoU loss = 0.5; total = CE + 5 * 0.2 + 2 * 0.5.
    """
    criterion = SetCriterion(2, HungarianMatcher(1, 5, 2), eos_coef=0.1, ce_coef=1, bbox_coef=5, giou_coef=2)
    outputs = {
        "pred_logits": torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2)]]]),
        "pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.2, 0.2, 0.1, 0.1]]]),
    }
    targets = [{"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    losses = criterion(outputs, targets)
    expected_ce = (math.log(3) + 0.1 * math.log(2)) / 1.1
    assert losses["loss_ce"].item() == pytest.approx(expected_ce, rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(0.2, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(0.5, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(expected_ce + 2.0, rel=1e-5)
    assert losses["class_error"].item() == 0.0  # prediction 0's arg-max is class 0
    assert losses["cardinality_error"].item() == 0.0  # one prediction is not "no object", one target


def test_set_criterion_handles_images_without_objects_and_backpropagates():
    criterion = SetCriterion(3, HungarianMatcher(1, 5, 2))
    logits = torch.randn(2, 4, 4, requires_grad=True)
    boxes = torch.rand(2, 4, 4, requires_grad=True)
    targets = [
        {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2]])},
    ]
    losses = criterion({"pred_logits": logits, "pred_boxes": boxes}, targets)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and logits.grad.abs().sum() > 0 and boxes.grad.abs().sum() > 0
    # the image without objects: all its predictions are trained towards "no object", its boxes untouched
    assert boxes.grad[0].abs().sum() == 0


# ---------------------------------------------------------------- model


def test_position_embeddings_interpolate_like_upstream():
    """Upstream YOLOS: F.interpolate(bicubic, align_corners=False) of the patch part on the 2-D grid,
    class and [DET] positions untouched; mid embeddings the same, layer by layer."""
    model = tiny_yolos()
    pos = model.backbone.pos_embed.detach()
    grid0 = model.init_grid  # (6, 8)
    for grid in [(7, 9), (6, 8), (5, 10)]:
        got = model.position_embedding(grid)
        patches = pos[:, 1:-4].transpose(1, 2).reshape(1, -1, *grid0)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
        assert torch.allclose(got, torch.cat((pos[:, :1], patches, pos[:, -4:]), 1), atol=1e-6)
        mid = model.backbone.mid_pos_embed.detach()
        got_mid = model.mid_position_embedding(grid)
        for layer in range(mid.shape[0]):
            part = mid[layer, :, 1:-4].transpose(1, 2).reshape(1, -1, 5, 5)
            part = F.interpolate(part, size=grid, mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
            expected = torch.cat((mid[layer, :, :1], part, mid[layer, :, -4:]), 1)
            assert torch.allclose(got_mid[layer], expected, atol=1e-6)


def _reference_forward(model: YOLOS, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """YOLOS with ToE written out plainly: [DET] tokens split off by hand, mid embeddings gathered one
    sample and one token at a time."""
    b = model.backbone
    d = model.det_token_num
    x = b.patch_embed(images)
    grid = (x.shape[1], x.shape[2])
    x = torch.cat((b.cls_token.expand(len(x), -1, -1), x.flatten(1, 2), b.det_token.expand(len(x), -1, -1)), 1)
    x = x + model.position_embedding(grid)
    mid = model.mid_position_embedding(grid)
    index = None
    for i, block in enumerate(b.blocks):
        if i == 1:
            body, det = x[:, :-d], x[:, -d:]
            body, index = model.token_select(body, num_prefix_tokens=1)
            x = torch.cat((body, det), 1)
        x = block(x)
        if i < len(b.blocks) - 1:
            layer = mid[i, 0]
            if index is None:
                x = x + layer
            else:
                rows = []
                for sample in range(len(x)):
                    kept = [layer[int(p)] for p in index[sample]]
                    rows.append(torch.stack(kept + [layer[len(layer) - d + j] for j in range(d)]))
                x = x + torch.stack(rows)
    return b.norm(x)[:, -d:], index


def test_a_square_grid_with_the_stored_token_count_is_still_resampled():
    """Stored at a 4 x 9 grid, a batch at 6 x 6 (also 36 patches) gets the interpolated embedding, not the
    stored one in the wrong layout. timm before 1.0.29 skipped this case (pyproject.toml requires 1.0.29)."""
    torch.manual_seed(0)
    model = YOLOS(create_backbone("tiny", **TINY), 6, 4, init_pe_size=(32, 72))
    assert model.init_grid == (4, 9)
    pos = model.backbone.pos_embed.detach()
    patches = pos[:, 1:-4].transpose(1, 2).reshape(1, -1, 4, 9)
    patches = F.interpolate(patches, size=(6, 6), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    got = model.position_embedding((6, 6))
    assert torch.allclose(got, torch.cat((pos[:, :1], patches, pos[:, -4:]), 1), atol=1e-6)
    assert not torch.allclose(got, pos, atol=1e-3)


def test_sincos_position_embedding_start_replaces_only_the_patch_positions():
    """--pos_embed_init sincos: the patch positions start as timm's 2-D sine-cosine embedding of the
    init_pe_size grid (distinct per position, unlike a briefly trained one), still a trained parameter;
    the class position comes from the backbone, the [DET] positions are drawn as before."""
    from timm.layers import build_sincos2d_pos_embed

    torch.manual_seed(0)
    backbone = create_backbone("tiny", **TINY)
    class_position = backbone.pos_embed[:, :1].detach().clone()
    model = YOLOS(backbone, 6, 4, init_pe_size=(48, 64), pos_embed_init="sincos")
    pos = model.backbone.pos_embed
    assert pos.requires_grad and pos.shape == (1, 1 + 6 * 8 + 4, TINY["embed_dim"])
    assert torch.equal(pos[0, 1:-4].detach(), build_sincos2d_pos_embed([6, 8], TINY["embed_dim"]))
    assert torch.equal(pos[:, :1].detach(), class_position)
    torch.manual_seed(0)
    pretrained = tiny_yolos(mid=False)
    assert torch.equal(pretrained.backbone.pos_embed[:, :1], pos[:, :1])
    assert not torch.allclose(pretrained.backbone.pos_embed[:, 1:-4], pos[:, 1:-4])
    with pytest.raises(ValueError, match="pos_embed_init must be one of pretrained, sincos"):
        YOLOS(create_backbone("tiny", **TINY), 6, 4, init_pe_size=(48, 64), pos_embed_init="learned")


@pytest.mark.parametrize("reduction", ["toe", "toe-drop", "random"])
def test_toe_skips_det_tokens_and_gathers_mid_position_embeddings(reduction):
    model = tiny_yolos()
    model.token_select = TokenSelect([0, 5], [0.5, 1.0], 0.25, 2, reduction=reduction)
    model.train()
    seen = []
    model.token_select.register_forward_hook(lambda module, args, kwargs_out: seen.append(args[0].shape[1]))
    images = torch.randn(3, 3, 48, 56)  # 6 x 7 = 42 patches
    torch.manual_seed(1)
    ours = model.forward_features(images)
    index = model.token_select.last_index
    torch.manual_seed(1)
    reference, reference_index = _reference_forward(model, images)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert torch.equal(index, reference_index)
    assert seen[0] == 1 + 42  # the selector saw class + patch tokens, never the [DET] tokens
    kept = model.token_select.token_counts(42).kept[0]
    assert kept == 20 and index.shape == (3, 1 + kept)
    assert int(index.max()) <= 42  # positions of class/patch tokens only
    assert (index[:, 0] == 0).all()
    if reduction == "random":  # a different subset per image
        assert not torch.equal(index[0], index[1])


@pytest.mark.parametrize("reduction", ["toe", "toe-drop", "random"])
def test_det_tokens_pass_toe_untouched(reduction):
    model = tiny_yolos(mid=False)
    model.token_select = TokenSelect([0, 5], [0.5, 1.0], 0.25, 2, reduction=reduction)
    model.train()
    captured = {}
    model.backbone.blocks[0].register_forward_hook(lambda m, a, out: captured.__setitem__("block0", out))
    model.backbone.blocks[1].register_forward_pre_hook(lambda m, a: captured.__setitem__("block1_in", a[0]))
    model.forward_features(torch.randn(2, 3, 40, 40))
    assert torch.equal(captured["block1_in"][:, -4:], captured["block0"][:, -4:])
    assert captured["block1_in"].shape[1] == 1 + 12 + 4  # 25 patches -> 12 kept


def test_variable_patch_counts_across_batches():
    model = tiny_yolos()
    select = TokenSelect([0, 5], [0.5, 1.0], 0.25, 2)
    model.token_select = select
    model.train()
    for height, width in [(40, 40), (56, 72), (48, 64), (40, 40)]:
        patches = (height // 8) * (width // 8)
        out = model(torch.randn(2, 3, height, width))
        assert out["pred_logits"].shape == (2, 4, 7) and out["pred_boxes"].shape == (2, 4, 4)
        assert model.token_select.last_index.shape[1] == 1 + select.token_counts(patches).kept[0]
        out["pred_boxes"].sum().backward()
    assert {key[0] for key in select._seed_cache} == {25, 63, 48}
    model.eval()  # evaluation is full-token
    model(torch.randn(1, 3, 40, 48))
    assert model.token_select.last_index is None


def test_model_without_toe_and_inactive_stage_agree():
    images = torch.randn(2, 3, 40, 48)
    plain = tiny_yolos().train()
    torch.manual_seed(3)
    expected = plain(images)["pred_boxes"]
    with_toe = tiny_yolos().train()
    with_toe.token_select = TokenSelect([1, 5], [0.5, 1.0], 0.25, 2)  # stage 0 at epoch 0: inactive
    torch.manual_seed(3)
    assert torch.equal(with_toe(images)["pred_boxes"], expected)


# ---------------------------------------------------------------- backbone weights


def _deit_state(seed: int = 5) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    import timm

    return timm.create_model("deit_tiny_patch16_224", num_classes=10, **TINY).state_dict()


def test_backbone_loads_our_deit_checkpoint(tmp_path):
    state = _deit_state()
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": state, "args": {"model": "deit_tiny_patch16_224"}, "epoch": 3}, path)
    backbone = create_backbone("tiny", **TINY)
    report = load_backbone_weights(backbone, path)
    assert "2 head/distillation tensors" in report
    assert torch.equal(backbone.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    assert torch.equal(backbone.pos_embed, state["pos_embed"])
    model = YOLOS(backbone, 6, 4, init_pe_size=(32, 32))  # same grid: the class and patch positions are kept
    assert torch.equal(model.backbone.pos_embed[:, :-4], state["pos_embed"])


def test_backbone_loads_an_official_deit_checkpoint_with_namespace_args(tmp_path):
    state = _deit_state()
    path = tmp_path / "deit_tiny_patch16_224-a1311bcf.pth"
    torch.save({"model": state, "args": argparse.Namespace(model="deit_tiny_patch16_224", lr=5e-4)}, path)
    backbone = create_backbone("tiny", **{**TINY, "img_size": 64})  # another grid: the file's is used
    load_backbone_weights(backbone, path)
    assert torch.equal(backbone.pos_embed, state["pos_embed"])
    assert torch.equal(backbone.patch_embed.proj.weight, state["patch_embed.proj.weight"])


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_backbone_loads_timm_weight_files(tmp_path, suffix):
    state = _deit_state()
    path = tmp_path / f"model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    backbone = create_backbone("tiny", **TINY)
    load_backbone_weights(backbone, path)
    assert torch.equal(backbone.norm.weight, state["norm.weight"])


def test_distilled_backbone_keeps_the_distillation_position_for_the_class_token(tmp_path):
    state = _deit_state()
    dist_pos = torch.randn(1, 1, 32)
    state["pos_embed"] = torch.cat((state["pos_embed"][:, :1], dist_pos, state["pos_embed"][:, 1:]), 1)
    state["dist_token"] = torch.zeros(1, 1, 32)
    path = tmp_path / "distilled.pth"
    torch.save({"model": state}, path)
    backbone = create_backbone("tiny", **TINY)
    load_backbone_weights(backbone, path)
    assert torch.equal(backbone.pos_embed[:, :1], dist_pos)


def test_backbone_loader_names_bad_files(tmp_path):
    backbone = create_backbone("tiny", **TINY)
    with pytest.raises(UserError, match="no such file"):
        load_backbone_weights(backbone, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="not a readable weights file"):
        load_weights(tmp_path / "junk.pth", "--pre_trained")
    wide = create_backbone("tiny", **{**TINY, "embed_dim": 48}).state_dict()
    torch.save(wide, tmp_path / "wide.pth")
    with pytest.raises(UserError, match="does not fit --backbone_name"):
        load_backbone_weights(backbone, tmp_path / "wide.pth")
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "resnet.pth")
    with pytest.raises(UserError, match="holds no weight of the backbone"):
        load_backbone_weights(backbone, tmp_path / "resnet.pth")


# ---------------------------------------------------------------- transforms


def test_resize_rounds_to_whole_patches_and_honours_max_size():
    assert resized_size(640, 480, 512, None, 16) == (512, 672)  # 682 -> 672
    assert resized_size(480, 640, 512, None, 16) == (672, 512)
    # a 4:1 image at shorter side 800 would be 3200 wide: capped at 1333, the shorter side shrinks
    assert resized_size(4000, 1000, 800, 1333, 16) == (320, 1328)
    assert resized_size(20, 20, 3, None, 8) == (8, 8)  # never below one patch


def test_single_scale_training_resizes_like_evaluation_and_flips_boxes_with_the_image():
    """--single-scale: every training image at the evaluation size (square images: one shape, no padding in
    a batch), mirrored half of the time with its boxes."""
    import random

    from PIL import Image

    image = Image.new("RGB", (80, 80))
    target = {
        "boxes": torch.tensor([[8.0, 16.0, 40.0, 48.0]]),
        "labels": torch.tensor([1]),
        "area": torch.tensor([1024.0]),
        "size": torch.tensor([80, 80]),
    }
    transform = single_scale_train_transforms(64, 8)
    seen = set()
    random.seed(0)
    for _ in range(20):
        tensor, out = transform(image, target)
        assert tensor.shape == (3, 64, 64) and out["size"].tolist() == [64, 64]
        assert torch.allclose(out["area"], torch.tensor([1024.0 * 0.64]))
        seen.add(tuple(round(v, 4) for v in out["boxes"][0].tolist()))
    # normalised cx, cy, w, h: the box as it is (cx 0.3) and mirrored (cx 0.7)
    assert seen == {(0.3, 0.4, 0.4, 0.4), (0.7, 0.4, 0.4, 0.4)}


def test_flip_and_crop_move_boxes_with_the_image():
    from PIL import Image

    image = Image.new("RGB", (100, 50))
    target = {
        "boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0], [70.0, 30.0, 90.0, 45.0]]),
        "labels": torch.tensor([1, 2]),
        "area": torch.tensor([400.0, 300.0]),
        "iscrowd": torch.tensor([0, 0]),
    }
    _, flipped = hflip(image, target)
    assert flipped["boxes"].tolist() == [[70, 5, 90, 25], [10, 30, 30, 45]]
    cropped_image, cropped = crop(image, target, top=0, left=20, height=40, width=40)
    assert cropped_image.size == (40, 40)
    assert cropped["boxes"].tolist() == [[0, 5, 10, 25]]  # the second box lies outside: dropped
    assert cropped["labels"].tolist() == [1] and cropped["area"].tolist() == [200.0]


# ---------------------------------------------------------------- data and evaluation


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory):
    out = tmp_path_factory.mktemp("coco") / "shapes"
    detection_demo_generator().generate(out, train_images=12, val_images=6)
    return out


def test_coco_layout_dataset_and_padded_batches(shapes_coco):
    train = build_coco_split(shapes_coco, "train", train_transforms("tiny", 8, aug_scale=0.1))
    assert len(train) == 12 and num_classes_of(train.coco) == 6
    val = build_coco_split(shapes_coco, "val", eval_transforms(64, 8))
    batch = [val[i] for i in range(3)]
    for image, target in batch:
        assert image.shape[1] % 8 == 0 and image.shape[2] % 8 == 0
        assert (target["boxes"] > 0).all() and (target["boxes"] <= 1).all()
    images, targets = collate_detection(batch)
    assert images.shape[2] == max(i.shape[1] for i, _ in batch) and images.shape[3] == max(i.shape[2] for i, _ in batch)
    for row, ((image, _), target) in enumerate(zip(batch, targets)):
        h, w = image.shape[1:]
        assert not target["pad_mask"][:h, :w].any()
        assert target["pad_mask"].sum() == images.shape[2] * images.shape[3] - h * w
        assert torch.equal(images[row, :, :h, :w], image) and images[row, :, h:].abs().sum() == 0
    with pytest.raises(UserError, match="does not exist"):
        build_coco_split(shapes_coco / "nowhere", "train", None)


def _perfect_outputs(dataset, indices, num_classes: int = 6, det_tokens: int = 6):
    """Model outputs that predict every ground-truth box of the images exactly, other tokens "no object"."""
    targets = [dataset[i][1] for i in indices]
    logits = torch.full((len(indices), det_tokens, num_classes + 1), -20.0)
    logits[..., -1] = 20.0
    boxes = torch.full((len(indices), det_tokens, 4), 0.5)
    for row, target in enumerate(targets):
        for q, (label, box) in enumerate(zip(target["labels"], target["boxes"])):
            logits[row, q] = -20.0
            logits[row, q, label] = 20.0
            boxes[row, q] = box
    return {"pred_logits": logits, "pred_boxes": boxes}, targets


def test_coco_evaluation_gives_ap_one_for_perfect_predictions(shapes_coco):
    val = build_coco_split(shapes_coco, "val", eval_transforms(64, 8))  # resized: boxes map back to the file
    outputs, targets = _perfect_outputs(val, range(len(val)))
    metrics = coco_metrics(val.coco, detections(outputs, targets))
    assert metrics["ap"] == pytest.approx(1.0) and metrics["ap50"] == pytest.approx(1.0)
    # the same boxes with every class shifted by one: nothing is detected
    wrong = {**outputs, "pred_logits": outputs["pred_logits"].roll(1, dims=-1)}
    assert coco_metrics(val.coco, detections(wrong, targets))["ap"] == pytest.approx(0.0, abs=1e-6)
    # perfect on half of the images, evaluated on all: recall 1/2 at most
    half = len(val) // 2
    partial = {k: v[:half] for k, v in outputs.items()}
    metrics = coco_metrics(val.coco, detections(partial, targets[:half]))
    assert 0.0 < metrics["ap"] < 1.0


@pytest.mark.slow
def test_a_tiny_yolos_memorises_a_few_images(shapes_coco):
    """Model, matcher, set loss and COCO evaluation fit together: 200 AdamW steps on 6 images take their
    AP50 from about 0 to nearly 1 (the chain is what the demo trains; the demo itself is too short to learn
    much, DETR-style training converges slowly)."""
    val = build_coco_split(shapes_coco, "val", eval_transforms(64, 8))
    images, targets = collate_detection([val[i] for i in range(len(val))])
    model = tiny_yolos(det_tokens=4, mid=False)
    criterion = SetCriterion(6, HungarianMatcher(1, 5, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)

    def ap50() -> float:
        model.eval()
        with torch.no_grad():
            return coco_metrics(val.coco, detections(model(images), targets))["ap50"]

    before = ap50()
    model.train()
    for _ in range(200):
        loss = criterion(model(images), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before < 0.2 and ap50() > 0.9


def test_shapes_generator_is_deterministic_with_boxes_inside_the_images(shapes_coco, tmp_path):
    import json

    again = tmp_path / "again"
    generator = detection_demo_generator()
    generator.generate(again, train_images=12, val_images=6)
    for folder in ("train2017", "val2017"):
        for path in (shapes_coco / folder).iterdir():
            assert path.read_bytes() == (again / folder / path.name).read_bytes()
    annotations = json.loads((shapes_coco / "annotations" / "instances_val2017.json").read_text())
    sizes = {image["id"]: (image["width"], image["height"]) for image in annotations["images"]}
    assert len(sizes) == 6 and {c["id"] for c in annotations["categories"]} == {1, 2, 3, 4, 5}
    for annotation in annotations["annotations"]:
        x, y, w, h = annotation["bbox"]
        width, height = sizes[annotation["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height and w >= 12 and h >= 12
    with pytest.raises(ValueError, match="other arguments"):
        generator.generate(again, train_images=5, val_images=6)


def test_shapes_generator_makes_square_images_of_image_size(tmp_path, capsys):
    """--image-size N: every image N x N px, the objects inside; sizes that cannot hold them are one line."""
    import json

    generator = detection_demo_generator()
    out = tmp_path / "square"
    generator.generate(out, train_images=6, val_images=2, max_objects=2, object_size=(24, 40), image_size=64)
    annotations = json.loads((out / "annotations" / "instances_train2017.json").read_text())
    assert {(image["width"], image["height"]) for image in annotations["images"]} == {(64, 64)}
    assert all(
        1 <= sum(a["image_id"] == i["id"] for a in annotations["annotations"]) <= 2 for i in annotations["images"]
    )
    for annotation in annotations["annotations"]:
        x, y, w, h = annotation["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and 24 <= min(w, h) and max(w, h) <= 40
    for flags, fragment in (
        (["--image-size", "4"], "--image-size must be between 8 and 1024 px, got 4"),
        (["--image-size", "32", "--object-size", "24", "40"], "2 <= LOW <= HIGH <= 32 (the smallest image side)"),
    ):
        with pytest.raises(SystemExit) as stop:
            generator.main(["--out", str(tmp_path / "bad"), *flags])
        assert stop.value.code == 2 and fragment in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- analytic cost


def test_yolos_analytic_cost_matches_the_counted_forward():
    """toe.flops.yolos_shape against torch's FlopCounterMode on the real forward. The counter leaves out
    the fused attention on the CPU (2 N^2 C per block), which is added here; with ToE, the selector's
    own scoring is subtracted (the table counts the network, not the selection)."""
    from torch.utils.flop_counter import FlopCounterMode

    from toe.flops import forward_macs, yolos_shape

    model = tiny_yolos(det_tokens=5, mid=False).eval()
    shape = yolos_shape(model, 56, 72)
    assert (shape.num_patches, shape.num_extra_tokens, shape.depth) == (63, 5, 3)

    def counted(images):
        with FlopCounterMode(display=False) as counter:
            model(images)
        select = sum(counter.get_flop_counts().get("YOLOS.token_select", {}).values())
        return (counter.get_total_flops() - select) / 2

    def attention(tokens: int) -> float:
        return 2 * tokens**2 * 32

    images = torch.zeros(1, 3, 56, 72)
    full = 1 + 63 + 5
    assert counted(images) + 3 * attention(full) == forward_macs(shape)
    model.token_select = TokenSelect([0, 5], [0.5, 1.0], 0.25, 2)
    model.train()
    kept = model.token_select.token_counts(63).kept[0]
    reduced = 1 + kept + 5
    assert counted(images) + attention(full) + 2 * attention(reduced) == forward_macs(shape, kept)


def test_toe_flops_for_yolos_counts_det_tokens_at_the_input_size(capsys):
    """`toe flops --yolos`: the table of the detector as built (same cost as yolos_shape of the model), the
    [DET] tokens in every block and never reduced, YOLOS's paper schedule (a full-token stage 0, epochs 0-4)."""
    from toe.cli import main as toe_main
    from toe.flops import forward_macs, yolos_shape
    from toe.schedule import ToESchedule

    argv = ["flops", "--yolos", "tiny", "--patch-size", "8", "--model-kwargs", "embed_dim=32", "depth=3", "num_heads=2"]
    status, out, err = run_cli(toe_main, [*argv, "--input-size", "56", "72", "--det-token-num", "5"], capsys)
    assert status == 0, err
    assert "YOLOS-tiny at 56 x 72 px: 63 patch tokens + 1 prefix + 5 [DET] (never reduced), 3 blocks" in out
    shape = yolos_shape(tiny_yolos(det_tokens=5, mid=False), 56, 72)
    kept = ToESchedule([5, 100, 200], [0.5, 0.75, 1.0], 0.25, 2).token_counts(63).kept
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[:5] for row in rows] == [
        ["0", "0-4", "63", "of", "63"],
        ["1", "5-99", str(kept[0]), "of", "63"],
        ["2", "100-199", str(kept[1]), "of", "63"],
        ["3", "200-299", "63", "of", "63"],
    ]
    ratio = forward_macs(shape) / forward_macs(shape, kept[0])
    assert rows[1][6] == f"{ratio:.2f}x" and rows[0][6] == "1.00x"


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--yolos", "huge"], "--yolos must be one of tiny, small, base, small_dWr"),
        (["--yolos", "tiny", "--input-size", "8", "8"], "--input-size 8 8 is smaller than one 16 px patch"),
        (["--yolos", "tiny", "--input-size", "1", "2", "3"], "--input-size takes one or two"),
        (["--yolos", "tiny", "--det-token-num", "0"], "argument --det-token-num: must be at least 1"),
        (["--input-size", "224", "224"], "--input-size takes one size for a classifier"),
        (["--yolos", "tiny", "--embed-dim", "64"], "--embed-dim describes a plain ViT"),
        (["--yolos", "tiny", "--initialization-keep-rate", "0.05", "--input-size", "32"], "cannot train with ToE"),
    ],
)
def test_toe_flops_for_yolos_bad_input_is_one_line(capsys, flags, fragment):
    from toe.cli import main as toe_main

    status, _, err = run_cli(toe_main, ["flops", *flags], capsys)
    assert_one_line_error(status, err, fragment)


def test_each_training_forward_reports_its_token_counts():
    """The engine averages them over an epoch (and keeps the sums in mid-epoch checkpoints)."""
    model = tiny_yolos(det_tokens=4, mid=False)
    model.token_select = TokenSelect([0, 5], [0.5, 1.0], 0.25, 2)
    model.train()
    assert model.last_token_counts() is None
    model(torch.randn(1, 3, 40, 40))  # 25 patches -> 12 kept
    assert model.last_token_counts() == (1 + 12 + 4, 1 + 25 + 4)
    model(torch.randn(1, 3, 56, 72))  # 63 patches
    assert model.last_token_counts() == (1 + model.token_select.token_counts(63).kept[0] + 4, 1 + 63 + 4)
    model.eval()
    model(torch.randn(1, 3, 40, 40))  # evaluation does not count
    assert model.last_token_counts()[1] == 1 + 63 + 4


def test_detection_evaluation_gathers_every_image_once(shapes_coco):
    """The engine's evaluation collaborator: AP in % and the mean losses of the batches; images that a
    padded distributed shard repeats count once."""
    from torch.utils.data import DataLoader

    from toe.detection.evaluation import DetectionEvaluation
    from toe.engine import DistInfo, Precision

    val = build_coco_split(shapes_coco, "val", eval_transforms(48, 8))
    model = tiny_yolos().eval()
    criterion = SetCriterion(6, HungarianMatcher(1, 5, 2))
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    precision = Precision.from_flag(torch.device("cpu"), "auto", enabled=False)
    loader = DataLoader(val, batch_size=4, collate_fn=collate_detection)
    metrics = DetectionEvaluation(val.coco, criterion)(model, loader, precision, dist, show_progress=False)
    with torch.no_grad():
        batches = [collate_detection([val[i] for i in range(s, min(s + 4, len(val)))]) for s in (0, 4)]
        results = [r for images, targets in batches for r in detections(model(images), targets)]
        losses = [criterion(model(images), targets)["loss"].item() for images, targets in batches]
    expected = coco_metrics(val.coco, results)
    assert metrics["ap"] == pytest.approx(100 * expected["ap"]) and metrics["ar100"] == pytest.approx(
        100 * expected["ar100"]
    )
    assert metrics["loss"] == pytest.approx(sum(losses) / 2)
    repeated = DataLoader(
        torch.utils.data.Subset(val, [0, 1, 2, 3, 4, 5, 0, 1]), batch_size=4, collate_fn=collate_detection
    )
    again = DetectionEvaluation(val.coco)(model, repeated, precision, dist, show_progress=False)
    assert again["ap"] == pytest.approx(metrics["ap"]) and "loss" not in again


@pytest.mark.parametrize(
    "change, fragments",
    [
        ({"category_id": 42}, ["annotation 0 (id", "has category_id 42, not among the categories (1, 2, 3, 4, 5)"]),
        ({"image_id": 10**6}, ["annotation 0 (id", "names image_id 1000000, not among the images"]),
        ({"bbox": ["1", "2", "3", "4"]}, ["annotation 0", "bbox ['1', '2', '3', '4']", "4 finite numbers"]),
        ({"bbox": [1, 2, 3]}, ["annotation 0", "bbox [1, 2, 3]", "4 finite numbers"]),
        ({"bbox": [1, 2, -3, 4]}, ["annotation 0", "negative width or height"]),
    ],
)
def test_coco_files_are_checked_once_at_load_and_the_first_bad_annotation_named(
    shapes_coco, tmp_path, change, fragments
):
    import json
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(shapes_coco, root)
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0].update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(UserError) as error:
        build_coco_split(root, "train", None)
    assert str(path) in str(error.value) and all(f in str(error.value) for f in fragments), error.value


def test_boxes_without_area_are_left_out_and_counted(shapes_coco, tmp_path, capsys):
    import json
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(shapes_coco, root)
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    first = data["annotations"][0]
    first["bbox"][2] = 0.0
    path.write_text(json.dumps(data))
    train = build_coco_split(root, "train", None)
    assert "1 boxes without area (width or height 0) left out, as DETR does" in capsys.readouterr().out
    image_index = train.ids.index(first["image_id"])
    kept = len([a for a in data["annotations"] if a["image_id"] == first["image_id"] and not a.get("iscrowd")])
    assert len(train[image_index][1]["boxes"]) == kept - 1


def test_nan_outputs_stop_with_one_line_instead_of_a_scipy_error():
    """A diverging run (or NaN weights) gives NaN predictions; the matcher says so instead of scipy's
    'matrix contains invalid numeric entries'."""
    matcher = HungarianMatcher(1, 5, 2)
    logits, boxes = torch.randn(2, 4, 6), torch.rand(2, 4, 4)
    logits[1, 2, 0] = float("nan")
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
    with pytest.raises(UserError, match="outputs became NaN or infinite"):
        matcher(logits, boxes, targets)
    boxes[0, 0, 0] = float("inf")
    with pytest.raises(UserError, match="--lr"):
        matcher(torch.randn(2, 4, 6), boxes, targets)


def test_sixteen_bit_images_read_as_the_classification_loader_reads_them(shapes_coco, tmp_path):
    """YOLOS reads images with the classification loader's reader: a 16-bit greyscale PNG at half scale is mid
    grey, not clipped to white."""
    import shutil

    import numpy as np
    from PIL import Image

    root = tmp_path / "coco"
    shutil.copytree(shapes_coco, root)
    train = build_coco_split(root, "train", None)
    path, _ = train.samples[0]
    width, height = Image.open(path).size
    Image.fromarray(np.full((height, width), 32768, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    image, _ = train[0]
    assert image.mode == "RGB" and set(np.asarray(image).ravel().tolist()) == {128}


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_split_without_a_usable_box_is_refused(shapes_coco, tmp_path, split):
    """All crowd (or no annotation at all): training would learn "no object" only, and COCO's AP of a
    validation set without boxes is -1, which would then pick the "best" checkpoint."""
    import json
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(shapes_coco, root)
    path = root / "annotations" / f"instances_{split}2017.json"
    data = json.loads(path.read_text())
    for annotation in data["annotations"]:
        annotation["iscrowd"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="has no usable box"):
        build_coco_split(root, split, None)


def test_yolos_offers_the_engine_the_documented_protocol_of_a_model_that_selects_tokens_itself():
    """docs/architecture.md: a model with its own token handling implements ``SelectsTokensItself``; the
    engine's token accounting and ``has_toe`` work from that protocol alone."""
    from timm.models.vision_transformer import VisionTransformer

    from toe.engine.trainer import always_kept_tokens, step_tokens
    from toe.integration import SelectsTokensItself, has_toe

    model = tiny_yolos(mid=False)
    assert isinstance(model, SelectsTokensItself)
    assert not isinstance(
        VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2), SelectsTokensItself
    )
    assert not has_toe(model) and model.last_token_counts() is None and step_tokens(model) is None
    model.token_select = TokenSelect(expansion_step=[0, 1], keep_rate=[0.5, 1.0], initialization_keep_rate=0.25)
    model.token_select.update_current_stage(0)  # epoch 0: stage 1, half of the patches
    model.train()(torch.randn(2, 3, 48, 64))
    assert has_toe(model) and always_kept_tokens(model) == 1 + 4  # the class token and the [DET] tokens
    fed, full = step_tokens(model)
    assert full == 1 + 6 * 8 + 4 and fed == 1 + 24 + 4  # half of the 48 patches, class and [DET] on top
