"""timm train.py-style YAML configs: ``-c/--config FILE`` supplies flag defaults, the command line wins, and
the resolved flags are saved as ``args.yaml`` in the run folder (usable with ``-c`` again)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import yaml

from ..engine import DistInfo
from ..errors import UserError
from ..files import write_text_atomically
from ..options import ArgumentParser
from .run_folder import plain_args


def parse_with_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` with the values of its ``-c/--config`` file (if any) as ``parser``'s defaults."""
    config_parser = ArgumentParser(prog=parser.prog, add_help=False)
    config_parser.add_argument("-c", "--config", default="")
    known, _ = config_parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**read_config(parser, known.config))
    return parser.parse_args(argv)


def read_config(parser: argparse.ArgumentParser, path: str) -> dict:
    """A YAML mapping of flag names (``batch_size`` or ``batch-size``) to values, checked like flags."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--config {file}: no such file")
    try:
        values = yaml.safe_load(file.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"--config {file} is not valid YAML ({str(error).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"--config {file} must hold a mapping of flag names to values")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    defaults = {}
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        if dest == "config" or (dest in parser._defaults and dest not in actions):
            continue  # written into args.yaml, not a flag
        if dest not in actions:
            raise UserError(f"--config {file}: unknown key {key!r} (keys are flag names, e.g. batch_size)")
        defaults[dest] = _convert(actions[dest], value, file, key)
    return defaults


def save_args_yaml(output_dir: Path | None, args: argparse.Namespace, dist: DistInfo) -> None:
    """Write the resolved flags to ``output_dir/args.yaml`` (main process, atomically)."""
    if output_dir is None or not dist.is_main:
        return
    write_text_atomically(output_dir / "args.yaml", yaml.safe_dump(plain_args(args), sort_keys=False))


def _convert(action: argparse.Action, value, file: Path, key: str):
    """Check and convert ``value`` as the command line would for ``action``: switches take true/false, flags
    of one value a scalar, flags of several values a list of the right length; every value goes through the
    flag's type (so YAML's string '1e-3' becomes a float and out-of-range values are refused) and choices."""
    where = f"--config {file}: {key}"
    if action.nargs == 0:  # store_true, store_false, --x/--no-x
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}")
        return value
    if value is None and action.default is None:
        return None  # the flag's own "not given"
    if action.nargs in (None, "?"):
        return _scalar(action, value, where)
    if not isinstance(value, list):
        raise UserError(f"{where} takes a list of values (like the flag), got {value!r}")
    if isinstance(action.nargs, int) and len(value) != action.nargs:
        raise UserError(f"{where} needs {action.nargs} values, got {len(value)}")
    if action.nargs == "+" and not value:
        if action.default == []:  # the flag's own "not given" (args.yaml records it so)
            return []
        raise UserError(f"{where} needs at least one value")
    return [_scalar(action, item, where) for item in value]


def _scalar(action: argparse.Action, value, where: str):
    """One value of ``action``'s type: YAML numbers and strings only (not true/false, lists or mappings)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(f"{where} must be a single {_type_name(action)}, got {value!r}")
    if action.type is not None:
        try:
            value = cast(Callable[[str], Any], action.type)(str(value))  # a converter, not a registered name
        except argparse.ArgumentTypeError as error:
            raise UserError(f"{where}: {error}") from None
        except (TypeError, ValueError):
            raise UserError(f"{where}: {value!r} is not a valid value") from None
    else:
        value = str(value)
    if action.choices is not None and value not in action.choices:
        raise UserError(f"{where} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def _type_name(action: argparse.Action) -> str:
    names: dict[object, str] = {int: "whole number", float: "number", None: "string"}
    named = getattr(action.type, "__name__", "")  # the converters of toe.flag_types
    return names.get(action.type) or (named if named in ("number", "whole number") else "value")
