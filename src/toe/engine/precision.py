"""Mixed precision: native autocast (fp16 with a gradient scaler, or bf16), backward and the optimizer step.

``--amp-dtype auto`` is fp16 autocast with a gradient scaler on CUDA, as the upstream recipes train (native
AMP, or apex O1 for ``--apex-amp``), and full fp32 on the CPU; bf16 is asked for explicitly
(``--amp-dtype bf16``). The flags ``--apex-amp`` and ``--native-amp`` of the upstream recipes map to native
AMP (apex is not used).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable

import torch
from timm.utils import dispatch_clip_grad

AMP_DTYPES = ("auto", "bf16", "fp16", "fp32")


class Precision:
    """Autocast context, scaled backward and clipped optimizer step for one device and dtype."""

    def __init__(self, device: torch.device, dtype: torch.dtype | None) -> None:
        self.device_type = device.type
        self.dtype = dtype
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=dtype == torch.float16)

    @classmethod
    def from_flag(cls, device: torch.device, amp_dtype: str, enabled: bool = True) -> Precision:
        """``amp_dtype`` one of AMP_DTYPES (``auto``: fp16 on CUDA, fp32 elsewhere); ``enabled=False`` means
        fp32 whatever the dtype. Only builds objects: the device need not be present."""
        if not enabled or amp_dtype == "fp32" or (amp_dtype == "auto" and device.type != "cuda"):
            return cls(device, None)
        if amp_dtype == "fp16" and device.type == "cpu" and int(os.environ.get("RANK", "0")) == 0:
            print(
                "warning: fp16 autocast on the CPU is emulated and many times slower than fp32; "
                "use --amp-dtype bf16, or fp32 (no AMP)",
                file=sys.stderr,
            )
        return cls(device, torch.bfloat16 if amp_dtype == "bf16" else torch.float16)

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        parameters: Iterable[torch.nn.Parameter],
        clip_grad: float | None = None,
        clip_mode: str = "norm",
    ) -> None:
        """Unscale, clip (when asked), step and update the scale; skipped steps on fp16 overflow."""
        if clip_grad is not None:
            self.scaler.unscale_(optimizer)
            dispatch_clip_grad(parameters, clip_grad, mode=clip_mode)
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scaler.load_state_dict(state)
