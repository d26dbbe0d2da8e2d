"""Errors raised by the library name flags in one spelling; each recipe's front end writes them as its users
typed them (toe.options.in_spelling_of / flags_spelled_by)."""

from __future__ import annotations

import argparse

import pytest

from toe.data.guard import CorruptImageError
from toe.errors import UserError
from toe.options import flag_names, flags_spelled_by, in_spelling_of
from toe.recipes import deit, efficienttrain, lvvit, vpt, yolos
from toe.recipes.skeleton import out_of_memory_advice


def underscored_parser() -> argparse.ArgumentParser:
    """Flags spelled as YOLOS and EfficientTrain spell them."""
    parser = argparse.ArgumentParser()
    for flag in ("--batch_size", "--data_path", "--lr", "--start_epoch"):
        parser.add_argument(flag)
    parser.add_argument("--skip-corrupt", action="store_true")
    return parser


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("--batch-size 64 is larger than the 16 images", "--batch_size 64 is larger than the 16 images"),
        ("--data-path /x does not exist", "--data_path /x does not exist"),
        ("--start_epoch 3 leaves nothing to train", "--start_epoch 3 leaves nothing to train"),  # its own
        ("--lr 3 and --skip-corrupt", "--lr 3 and --skip-corrupt"),  # the same in both spellings
        ("use the same --model", "use the same --model"),  # no counterpart: left as it is
        ("a-b--batch-size", "a-b--batch-size"),  # not a flag
        ("initialization_keep_rate 0.01 of 25", "--initialization-keep-rate 0.01 of 25"),  # the schedule's names
        ("--model-kwargs img_size=3, keep_rates", "--model-kwargs img_size=3, keep_rates"),  # no other word
    ],
)
def test_flags_are_written_as_the_parser_writes_them(message, expected):
    assert in_spelling_of(underscored_parser(), message) == expected


def test_the_error_keeps_its_class_and_other_errors_pass_through():
    parser = underscored_parser()
    with pytest.raises(CorruptImageError, match="--batch_size"):
        with flags_spelled_by(parser):
            raise CorruptImageError("--batch-size 3 of a corrupt image")
    with pytest.raises(ValueError, match="--batch-size"):
        with flags_spelled_by(parser):
            raise ValueError("--batch-size")  # a bug, not a user's mistake: untouched
    with pytest.raises(UserError, match="^--lr 1$"):
        with flags_spelled_by(argparse.ArgumentParser()):
            raise UserError("--lr 1")


def test_the_schedule_names_parameters_and_the_command_line_its_flags():
    assert (
        flag_names("initialization_keep_rate 0.01 of 4 patch tokens")
        == "--initialization-keep-rate 0.01 of 4 patch tokens"
    )


@pytest.mark.parametrize(
    ("recipe", "batch", "accumulation"),
    [
        (deit, "--batch-size", "--accum-iter"),
        (vpt, "--batch-size", "--accum-iter"),
        (efficienttrain, "--batch_size", "--update_freq"),
        (lvvit, "--batch-size", None),
        (yolos, "--batch_size", None),
    ],
)
def test_out_of_memory_advice_names_the_recipes_own_flags(recipe, batch, accumulation):
    advice = out_of_memory_advice(recipe.build_parser())
    assert f"smaller batch per process ({batch})" in advice and "(--amp-dtype bf16)" in advice
    if accumulation:
        assert f"gradient accumulation ({accumulation})" in advice
    else:
        assert "accumulation" not in advice
