"""Export to and import from NIR (Neuromorphic Intermediate Representation, ``pip install -e ".[nir]"``).

``to_nir(model)`` writes ``SpikingCNN``, SNASNet (forward and backward cells), derived SpikeDHS networks and
converted VGG SNNs as a ``nir.NIRGraph``; ``from_nir(graph_or_path)`` builds a module that runs a NIR graph
step by step. Conventions, measured against our own discrete equations (README) with the time step
``dt`` written into the graph's metadata:

- LIF (``decay_input=True``): ``tau_nir = dt * tau``, ``r = 1``, ``v_leak = v_reset``; (``decay_input=False``):
  ``r = tau``; forward Euler over ``dt`` then gives exactly our update. IF: ``r = 1 / dt``.
- Reset by subtraction (converted SNNs), which NIR's neuron nodes cannot say (their ``v_reset`` is a hard
  reset), is written as an integrator ``I`` whose spikes (``Threshold``) come back one step later through
  ``Delay`` and ``Scale(-v_threshold)``: ``u[t] = u[t-1] + (x[t] - theta s[t-1])``, ``s[t] = [u[t] >= theta - v_init]``.
  NIR has no initial state; a membrane that starts at ``v_init`` (half threshold for qcfs and calibrate) is the
  same neuron with its threshold lowered by ``v_init``. The converter's ``ConvertedIF`` computes exactly this, so
  the graph's spikes equal ours bit for bit.
- A ceil-mode average pool with partial windows (VGG's 7 -> 4 at 28 px) is a convolution padded by
  ``stride - 1`` whose kernel is 1 on the window's own cells, then ``Scale(1 / cells per window)``.
- Calibration's per-channel current is an identity 1x1 convolution with that bias (added after the layer's
  own bias, as the SNN adds it).
- SNASNet's backward (feedback) edges act at t+1: a ``Delay`` of one step on the edge; the graph has cycles.
- BatchNorm is folded into the preceding convolution (or written as a depthwise 1x1 convolution where it
  acts on a node value). SNASNet's vote (average of groups of outputs) is folded into the last layer.
- Ours fires at ``v >= threshold``; NIR's text says ``v > threshold``; the graph records ours under
  ``metadata['spikesearch']`` and ``from_nir`` follows it (equality of a float membrane with the threshold is
  rare, but a reader using ``>`` can differ there).
What NIR cannot express fails with one line naming the module or method and why: a conversion method whose
record (``convert/methods.py``) refuses export (signed neurons emit -1 spikes; SRP's run-time masks), an analog
ReLU node of a hybrid network, a hard-reset neuron that starts away from its reset, a nearest resize that is not
a strided subsampling, a padded ceil-mode pool with partial windows.
"""
from __future__ import annotations

from .from_nir import NIRNet, from_nir
from .to_nir import DT, to_nir, write_nir

__all__ = ["DT", "NIRNet", "from_nir", "to_nir", "write_nir"]
