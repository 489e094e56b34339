"""ResNet backbones (torchvision) with named stages, so every method and analysis reads res2..res5 the same way.

``width`` scales every stage (64 = torchvision's networks); tests use e.g. resnet18 at width 8. The module keeps
torchvision's parameter names (conv1, bn1, layer1..layer4), so torchvision state dicts load into it unchanged.

``stem``: ``imagenet`` is torchvision's (7×7 stride-2 conv1, 3×3 stride-2 max-pool: res2..res5 at strides 4, 8, 16,
32); ``small`` is the CIFAR variant of solo-learn and lightly (3×3 stride-1 conv1, no max-pool: strides 1, 2, 4, 8), so
48–96 px inputs keep a res5 map of 6×6–12×12 instead of 2×2–3×3. It changes only conv1's kernel (same parameter
names). Whatever maps boxes or masks to feature cells takes the strides from `stage_strides` / `map_side`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torchvision
from torch import nn

STAGES = ("res2", "res3", "res4", "res5")
STEMS = ("imagenet", "small")
_LAYER_OF = {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4"}


class ResNetBackbone(nn.Module):
    """torchvision ResNet without the classifier. ``forward`` returns the global-average-pooled res5 feature."""

    def __init__(self, arch: str = "resnet50", width: int = 64, dilate_res5: bool = False,
                 zero_init_residual: bool = False, stem: str = "imagenet"):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem {stem!r}: expected one of {', '.join(STEMS)}")
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
        self.arch, self.width, self.stem_kind = arch, width, stem
        self.conv1: nn.Module = net.conv1 if stem == "imagenet" else _small_stem_conv(width)
        self.bn1: nn.Module = net.bn1
        self.relu: nn.Module = net.relu
        self.maxpool: nn.Module = net.maxpool if stem == "imagenet" else nn.Identity()
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
        """Feature maps of every stage up to ``upto`` (strides: `stage_strides`): {"res2": (B,C,H/4,W/4), ...}."""
        out: dict[str, torch.Tensor] = {}
        x = self.stem(x)
        for name in STAGES:
            x = self.stage(name)(x)
            out[name] = x
            if name == upto:
                break
        return out

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The res5 feature map (B, C, H/32, W/32 with the ImageNet stem; H/8, W/8 with the small one)."""
        out: torch.Tensor = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.forward_map(x), 1), 1)


def _small_stem_conv(width: int) -> nn.Conv2d:
    """The small-image stem's conv1: 3×3, stride 1, padding 1 (solo-learn's and lightly's CIFAR ResNets), initialised
    as torchvision initialises every conv (Kaiming normal, fan-out)."""
    conv = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _downsamplings(backbone: nn.Module, upto: str) -> list[int]:
    """The stride of every downsampling step in front of stage ``upto``'s output, in order: conv1, the max-pool (when
    there is one), then each stage's first block (1 when that stage is dilated instead of strided)."""
    steps = [_stride_of(backbone.get_submodule("conv1")), _stride_of(backbone.get_submodule("maxpool"))]
    for name in STAGES[:STAGES.index(upto) + 1]:
        first_block = next(iter(backbone.get_submodule(_LAYER_OF[name]).children()))
        steps.append(int(getattr(first_block, "stride", 1)))
    return steps


def _stride_of(module: nn.Module) -> int:
    stride = getattr(module, "stride", 1)  # nn.Identity (the small stem's missing max-pool) has none
    return int(stride[0] if isinstance(stride, tuple) else stride)


def stage_strides(backbone: nn.Module) -> dict[str, int]:
    """Nominal stride of every stage, read from the network: {"res2": 4, "res3": 8, "res4": 16, "res5": 32} with the
    ImageNet stem, {"res2": 1, "res3": 2, "res4": 4, "res5": 8} with the small stem, res5 halved when dilated.

    The one source of the box/mask → feature-cell scale (RoIAlign's spatial_scale = 1/stride). A module that is not a
    torchvision-named ResNet may declare its own ``stage_strides`` dict.
    """
    declared = getattr(backbone, "stage_strides", None)
    if declared is not None:
        return dict(declared)
    return {name: math.prod(_downsamplings(backbone, name)) for name in STAGES}


def map_side(backbone: nn.Module, size: int, stage: str = "res5") -> int:
    """Side of ``stage``'s map for a size×size input: every stride-2 step (7×7/3×3 conv with padding k//2, 3×3
    max-pool with padding 1, 1×1 shortcut) gives ⌈x/2⌉ (224 → 7 and 48 → 2 with the ImageNet stem; 48 → 6 small)."""
    for step in _downsamplings(backbone, stage):
        size = -(-size // step)
    return size


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
