"""Token labeling data: label-aware transforms keep labels on their pixels, roi_align targets, the loss,
label files and their errors, per-location annotator predictions."""

from __future__ import annotations

import random

import numpy as np
import pytest
import timm
import torch
from helpers import tiny_vit
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from torch.utils.data import DataLoader
from torchvision import transforms as T

from toe.data.label_transforms import (
    HorizontalFlipWithLabels,
    ImageOnly,
    LabelRandAugment,
    RandomResizedCropWithBox,
    TokenLabelTransform,
    build_token_label_transform,
)
from toe.data.token_label import TokenLabelDataset, TokenLabelTargets, dense_label_maps
from toe.engine.losses import TokenLabelCrossEntropy
from toe.options import UserError
from toe.recipes.generate_label import dense_logits

# a 96 x 64 image of four coloured quadrants = classes 0-3; its label map has 4-pixel cells (24 x 16)
COLOURS = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [128, 128, 128]]) / 255  # + fill
WIDTH, HEIGHT, CELL = 96, 64, 4


def quadrant_classes(width: int, height: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return (xs >= width // 2).long() + 2 * (ys >= height // 2).long()


def quadrant_image_and_map() -> tuple[Image.Image, torch.Tensor]:
    classes = quadrant_classes(WIDTH, HEIGHT)
    pixels = (COLOURS[classes] * 255).round().to(torch.uint8).numpy()
    cells = quadrant_classes(WIDTH // CELL, HEIGHT // CELL)
    indices = torch.stack([(cells + k) % 5 for k in range(5)])  # own class first, then the others
    scores = torch.zeros(5, *cells.shape)
    scores[0] = 10.0
    return Image.fromarray(pixels), torch.stack((scores, indices.float())).half()


def pixel_classes(image: torch.Tensor) -> torch.Tensor:
    """Class (0-3, 4 = fill) of every pixel of a [3, H, W] image in [0, 1]: the nearest colour."""
    distance = ((image.permute(1, 2, 0).unsqueeze(2) - COLOURS) ** 2).sum(-1)
    return distance.argmin(-1)


def seed(value: int) -> None:
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)


SPATIAL = {"rotate": ["Rotate"], "shear": ["ShearX", "ShearY"], "translate": ["TranslateXRel", "TranslateYRel"]}


@pytest.mark.parametrize("ops", ["crop_flip", "rotate", "shear", "translate"])
def test_label_aware_transforms_keep_every_token_label_on_its_pixels(ops):
    flip, flips = HorizontalFlipWithLabels(0.5), []

    def counted_flip(img, label_map, box):
        out = flip(img, label_map, box)
        flips.append(not torch.equal(out[1], label_map))
        return out

    steps = [counted_flip]  # TokenLabeling's order: flip, RandAugment of the whole image and map, crop last
    if ops != "crop_flip":
        params = {"interpolation": Image.NEAREST, "img_mean": (128, 128, 128)}
        steps.append(LabelRandAugment(rand_augment_transform("rand-n1-m9-mstd0.5-p1.0", params, SPATIAL[ops])))
    steps.append(RandomResizedCropWithBox(32, scale=(0.2, 1.0), interpolation="nearest"))
    transform = TokenLabelTransform(steps, [torch.nn.Identity()])
    transform.image_steps.transforms[0] = lambda img: torch.from_numpy(np.array(img)).permute(2, 0, 1) / 255
    targets = TokenLabelTargets(num_classes=5, size=4, smoothing=0.0)
    image, label_map = quadrant_image_and_map()
    checked = 0
    for trial in range(30):
        seed(trial)
        out, out_map, box = transform(image, label_map)
        _, made = targets(out[None], {"label_map": out_map[None], "box": box[None], "label": torch.tensor([0])})
        dense = made["dense"][0].view(4, 4, 5)
        pixels = pixel_classes(out).view(4, 8, 4, 8).permute(0, 2, 1, 3).reshape(4, 4, 64)
        for row in range(4):
            for col in range(4):
                counts = torch.bincount(pixels[row, col], minlength=5)
                majority = int(counts.argmax())
                if majority < 4 and counts[majority] >= 0.9 * 64:  # a cell of one class: its label says so
                    assert int(dense[row, col].argmax()) == majority, (trial, row, col)
                    checked += 1
                elif counts[4] == 64:  # only fill pixels: no confident class (roi_align's bilinear samples at
                    # the border of the map's fill cells may reach a labelled cell a little)
                    assert dense[row, col].max() < 0.5, (trial, row, col)
    assert checked > 100
    assert 5 < sum(flips) < 25  # about half the images were flipped (with their maps)


def test_colour_ops_leave_the_label_map_alone():
    ops = LabelRandAugment(rand_augment_transform("rand-n2-m9-p1.0", {}, ["Invert", "Solarize", "Posterize"]))
    image, label_map = quadrant_image_and_map()
    seed(0)
    out, out_map, box = ops(image, label_map, (0.1, 0.2, 0.6, 0.9))
    assert np.asarray(out).tolist() != np.asarray(image).tolist()
    assert torch.equal(out_map, label_map) and box == (0.1, 0.2, 0.6, 0.9)


def test_the_recipe_transform_runs_in_tokenlabelings_order():
    """Flip, then RandAugment (or colour jitter) of the whole image and its map, then the crop."""
    steps = build_token_label_transform(32).label_steps
    assert [type(step) for step in steps] == [HorizontalFlipWithLabels, LabelRandAugment, RandomResizedCropWithBox]
    steps = build_token_label_transform(32, auto_augment="none", color_jitter=0.4).label_steps
    assert [type(step) for step in steps] == [HorizontalFlipWithLabels, ImageOnly, RandomResizedCropWithBox]
    assert isinstance(steps[1].transform, T.ColorJitter)


def test_the_recipe_transform_gives_image_map_and_box():
    image, label_map = quadrant_image_and_map()
    seed(1)
    out, out_map, box = build_token_label_transform(32)(image, label_map)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert out_map.shape == label_map.shape and out_map.dtype == torch.float16
    assert box.shape == (4,) and 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
    with pytest.raises(UserError, match="--aa"):
        build_token_label_transform(32, auto_augment="augmix-m5")


def two_class_maps() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 4 x 4 top-5 maps over 6 classes: sample 0 is class 2 on the left and 5 on the right, sample 1 all 1."""
    scores = torch.tensor([8.0, 1, 1, 1, 1]).view(5, 1, 1).expand(5, 4, 4)
    left, right, other = torch.tensor([2, 0, 1, 3, 4]), torch.tensor([5, 0, 1, 3, 4]), torch.tensor([1, 0, 2, 3, 4])
    first = torch.cat((left.view(5, 1, 1).expand(5, 4, 2), right.view(5, 1, 1).expand(5, 4, 2)), dim=2)
    second = other.view(5, 1, 1).expand(5, 4, 4)
    maps = torch.stack([torch.stack((scores, first.float())), torch.stack((scores, second.float()))]).half()
    expected_logits = torch.tensor([[1.0, 1, 8, 1, 1, 0], [1.0, 1, 0, 1, 1, 8]])  # left, right cells of sample 0
    return maps, expected_logits


def test_roi_align_targets_shapes_values_and_smoothing():
    maps, logits = two_class_maps()
    assert torch.equal(dense_label_maps(maps, 6)[0, :, 0, 0], logits[0])
    full = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]])
    targets = {"label_map": maps, "box": full, "label": torch.tensor([4, 1])}
    images = torch.randn(2, 3, 8, 8)
    out_images, made = TokenLabelTargets(num_classes=6, size=2, smoothing=0.1)(images, targets)
    assert out_images is images and made["cls"].shape == (2, 6) and made["dense"].shape == (2, 4, 6)

    def smooth(p):  # TokenLabeling's: p * (1 - s + s/K) + s/K
        return p * (0.9 + 0.1 / 6) + 0.1 / 6

    # 2 x 2 cells: the left column is class 2's logits, the right column class 5's, after softmax and smoothing
    dense = made["dense"][0]
    for cell, side in ((0, 0), (1, 1), (2, 0), (3, 1)):
        torch.testing.assert_close(dense[cell], smooth(logits[side].softmax(0)))
    torch.testing.assert_close(made["cls"][0], smooth(logits.mean(0).softmax(0)))  # 1 x 1: the whole box
    assert torch.allclose(made["dense"].sum(-1), torch.full((2, 4), 1 + 0.1 / 6)) and made["dense"].min() >= 0.1 / 6

    left = {**targets, "box": torch.tensor([[0.0, 0, 0.5, 1], [0, 0, 1, 1]])}
    _, made = TokenLabelTargets(num_classes=6, size=2, smoothing=0.0)(images, left)
    torch.testing.assert_close(made["cls"][0], logits[0].softmax(0))  # the box holds class 2 only
    assert (made["dense"][0].argmax(-1) == 2).all()

    _, made = TokenLabelTargets(num_classes=6, size=1, smoothing=0.1, ground_truth=True)(images, targets)
    assert set(made) == {"cls"}  # size 1: the label map's class target alone (upstream ignores --ground-truth)
    torch.testing.assert_close(made["cls"][0], smooth(logits.mean(0).softmax(0)))


def test_ground_truth_blends_with_tokenlabelings_ratios():
    """cls * r + smoothed one-hot * (1 - r): r = 0.9 where the label map's top class is wrong, 0.5 where right."""
    maps, _ = two_class_maps()
    full = torch.tensor([[0.0, 0, 1, 1], [0, 0, 1, 1]])
    targets = {"label_map": maps, "box": full, "label": torch.tensor([4, 1])}  # sample 1's map says 1: right
    images = torch.randn(2, 3, 8, 8)
    _, plain = TokenLabelTargets(num_classes=6, size=2, smoothing=0.1)(images, targets)
    _, made = TokenLabelTargets(num_classes=6, size=2, smoothing=0.1, ground_truth=True)(images, targets)
    one_hot = torch.nn.functional.one_hot(torch.tensor([4, 1]), 6).float() * 0.9 + 0.1 / 6
    torch.testing.assert_close(made["cls"][0], 0.9 * plain["cls"][0] + 0.1 * one_hot[0])
    torch.testing.assert_close(made["cls"][1], 0.5 * plain["cls"][1] + 0.5 * one_hot[1])
    torch.testing.assert_close(made["dense"], plain["dense"])


def test_upstream_roi_order_reads_the_transposed_region():
    """TokenLabeling passes (top, left, bottom, right) to roi_align as (x1, y1, x2, y2)."""
    maps, logits = two_class_maps()  # sample 0: class 2 in the left half, class 5 in the right half
    box = torch.tensor([[0.0, 0, 0.5, 1], [0, 0, 1, 1]])  # (x0, y0, x1, y1): sample 0's left half
    left_half = {"label_map": maps, "box": box, "label": torch.tensor([0, 1])}
    images = torch.randn(2, 3, 8, 8)
    _, ours = TokenLabelTargets(num_classes=6, size=2, smoothing=0.0)(images, left_half)
    _, upstream = TokenLabelTargets(num_classes=6, size=2, smoothing=0.0, roi_order="upstream")(images, left_half)
    torch.testing.assert_close(ours["cls"][0], logits[0].softmax(0))  # the left half: class 2 only
    torch.testing.assert_close(upstream["cls"][0], logits.mean(0).softmax(0))  # the top half: both classes
    assert (upstream["dense"][0].view(2, 2, 6).argmax(-1) == torch.tensor([[2, 5], [2, 5]])).all()
    torch.testing.assert_close(upstream["cls"][1], ours["cls"][1])  # the whole map either way


def soft_ce(logits, target):
    return (-target * logits.log_softmax(-1)).sum(-1).mean()


def test_token_label_loss_mixes_the_class_target_with_lambda():
    torch.manual_seed(0)
    cls_logits, aux_logits = torch.randn(4, 6), torch.randn(4, 9, 6)
    cls_target, dense_target = torch.rand(4, 6).softmax(-1), torch.rand(4, 9, 6).softmax(-1)
    loss = TokenLabelCrossEntropy(cls_weight=0.5, dense_weight=2.0)
    value = loss(None, (cls_logits, aux_logits, 0.75), {"cls": cls_target, "dense": dense_target})
    mixed = 0.75 * cls_target + 0.25 * cls_target.flip(0)
    expected = 0.5 * soft_ce(cls_logits, mixed) + 2.0 * soft_ce(aux_logits.reshape(-1, 6), dense_target.reshape(-1, 6))
    torch.testing.assert_close(value, expected)
    plain = loss(None, cls_logits, {"cls": cls_target})  # token-label size 1: one prediction per image
    torch.testing.assert_close(plain, 0.5 * soft_ce(cls_logits, cls_target))


@pytest.fixture()
def labelled(tiny_data, tmp_path):
    """Label files [2, 5, 3, 3] for the tiny dataset's training images."""
    labels = tmp_path / "labels"
    for image in sorted((tiny_data / "train").rglob("*.png")):
        target = labels / image.relative_to(tiny_data / "train").with_suffix(".pt")
        target.parent.mkdir(parents=True, exist_ok=True)
        label_map = torch.stack((torch.rand(5, 3, 3), torch.randint(0, 10, (5, 3, 3)).float())).half()
        torch.save(label_map, target)
    return labels


def test_dataset_pairs_images_with_their_label_maps(tiny_data, labelled):
    dataset = TokenLabelDataset(tiny_data / "train", labelled, build_token_label_transform(32))
    assert len(dataset) == 80 and dataset.num_classes == 10
    path, label = dataset.samples[13]
    stored = torch.load(labelled / dataset.classes[label] / (path.rsplit("/", 1)[1][:-4] + ".pt"))
    seed(0)
    image, target = dataset[13]
    assert image.shape == (3, 32, 32) and target["label"] == label
    assert (
        target["label_map"].shape == (2, 5, 3, 3)
        and target["label_map"][1].unique().tolist() <= stored[1].unique().tolist()
    )
    images, batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert (
        images.shape == (4, 3, 32, 32) and batch["label_map"].shape == (4, 2, 5, 3, 3) and batch["box"].shape == (4, 4)
    )


def test_dataset_errors_name_the_label_file(tiny_data, labelled):
    transform = build_token_label_transform(32)
    files = sorted(labelled.rglob("*.pt"))
    files[5].unlink()
    with pytest.raises(UserError, match=r"no label file for 1 of 80 training images, e\.g\. .*\.pt"):
        TokenLabelDataset(tiny_data / "train", labelled, transform)
    torch.save(torch.zeros(2, 5, 3, 3, dtype=torch.float16), files[5])
    torch.save(torch.zeros(2, 4, 3, 3), files[0])
    with pytest.raises(UserError, match=rf"{files[0]} holds \[2, 4, 3, 3\], expected a \[2, 5, H, W\]"):
        TokenLabelDataset(tiny_data / "train", labelled, transform)
    torch.save(torch.stack((torch.rand(5, 3, 3), torch.full((5, 3, 3), 10.0))).half(), files[0])
    with pytest.raises(UserError, match="class indices outside 0..9"):
        TokenLabelDataset(tiny_data / "train", labelled, transform)
    files[0].write_text("not a tensor file")
    with pytest.raises(UserError, match="is not readable"):
        TokenLabelDataset(tiny_data / "train", labelled, transform)
    with pytest.raises(UserError, match="--token-label-data .* does not exist"):
        TokenLabelDataset(tiny_data / "train", labelled / "nowhere", transform)


def test_dense_logits_of_a_cnn_average_to_its_logits():
    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=7).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        dense = dense_logits(model, images)
        assert dense.shape == (2, 7, 2, 2)  # stride 32
        torch.testing.assert_close(dense.mean((2, 3)), model(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "vit_medium_patch16_reg4_gap_256", "lvvit_s"])
def test_dense_logits_of_a_vit_classify_every_patch_token(name):
    model = tiny_vit(name, seed=0, depth=2, num_classes=7).eval()
    with torch.no_grad():
        images = torch.randn(2, 3, 32, 32)
        dense = dense_logits(model, images)
        if name == "lvvit_s":  # LV-ViT: its dense auxiliary head on every patch token, as TokenLabeling
            expected = model.aux_head(model.forward_tokens(images)[:, 1:])
        else:
            expected = model.head(model.fc_norm(model.forward_features(images)[:, model.num_prefix_tokens :]))
    assert dense.shape == (2, 7, 8, 8)
    torch.testing.assert_close(dense.flatten(2).transpose(1, 2), expected, rtol=1e-4, atol=1e-5)
