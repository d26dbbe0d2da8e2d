"""Run timm's own model test suite on the LV-ViT models this project registers in timm (``make test``).

timm's tests/test_models.py is not installed with timm: ``make install`` takes it once from the sdist of the
installed version (``--fetch``: ``pip download --no-deps --no-binary :all: timm==<version>``, PyPI) into
``.cache/timm-<version>/`` of the repository; the tests run it there, without the network, with
tests/timm_models_conftest.py as its conftest.py, ``-k lvvit``: forward, backward, default configuration,
features_only, FX and TorchScript of lvvit_t/s/m/l (32 tests).

    python tests/run_timm_model_tests.py --fetch          # once (make install)
    python tests/run_timm_model_tests.py [extra pytest flags]
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fetch_test_models(version: str, cache: Path) -> Path:
    """timm's tests/test_models.py of ``version`` into ``cache``, from its sdist on PyPI unless cached."""
    target = cache / "test_models.py"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
        subprocess.run([*command, f"timm=={version}", "--dest", folder], check=True)
        (sdist,) = Path(folder).glob("timm-*.tar.gz")
        with tarfile.open(sdist) as archive:
            member = archive.getmember(f"timm-{version}/tests/test_models.py")
            data = archive.extractfile(member).read()
    temp = cache / ".test_models.py.tmp"
    temp.write_bytes(data)
    os.replace(temp, target)
    return target


def main(argv: list[str]) -> int:
    version = importlib.metadata.version("timm")
    cache = ROOT / ".cache" / f"timm-{version}"
    if argv == ["--fetch"]:
        fetch_test_models(version, cache)
        return 0
    tests = cache / "test_models.py"
    if not tests.is_file():
        print(f"error: {tests} is missing: `make install` (or --fetch) fetches it once", file=sys.stderr)
        return 2
    shutil.copyfile(ROOT / "tests" / "timm_models_conftest.py", cache / "conftest.py")
    command = [sys.executable, "-m", "pytest", str(tests), "-k", "lvvit", "-q", "-p", "no:cacheprovider"]
    return subprocess.run([*command, "-W", "ignore::DeprecationWarning", *argv], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
