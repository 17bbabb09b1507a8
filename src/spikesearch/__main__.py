"""``python -m spikesearch`` (what ``torchrun -m spikesearch ...`` runs on every rank)."""
import sys

from .cli.main import main

sys.exit(main())
