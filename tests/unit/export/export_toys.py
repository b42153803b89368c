"""A YOLOv8n whose output depends on the image, in export mode, for the ONNX export tests."""

from __future__ import annotations

import torch
from torch import nn

IMGSZ = 64


def yolo_for_export() -> nn.Module:
    """YOLOv8n in export mode with He-initialised convs and varied BatchNorm statistics, so
    that its output depends on the image, as a trained model's does.

    With PyTorch's default init the activations fade layer by layer and every image gives
    nearly the same output, which would make a parity check unable to fail.
    """
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module.weight.requires_grad:
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.normal_(module.bias, std=0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.5, 1.5)
                nn.init.normal_(module.bias, std=0.1)
                module.running_mean.normal_(std=0.1)
                module.running_var.uniform_(0.5, 1.5)
    head = model.model[-1]
    head.export, head.format = True, "onnx"
    return model
