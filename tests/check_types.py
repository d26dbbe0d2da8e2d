"""Type check src/toe with mypy against a baseline that may only shrink.

    python tests/check_types.py            # fails on any error not in tests/mypy_baseline.txt
    python tests/check_types.py --update   # rewrites the baseline once errors are gone

tests/mypy_baseline.txt holds the errors mypy still reports, one per line as
``path: [code] message`` without line numbers, so that an edit elsewhere in a file does not
touch it. The check fails when mypy reports an error the baseline does not hold (a new
one, or one more of the same), printing it with its line number; it also fails when
baselined errors are gone, asking for ``--update`` so that they cannot come back
unnoticed. ``--update`` only removes lines: it refuses while there are new errors, unless
``--allow-new`` (meant for re-recording after an upgrade of mypy or of torch, whose type
information decides much of what mypy reports).
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "tests" / "mypy_baseline.txt"
# the packages whose versions decide what mypy reports: written in the baseline's header
VERSIONED = ("mypy", "torch", "numpy", "timm", "matplotlib")


def versions() -> str:
    found = []
    for name in VERSIONED:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return ", ".join(found)


def normalise(error: dict) -> str:
    """``path: [code] message`` with any line number in the message left out."""
    message = re.sub(r"\bline \d+", "line N", " ".join(str(error["message"]).split()))
    return f"{error['file']}: [{error.get('code') or 'misc'}] {message}"


def run_mypy() -> list[dict]:
    """The errors mypy reports on the files named in pyproject.toml's [tool.mypy] section."""
    command = [sys.executable, "-m", "mypy", "--output", "json", "--no-error-summary"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    errors: list[dict] = []
    unparsed = []
    for line in proc.stdout.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            unparsed.append(line)
            continue
        if record.get("severity") == "error":
            errors.append(record)
    if proc.returncode not in (0, 1) or unparsed or (proc.returncode == 1 and not errors):
        output = "\n".join([*unparsed, proc.stderr.strip()]).strip()
        sys.exit(f"check_types: mypy did not run (exit status {proc.returncode}): {output or 'no output'}")
    return errors


def read_baseline() -> tuple[collections.Counter[str], str]:
    """The baselined errors, and the versions line from its header ('' if none)."""
    if not BASELINE.exists():
        return collections.Counter(), ""
    entries: collections.Counter[str] = collections.Counter()
    recorded = ""
    for line in BASELINE.read_text().splitlines():
        if line.startswith("# recorded with:"):
            recorded = line.removeprefix("# recorded with:").strip()
        elif line.strip() and not line.startswith("#"):
            entries[line] += 1
    return entries, recorded


def write_baseline(entries: collections.Counter[str]) -> None:
    header = [
        "# mypy errors in src/toe still to fix: tests/check_types.py fails on any error not listed here.",
        "# One error a line, `path: [code] message` without line numbers; a line repeats once per error.",
        "# Shrink it with `python tests/check_types.py --update` after fixing some.",
        f"# recorded with: {versions()}",
    ]
    BASELINE.write_text("\n".join(header + sorted(entries.elements())) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update", action="store_true", help="rewrite the baseline without the errors that are gone")
    parser.add_argument(
        "--allow-new", action="store_true", help="with --update: also record new errors (after upgrading mypy or torch)"
    )
    args = parser.parse_args(argv)

    errors = run_mypy()
    current = collections.Counter(normalise(error) for error in errors)
    baseline, recorded = read_baseline()
    new = current - baseline
    gone = baseline - current
    relative = BASELINE.relative_to(ROOT)

    if new and not (args.update and args.allow_new):
        # name each new error where it is: for an entry that repeats, every place mypy reports it
        where = [
            f"{error['file']}:{error['line']}: [{error.get('code') or 'misc'}] {error['message']}"
            for error in sorted(errors, key=lambda error: (error["file"], error["line"], error["column"]))
            if normalise(error) in new
        ]
        print(f"check_types: {sum(new.values())} new mypy error(s), not in {relative}:")
        for line in where:
            print(f"  {line}")
        if recorded and recorded != versions():
            print(f"  (the baseline was recorded with {recorded}; installed: {versions()})")
        if gone:
            print(f"  ({sum(gone.values())} baselined error(s) are gone: an error that only moved to another file is")
            print("  both; record the move with: python tests/check_types.py --update --allow-new)")
        print("Fix them (or, where a check is wrong, add `# type: ignore[code]` with the reason).")
        return 1
    if args.update:
        write_baseline(current)
        print(
            f"check_types: {relative} rewritten: {sum(current.values())} error(s), "
            f"{sum(gone.values())} removed, {sum(new.values())} added"
        )
        return 0
    if gone:
        print(f"check_types: {sum(gone.values())} baselined mypy error(s) are gone, well done:")
        for line in sorted(gone.elements()):
            print(f"  {line}")
        print(f"Shrink {relative} so they cannot come back: python tests/check_types.py --update")
        return 1
    print(f"check_types: no new mypy errors ({sum(current.values())} baselined in {relative})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
