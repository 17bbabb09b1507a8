"""Export to and import from NIR (Neuromorphic Intermediate Representation, ``pip install -e ".[nir]"``).

``to_nir(model)`` writes ``SpikingCNN``, SNASNet (forward and backward cells), derived SpikeDHS networks and
converted VGG SNNs as a ``nir.NIRGraph``; ``from_nir(graph_or_path)`` builds a module that runs a NIR graph
step by step. Conventions, measured against our own discrete equations (README) with the time step
``dt`` written into the graph's metadata:

- LIF (``decay_input=True``): ``tau_nir = dt * tau``, ``r = 1``, ``v_leak = v_reset``; (``decay_input=False``):
  ``r = tau``; forward Euler over ``dt`` then gives exactly our update. IF: ``r = 1 / dt``.
- Reset by subtraction (converted SNNs), which NIR's neuron nodes cannot say (their ``v_reset`` is a hard
  reset), is written as an integrator ``I`` whose spikes (``Threshold``) come back one step later through
  ``Delay`` and ``Scale(-v_threshold)``: ``u[t] = u[t-1] + x[t] - theta s[t-1]``, ``s[t] = [u[t] >= theta]``, which
  is our ``H[t]`` exactly.
- SNASNet's backward (feedback) edges act at t+1: a ``Delay`` of one step on the edge; the graph has cycles.
- BatchNorm is folded into the preceding convolution (or written as a depthwise 1x1 convolution where it
  acts on a node value). SNASNet's vote (average of groups of outputs) is folded into the last layer.
- Ours fires at ``v >= threshold``; NIR's text says ``v > threshold``; the graph records ours under
  ``metadata['spikesearch']`` and ``from_nir`` follows it (equality of a float membrane with the threshold is
  rare, but a reader using ``>`` can differ there).
What NIR cannot express fails with one line naming the module and why (an analog ReLU node of a hybrid
network, a non-zero initial membrane, SRP's run-time masks, a nearest resize that is not a strided
subsampling, an average pool with partial windows).
"""
from __future__ import annotations

from .from_nir import NIRNet, from_nir
from .to_nir import DT, to_nir, write_nir

__all__ = ["DT", "NIRNet", "from_nir", "to_nir", "write_nir"]
