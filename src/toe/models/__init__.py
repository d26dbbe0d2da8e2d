"""Models that timm lacks, registered in timm's registry on import: the LV-ViT family (``lvvit_t/s/m/l``)."""

from .lvvit import LVViT, scatter_tokens, swap_box

__all__ = ["LVViT", "scatter_tokens", "swap_box"]
