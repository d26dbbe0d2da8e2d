"""Mixed precision choices that are legal but a trap: fp16 autocast on the CPU is emulated and slow."""

from __future__ import annotations

import torch

from toe.engine import Precision


def test_fp16_on_the_cpu_warns_and_bf16_does_not(capsys):
    precision = Precision.from_flag(torch.device("cpu"), "fp16")
    assert precision.dtype == torch.float16
    assert "warning: fp16 autocast on the CPU is emulated and many times slower than fp32" in capsys.readouterr().err
    for flag in ("bf16", "fp32", "auto"):
        Precision.from_flag(torch.device("cpu"), flag)
        assert capsys.readouterr().err == ""
