"""The ``vgg15ab`` family of Lu & Sengupta (2020): 13 conv + 2 FC, average pooling *before* the ReLU,
no bias, dropout 0.1, optionally BatchNorm (folded into the convs before conversion), binary weights
(first and last layer full precision) and QCFS activations. Width and input size are free, so the same
network fits 28x28 grayscale and 224x224 ImageNet."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import Tensor, nn

from ..errors import SpikeSearchError
from .binary import BinaryConv2d, BinaryLinear
from .qcfs import QCFS

# per conv: output channels and whether a pool follows it (pool sits between the conv and its ReLU)
VGG15_CONVS = [(64, False), (64, True), (128, False), (128, True), (256, False), (256, False), (256, True),
               (512, False), (512, False), (512, True), (512, False), (512, False), (512, True)]
ARCHS = {"vgg15ab": VGG15_CONVS}


@dataclass
class VGGConfig:
    arch: str = "vgg15ab"
    num_classes: int = 10
    in_channels: int = 1
    image_size: int = 28
    width: float = 0.25  # channel multiplier (1.0 = the paper's 64..512)
    hidden: int = 4096  # first FC width before the multiplier
    dropout: float = 0.1
    batchnorm: bool = False
    binary: bool = False
    activation: str = "relu"  # relu | qcfs
    levels: int = 8  # QCFS quantization levels

    def validate(self) -> None:
        if self.arch not in ARCHS:
            raise SpikeSearchError(f"unknown arch {self.arch!r}; choose one of: {', '.join(ARCHS)}")
        if self.activation not in ("relu", "qcfs"):
            raise SpikeSearchError(f"activation must be relu or qcfs, got {self.activation!r}")
        if self.width <= 0 or self.levels <= 0:
            raise SpikeSearchError("width and levels must be positive")


def _activation(cfg: VGGConfig) -> nn.Module:
    return QCFS(cfg.levels) if cfg.activation == "qcfs" else nn.ReLU(inplace=False)


def _mean_of_event_frames(module: nn.Module, args: tuple) -> tuple | None:
    """Event frames [T, B, C, H, W]: an ANN sees their mean. A pre-hook, not a branch in ``forward``, so that
    FX tracing (spikingjelly's ann2snn, torch.compile) sees a plain feed-forward graph."""
    return (args[0].mean(0),) if args[0].dim() == 5 else None


class VGG(nn.Module):
    def __init__(self, cfg: VGGConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.register_forward_pre_hook(_mean_of_event_frames)
        layers: list[nn.Module] = []
        c, size = cfg.in_channels, cfg.image_size
        for i, (out, pool) in enumerate(ARCHS[cfg.arch]):
            w = max(1, round(out * cfg.width))
            conv_cls = BinaryConv2d if cfg.binary and i > 0 else nn.Conv2d  # first layer full precision
            layers.append(conv_cls(c, w, 3, padding=1, bias=False))
            if cfg.batchnorm:
                layers.append(nn.BatchNorm2d(w))
            if pool:
                layers.append(nn.AvgPool2d(2, 2, ceil_mode=True))
                size = math.ceil(size / 2)
            layers.append(_activation(cfg))
            if not pool:
                layers.append(nn.Dropout(cfg.dropout))
            c = w
        self.features = nn.Sequential(*layers)
        hidden = max(1, round(cfg.hidden * cfg.width))
        fc1 = (BinaryLinear if cfg.binary else nn.Linear)(c * size * size, hidden, bias=False)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout), fc1, _activation(cfg),
                                        nn.Dropout(cfg.dropout), nn.Linear(hidden, cfg.num_classes, bias=False))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))

    def meta(self) -> dict:
        return asdict(self.cfg)
