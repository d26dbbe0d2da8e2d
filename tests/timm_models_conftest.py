"""conftest.py for timm's own model tests (tests/test_models.py of the installed timm's sdist), copied next to
them by tests/run_timm_model_tests.py: importing toe registers the LV-ViT models in timm's registry before the
test module lists the models it checks."""

import toe  # noqa: F401

TIMM_MARKERS = ("base", "cfg", "cfg_nonstd", "forward", "backward", "torchscript", "features", "fxforward")
TIMM_MARKERS += ("fxbackward", "timeout")


def pytest_configure(config):
    for marker in TIMM_MARKERS:
        config.addinivalue_line("markers", f"{marker}: a marker of timm's test suite")
