"""spikesearch: find, train and convert spiking neural networks."""
from .core.errors import SpikeSearchError
from .core.models import SpikingCNN
from .core.neurons import IF, LIF, PLIF, reset
from .core.surrogate import Surrogate
from .data.datasets import hold_out, load_dataset
from .data.loader import Augment, BatchLoader
from .train.trainer import TrainConfig, Trainer, evaluate

__version__ = "0.1.0"
__all__ = ["IF", "LIF", "PLIF", "Augment", "BatchLoader", "SpikeSearchError", "SpikingCNN", "Surrogate",
           "TrainConfig", "Trainer", "evaluate", "hold_out", "load_dataset", "reset"]
