"""ResNet backbones (torchvision) with named stages, so every method and analysis reads res2..res5 the same way.

``width`` scales every stage (64 = torchvision's networks); tests use e.g. resnet18 at width 8. The module keeps
torchvision's parameter names (conv1, bn1, layer1..layer4), so torchvision state dicts load into it unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn

STAGES = ("res2", "res3", "res4", "res5")
_LAYER_OF = {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4"}


class ResNetBackbone(nn.Module):
    """torchvision ResNet without the classifier. ``forward`` returns the global-average-pooled res5 feature."""

    def __init__(self, arch: str = "resnet50", width: int = 64, dilate_res5: bool = False,
                 zero_init_residual: bool = False):
        super().__init__()
        builder = getattr(torchvision.models, arch, None)
        if builder is None or not arch.startswith("resnet"):
            raise ValueError(f"arch {arch!r}: expected a torchvision ResNet (resnet18, resnet50, ...)")
        kwargs: dict[str, Any] = {"weights": None, "zero_init_residual": zero_init_residual,
                  "replace_stride_with_dilation": [False, False, dilate_res5]}
        net: Any  # a torchvision ResNet (torchvision ships no type information)
        if width != 64:
            # torchvision ResNets fix the stem at 64 channels; a width multiplier needs the stem rebuilt.
            net = _narrow_resnet(arch, width, **kwargs)
        else:
            net = builder(**kwargs)
        self.arch, self.width = arch, width
        self.conv1: nn.Module = net.conv1
        self.bn1: nn.Module = net.bn1
        self.relu: nn.Module = net.relu
        self.maxpool: nn.Module = net.maxpool
        self.layer1: nn.Module = net.layer1
        self.layer2: nn.Module = net.layer2
        self.layer3: nn.Module = net.layer3
        self.layer4: nn.Module = net.layer4
        self.out_channels: int = net.fc.in_features
        self.stage_channels = {s: _last_channels(getattr(self, _LAYER_OF[s])) for s in STAGES}

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return out

    def stage(self, name: str) -> nn.Module:
        return self.get_submodule(_LAYER_OF[name])

    def features(self, x: torch.Tensor, upto: str = "res5") -> dict[str, torch.Tensor]:
        """Feature maps of every stage up to ``upto`` (strides 4, 8, 16, 32): {"res2": (B,C,H/4,W/4), ...}."""
        out: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        for name in STAGES:
            x = self.stage(name)(x)
            out[name] = x
            if name == upto:
                break
        return out

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The res5 feature map (B, C, H/32, W/32)."""
        out: torch.Tensor = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_map(x), 1), 1)


def _last_channels(layer: nn.Module) -> int:
    """Output channels of a ResNet stage: its last block's last convolution (conv3 of a Bottleneck, else conv2)."""
    block = list(layer.children())[-1]
    conv = block.get_submodule("conv3" if hasattr(block, "conv3") else "conv2")
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"{type(block).__name__}: the last convolution is a {type(conv).__name__}, not a Conv2d")
    return conv.out_channels


def _narrow_resnet(arch: str, width: int, **kwargs: Any) -> Any:
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    blocks = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
              "resnet50": (Bottleneck, [3, 4, 6, 3]), "resnet101": (Bottleneck, [3, 4, 23, 3]),
              "resnet152": (Bottleneck, [3, 8, 36, 3])}
    block, layers = blocks[arch]

    class NarrowResNet(ResNet):  # type: ignore[misc]  # torchvision's ResNet is untyped (Any) to mypy
        def __init__(self) -> None:
            nn.Module.__init__(self)
            self._norm_layer = nn.BatchNorm2d
            self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
            dil = kwargs["replace_stride_with_dilation"]
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            self.layer1 = self._make_layer(block, width, layers[0])
            self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2, dilate=dil[0])
            self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2, dilate=dil[1])
            self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2, dilate=dil[2])
            self.fc = nn.Linear(width * 8 * block.expansion, 1)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    return NarrowResNet()


def build_backbone(arch: str = "resnet50", width: int = 64, **kwargs: Any) -> ResNetBackbone:
    return ResNetBackbone(arch, width, **kwargs)
