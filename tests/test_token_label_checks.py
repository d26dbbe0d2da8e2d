"""Token-label folders that do not fit: another annotator, other images, another grid, NaN, bad paths."""

from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch
from helpers import assert_one_line_error, run_cli
from PIL import Image

from toe.data.label_record import RECORD_NAME
from toe.data.token_label import TokenLabelDataset
from toe.options import UserError, run_main
from toe.recipes import generate_label, lvvit

KWARGS = {"patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}
LVVIT = ["--model", "lvvit_s", "--img-size", "32", "--model-kwargs", "patch_size=4", "embed_dim=32", "depth=2"]
LVVIT += ["num_heads=2", "stem_chans=16", "-j", "0", "--no-progress", "-b", "16", "--device", "cpu", "--epochs", "1"]
LVVIT += ["--cooldown-epochs", "0", "--warmup-epochs", "0", "--token-label"]


def annotator_file(path, seed: int):
    torch.manual_seed(seed)
    model = timm.create_model("deit_tiny_patch16_224", num_classes=10, img_size=32, **KWARGS)
    args = {"model": "deit_tiny_patch16_224", "input_size": 32, "patch_size": 4}
    args["model_kwargs"] = ["embed_dim=32", "depth=2", "num_heads=2"]
    torch.save({"model": model.state_dict(), "epoch": 0, "args": args}, path)
    return path


@pytest.fixture(scope="module")
def made(tiny_data, tmp_path_factory):
    """Labels of the tiny data set by annotator A; annotator B has other weights."""
    root = tmp_path_factory.mktemp("made")
    a = annotator_file(root / "a.pth", 0)
    annotator_file(root / "b.pth", 1)
    run_main(generate_label.main, [str(x) for x in [tiny_data, root / "labels", "--checkpoint", a, "-j", "0"]])
    return root


def test_the_label_folder_records_its_annotator_and_images(made, tiny_data):
    record = json.loads((made / "labels" / RECORD_NAME).read_text())
    assert record["annotator"]["model"] == "deit_tiny_patch16_224" and record["annotator"]["img_size"] == 32
    assert record["annotator"]["crop_pct"] == 0.9  # the model's own, as upstream, when --crop-pct is not given
    assert record["weights_source"] == str(made / "a.pth") and "sha256" in record["annotator"]["weights"]
    assert record["data"]["images"] == 80 and record["data"]["classes"] == 10
    assert record["data"]["folder"] == str((tiny_data / "train").resolve())


def test_continuing_with_another_annotator_is_refused(made, tiny_data, tmp_path, capsys):
    labels = tmp_path / "labels"
    shutil.copytree(made / "labels", labels)
    removed = sorted(labels.rglob("*.pt"))[:40]
    for file in removed:
        file.unlink()
    status, _, err = run_cli(
        generate_label.main, [tiny_data, labels, "--checkpoint", made / "b.pth", "-j", "0", "--no-progress"], capsys
    )
    assert_one_line_error(status, err, f"LABELS {labels} holds labels of another annotator", "b.pth")
    assert not any(file.exists() for file in removed)  # nothing was added
    # the same annotator shown other crops of the images is another annotator too
    argv = [tiny_data, labels, "--checkpoint", made / "a.pth", "--crop-pct", "0.5", "-j", "0", "--no-progress"]
    status, _, err = run_cli(generate_label.main, argv, capsys)
    assert_one_line_error(status, err, "holds labels of another annotator", "crop 0.5")
    # the same weights under another name are the same annotator
    shutil.copy(made / "a.pth", tmp_path / "renamed.pth")
    status, out, err = run_cli(
        generate_label.main,
        [tiny_data, labels, "--checkpoint", tmp_path / "renamed.pth", "-j", "0", "--no-progress"],
        capsys,
    )
    assert status == 0 and "wrote 40 label files" in out, err


def test_labels_of_other_images_with_the_same_names_are_refused(made, tiny_data, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    for path in sorted((other / "train").rglob("*.png"))[::7]:
        Image.open(path).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(path)
    argv = [other, *LVVIT, "--token-label-data", made / "labels"]
    status, _, err = run_cli(lvvit.main, argv, capsys)
    assert_one_line_error(status, err, f"--token-label-data {made / 'labels'} was made for other images")
    status, _, err = run_cli(
        generate_label.main, [other, made / "labels", "--checkpoint", made / "a.pth", "-j", "0"], capsys
    )
    assert_one_line_error(status, err, f"LABELS {made / 'labels'} was made for other images")


def test_a_label_file_with_nan_is_named(made, tiny_data, tmp_path, capsys):
    labels = tmp_path / "labels"
    shutil.copytree(made / "labels", labels)
    bad = sorted(labels.rglob("*.pt"))[5]
    label_map = torch.load(bad, weights_only=True)
    label_map[0, 0, 2, 3] = float("nan")
    torch.save(label_map, bad)
    status, _, err = run_cli(lvvit.main, [tiny_data, *LVVIT, "--token-label-data", labels], capsys)
    assert_one_line_error(status, err, f"token label file {bad} holds NaN")
    assert "--lr" not in err


def test_a_label_file_of_another_grid_is_named(made, tiny_data, tmp_path):
    labels = tmp_path / "labels"
    shutil.copytree(made / "labels", labels)
    files = sorted(labels.rglob("*.pt"))
    torch.save(torch.load(files[9], weights_only=True)[..., :4, :4].clone(), files[9])
    dataset = TokenLabelDataset(tiny_data / "train", labels, transform=lambda image, label_map: (image, label_map, 0))
    assert dataset.label_grid == (8, 8)
    index = dataset.label_files.index(files[9])
    with pytest.raises(UserError, match=rf"token label file {files[9]} holds a 4x4 map, the others 8x8"):
        dataset[index]


def test_labels_of_another_grid_throughout_are_resampled_and_said_once(made, tiny_data, tmp_path, capsys):
    labels = tmp_path / "labels"
    shutil.copytree(made / "labels", labels)
    for file in labels.rglob("*.pt"):  # 4x4 maps for the model's 8x8 token grid
        torch.save(torch.load(file, weights_only=True)[..., :4, :4].clone(), file)
    (tmp_path / "not_a_checkpoint.pth").write_text("x")  # stops the run once its data and model are set up
    argv = [tiny_data, *LVVIT, "--token-label-data", labels, "--resume", tmp_path / "not_a_checkpoint.pth"]
    status, out, err = run_cli(lvvit.main, argv, capsys)
    assert_one_line_error(status, err, "not_a_checkpoint.pth")
    assert out.count("note: the label files hold 4x4 maps; each is resampled to the 8x8 token grid") == 1


def test_labels_without_a_record_are_used_with_a_warning(made, tiny_data, tmp_path, capsys):
    labels = tmp_path / "labels"
    shutil.copytree(made / "labels", labels)
    (labels / RECORD_NAME).unlink()
    TokenLabelDataset(tiny_data / "train", labels, transform=None)
    assert f"--token-label-data {labels} has no {RECORD_NAME}" in capsys.readouterr().err


def test_generate_label_output_mistakes(made, tiny_data, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    truncated = data / "train" / "ring" / "00004.png"
    truncated.write_bytes(truncated.read_bytes()[:80])
    annotator = ["--checkpoint", made / "a.pth", "--no-progress"]
    cases = [
        ([tiny_data, tmp_path / "file", *annotator, "-j", "0"], ["LABELS", "is a file, not a folder"]),
        ([tiny_data, tiny_data / "train" / "labels", *annotator, "-j", "0"], ["lies inside the data folder"]),
        ([data, tmp_path / "l0", *annotator, "-j", "0"], ["cannot read image", str(truncated)]),
        ([data, tmp_path / "l1", *annotator, "-j", "1"], ["cannot read image", str(truncated)]),
    ]
    for argv, fragments in cases:
        status, _, err = run_cli(generate_label.main, argv, capsys)
        assert_one_line_error(status, err, *fragments)
    assert not (tiny_data / "train" / "labels").exists()
