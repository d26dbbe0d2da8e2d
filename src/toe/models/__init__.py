"""Models that timm lacks, registered in timm's registry on import: the LV-ViT family (``lvvit_t/s/m/l``);
and :mod:`.factory`, model creation for every command (importing it registers them)."""

from .factory import check_input_size, create_model, parse_model_kwargs
from .lvvit import LVViT, scatter_tokens, swap_box

__all__ = ["LVViT", "check_input_size", "create_model", "parse_model_kwargs", "scatter_tokens", "swap_box"]
