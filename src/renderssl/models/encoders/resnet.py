"""ResNet-18/34/50/101 with torchvision's parameter and buffer names and shapes.

Choices:

* Names, shapes and registration order equal ``torchvision.models.resnet{18,34,50,101}``: ``conv1``,
  ``bn1``, ``layer1..layer4`` of :class:`BasicBlock` / :class:`Bottleneck` (``downsample.0`` conv 1x1,
  ``downsample.1`` BN, present only in a stage's first block when stride or width changes) and ``fc``.
  A state dict loads into the torchvision model of the same depth (with ``num_classes=0`` set
  ``model.fc = nn.Identity()`` there first), and the other way round.
* The Bottleneck puts the stride on its 3x3 conv (``conv2``), i.e. torchvision's "ResNet v1.5".
* ``num_classes=0`` builds no ``fc`` at all (no ``fc.*`` keys); ``forward`` then returns the pooled
  (B, C) feature.
* ``forward_features`` returns the four stage outputs (strides 4, 8, 16, 32) for dense heads.
* Initialisation as torchvision: Kaiming-normal (fan_out, relu) convs, BN weight 1 / bias 0, and with
  ``zero_init_residual`` the last BN of every residual branch starts at weight 0 (each block then
  begins as the identity). ``fc`` keeps PyTorch's default Linear init, as torchvision does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...errors import InputError


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first) plus the shortcut; output width = planes."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        """(B, inplanes, H, W) -> (B, planes, H/stride, W/stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride: v1.5), 1x1 expand; output width = 4 * planes."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        """(B, inplanes, H, W) -> (B, 4 * planes, H/stride, W/stride)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# depth -> (block type, blocks per stage), as in the ResNet paper / torchvision
ARCHS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}
STAGE_PLANES = (64, 128, 256, 512)
FEATURE_STRIDES = (4, 8, 16, 32)


@dataclass
class ResNetConfig:
    depth: int = 50  # 18 | 34 | 50 | 101
    in_chans: int = 3
    num_classes: int = 0  # 0 = no fc; forward returns the pooled feature
    zero_init_residual: bool = False

    def __post_init__(self):
        if self.depth not in ARCHS:
            raise InputError(f"resnet.depth: {self.depth!r} is not supported; expected one of {sorted(ARCHS)}")
        if self.in_chans < 1:
            raise InputError(f"resnet.in_chans must be >= 1, got {self.in_chans}")
        if self.num_classes < 0:
            raise InputError(f"resnet.num_classes must be >= 0 (0 = no fc), got {self.num_classes}")

    @property
    def torchvision_name(self) -> str:
        return f"resnet{self.depth}"


class ResNet(nn.Module):
    """ResNet encoder. ``forward_features(x)`` -> [c2, c3, c4, c5] at strides 4, 8, 16, 32."""

    def __init__(self, config: ResNetConfig):
        super().__init__()
        self.config = config
        block, layers = ARCHS[config.depth]
        self.inplanes = 64
        self.conv1 = nn.Conv2d(config.in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, STAGE_PLANES[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, STAGE_PLANES[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, STAGE_PLANES[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, STAGE_PLANES[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_channels = tuple(p * block.expansion for p in STAGE_PLANES)
        self.feature_strides = FEATURE_STRIDES
        if config.num_classes > 0:
            self.fc = nn.Linear(self.num_features, config.num_classes)
        self.initialize_weights()

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        """One stage; only its first block may change stride / width, and only it gets a downsample."""
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.config.zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn().weight)

    @property
    def num_features(self) -> int:
        """Width of the pooled feature (512 for 18/34, 2048 for 50/101)."""
        return self.feature_channels[-1]

    @property
    def embed_dim(self) -> int:
        """Same as :attr:`num_features`; the attribute name the ViT uses, for heads that take either."""
        return self.num_features

    def _check_input(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise InputError(f"ResNet: expected input (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}")

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(B, C, H, W) -> [(B, C1, H/4, W/4), (B, C2, H/8, W/8), (B, C3, H/16, W/16), (B, C4, H/32, W/32)].

        Sizes round up (``ceil``) for inputs not divisible by 32, as the padded convs do.
        """
        self._check_input(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats

    def forward_head(self, c5: Tensor) -> Tensor:
        """(B, C4, h, w) last stage -> (B, C4) pooled, or (B, num_classes) logits when there is an fc."""
        pooled = torch.flatten(self.avgpool(c5), 1)
        return self.fc(pooled) if self.config.num_classes > 0 else pooled

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, num_features), or (B, num_classes) when num_classes > 0."""
        return self.forward_head(self.forward_features(x)[-1])
