"""ANN -> SNN conversion of full-precision and binary-weight VGGs (Lu & Sengupta 2020) and QCFS."""
from .binary import BinaryConv2d, BinaryLinear, binarize
from .converter import ConvertConfig, SpikingNet, convert, evaluate_snn
from .qcfs import QCFS, init_thresholds
from .vgg import VGG, VGGConfig

__all__ = ["QCFS", "VGG", "BinaryConv2d", "BinaryLinear", "ConvertConfig", "SpikingNet", "VGGConfig", "binarize",
           "convert", "evaluate_snn", "init_thresholds"]
