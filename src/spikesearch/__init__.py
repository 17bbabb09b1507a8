"""spikesearch: find, train and convert spiking neural networks."""
from .datasets import load_dataset
from .errors import SpikeSearchError
from .loader import Augment, BatchLoader
from .models import SpikingCNN
from .neurons import IF, LIF, PLIF, reset
from .surrogate import Surrogate
from .trainer import TrainConfig, Trainer, evaluate

__version__ = "0.1.0"
__all__ = ["IF", "LIF", "PLIF", "Augment", "BatchLoader", "SpikeSearchError", "SpikingCNN", "Surrogate",
           "TrainConfig", "Trainer", "evaluate", "load_dataset", "reset"]
