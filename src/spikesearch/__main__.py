"""``python -m spikesearch`` (what ``torchrun -m spikesearch ...`` runs on every rank)."""
import sys

from .cli import main

sys.exit(main())
