"""Object detection with ToE: YOLOS on timm's DeiT, DETR's matcher, loss and augmentation, COCO data and metrics.

- :mod:`.model`: the YOLOS detector ([DET] tokens, position embeddings per input size, ToE after block 0);
- :mod:`.backbone`: ImageNet weights for its backbone (DeiT, timm and this project's checkpoints);
- :mod:`.matcher`, :mod:`.criterion`: Hungarian matching and DETR's set loss;
- :mod:`.coco`, :mod:`.transforms`, :mod:`.boxes`: COCO-layout data, DETR's augmentation, box formats;
- :mod:`.evaluation`: the official COCO box metrics.
"""
