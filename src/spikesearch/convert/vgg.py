"""The ``vgg15ab`` family of Lu & Sengupta (2020): 13 conv + 2 FC, average pooling *before* the ReLU,
no bias, dropout 0.1, optionally BatchNorm (folded into the convs before conversion), binary weights
(first and last layer full precision) and QCFS activations. Width and input size are free, so the same
network fits 28x28 grayscale and 224x224 ImageNet."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor, nn

from ..core.errors import SpikeSearchError
from ..train.memory import check_fits
from .binary import BinaryConv2d, BinaryLinear
from .qcfs import QCFS

# per conv: output channels and whether a pool follows it (pool sits between the conv and its ReLU)
VGG15_CONVS = [(64, False), (64, True), (128, False), (128, True), (256, False), (256, False), (256, True),
               (512, False), (512, False), (512, True), (512, False), (512, False), (512, True)]
ARCHS = {"vgg15ab": VGG15_CONVS}
MAX_WIDTH = 4.0  # 4x the paper's channels (2048 wide): anything wider is a typo, not a network


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
        """Every field's type and range: the config may come from a model file's metadata."""
        if self.arch not in ARCHS:
            raise SpikeSearchError(f"unknown arch {self.arch!r}; choose one of: {', '.join(ARCHS)}")
        if self.activation not in ("relu", "qcfs"):
            raise SpikeSearchError(f"activation must be relu or qcfs, got {self.activation!r}")
        for name in ("num_classes", "in_channels", "image_size", "hidden", "levels"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise SpikeSearchError(f"VGG {name} must be a positive integer, got {v!r}")
        for name in ("batchnorm", "binary"):
            if not isinstance(getattr(self, name), bool):
                raise SpikeSearchError(f"VGG {name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.width, (int, float)) or not 0 < self.width <= MAX_WIDTH:
            raise SpikeSearchError(f"VGG width must be a number in (0, {MAX_WIDTH}], got {self.width!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise SpikeSearchError(f"VGG dropout must be in [0, 1), got {self.dropout!r}")

    @classmethod
    def from_meta(cls, meta: dict, source: str) -> "VGGConfig":
        if not isinstance(meta, dict):
            raise SpikeSearchError(f"{source}: 'meta' is a {type(meta).__name__}, not a dict of VGG settings")
        unknown = sorted(set(meta) - {f.name for f in fields(cls)})
        if unknown:
            raise SpikeSearchError(f"{source}: unknown VGG settings in 'meta': {', '.join(map(str, unknown))}")
        cfg = cls(**meta)
        try:
            cfg.validate()
        except SpikeSearchError as e:
            raise SpikeSearchError(f"{source}: {e}") from None
        return cfg

    def check_memory(self, copies: int = 2) -> None:
        """Refuse a network whose float32 weights (``copies`` of them) cannot fit, before allocating any."""
        with torch.device("meta"):  # shapes without storage
            n = sum(p.numel() for p in VGG(self).parameters())
        check_fits(4 * n * copies, f"a {self.arch} of width {self.width:g} at {self.image_size} px ({n:,} weights)",
                   "lower --width")


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
