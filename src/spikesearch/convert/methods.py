"""What each ``convert --method`` means: one frozen record per method, read by the converter, the ``convert``
command and the NIR exporter alike (nothing else tests a method's name).

A record says how the SNN is built (initial membrane, neuron, SRP pre-simulation, bias calibration, whether it
needs one-step propagation or a QCFS-trained ANN), what it emits (0/1 spikes, or -1/0/+1 for the signed
neuron) and where it can run: exported to NIR (or the one-line reason why not) and the hardware families whose
neurons can hold it. The hardware column follows from the spike values and the state a method needs; it was
read from the chips' documentation, not run on them.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..core.errors import SpikeSearchError
from ..core.neurons import IF
from ..core.registry import Registry

AUTO = "auto"  # not a method: resolved to qcfs for a QCFS-trained ANN, else percentile

# what a spike may be worth, as the docs' tables print it
BINARY, SIGNED = "0/1", "-1/0/+1"
# the hardware families by what their neurons take (Loihi 2's programmable neurons send graded spikes;
# Speck/DynapCNN and Xylo take unsigned events only; SpiNNaker2 runs neuron models in software)
EVENT_CHIPS = ("Speck/DynapCNN", "Xylo", "Loihi 2", "SpiNNaker2", "CPU/GPU")
GRADED_CHIPS = ("Loihi 2 (graded spikes)", "SpiNNaker2 (software neurons)", "CPU/GPU")


class ConvertedIF(IF):
    """The conversion neuron: IF with threshold ``v_threshold`` and reset by subtraction, its membrane starting at
    ``v_init``. It is computed in the arithmetic of its NIR graph (an integrator from 0 whose input is the current
    plus its own last spike times ``-v_threshold``, and a threshold lowered by ``v_init``: NIR has no initial
    state): ``u[t] = u[t-1] + (x[t] - v_threshold s[t-1])``, ``s[t] = [u[t] >= v_threshold - v_init]``, the
    membrane being ``u + v_init`` less the pending reset. The same neuron as an IF started at ``v_init``, but an
    exported graph adds the same floats in the same order, so its spikes equal ours even where a membrane lands
    exactly on its threshold (binary weights make that common). Trained (``finetune``), the spike's gradient is a
    box one threshold wide around the firing point; the forward spike is the same comparison."""

    def __init__(self, v_threshold: float = 1.0, v_init: float = 0.0) -> None:
        super().__init__(v_threshold=v_threshold, v_reset=None, v_init=v_init, surrogate=f"rectangular:{1 / v_threshold}")
        self.reset_state()

    def reset_state(self) -> None:
        self.v: Tensor | float = 0.0  # u: the pre-reset membrane less its start
        self.s: Tensor | float = 0.0  # the last step's spike, subtracted with the next input

    @property
    def membrane(self) -> Tensor | float:
        """The membrane potential itself, after the last reset."""
        return self.v - self.v_threshold * self.s + self.v_init

    def fire(self, u: Tensor) -> Tensor:
        if u.requires_grad:  # fine-tuning; u - c >= 0 exactly when u >= c (gradual underflow: u - c = 0 only if u = c)
            return self.surrogate(u - (self.v_threshold - self.v_init))
        return (u >= self.v_threshold - self.v_init).to(u.dtype)

    def single_step(self, x: Tensor) -> Tensor:
        self.v = self.v + (x - self.v_threshold * self.s)
        self.s = self.fire(self.v)
        return self.s


class SignedIF(ConvertedIF):
    """A conversion neuron that can also take a spike back: when the membrane falls below 0 while the neuron's net
    spike count is positive, it emits -1 and its membrane gains a threshold. Early spikes that later input does not
    justify (the unevenness error of rate conversion) are so undone, and the net count tracks round(t * a) in both
    directions (Hu et al., Fast-SNN, TPAMI 2023)."""

    def reset_state(self) -> None:
        super().reset_state()
        self.count: Tensor | float = 0.0

    def fire(self, u: Tensor) -> Tensor:
        s = super().fire(u) - ((u < -self.v_init) & (self.count > 0)).to(u.dtype)
        self.count = self.count + s
        return s


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    v_init: float  # the membrane at t = 0, in thresholds (--v-init overrides it)
    neuron: type[ConvertedIF] = ConvertedIF
    presim: bool = False  # SRP: --presim uncounted steps, then run-time masks
    calibrate: bool = False  # bias calibration at --calib_timesteps
    needs_one_step: bool = False
    needs_qcfs: bool = False
    spikes: str = BINARY
    nir_refusal: str | None = None  # None: exported to NIR; else why not, in one line
    hardware: tuple[str, ...] = EVENT_CHIPS

    @property
    def exportable(self) -> bool:
        return self.nir_refusal is None

    def check_exportable(self) -> None:
        if self.nir_refusal is not None:
            raise SpikeSearchError(f"--method {self.name} is not exported to NIR: {self.nir_refusal}")


_SRP_REFUSAL = ("SRP silences neurons by masks decided at run time, after its --presim uncounted steps; a NIR "
                "graph holds no such state")
_SIGNED_REFUSAL = ("its signed IF neurons emit -1 spikes and NIR's neurons emit 0/1 only; exportable 0/1 methods: "
                   "percentile, qcfs, calibrate")

_ALL = (
    Method("percentile", "percentile threshold balancing, membrane from 0 (Lu & Sengupta 2020; Rueckauer et al. "
           "2017)", v_init=0.0),
    Method("qcfs", "the ANN's trained QCFS thresholds, membrane from half threshold (Bu et al., ICLR 2022)",
           v_init=0.5, needs_qcfs=True),
    Method("srp", "QCFS/percentile thresholds from half threshold, then residual membrane potential: a neuron whose "
           "membrane is not positive after --presim steps stays silent (Hao et al., AAAI 2023)", v_init=0.5,
           presim=True, needs_one_step=True, nir_refusal=_SRP_REFUSAL, hardware=("CPU/GPU",)),
    Method("calibrate", "thresholds from half threshold, then layer-by-layer bias calibration on training images "
           "(Li et al., ICML 2021, light pipeline)", v_init=0.5, calibrate=True),
    Method("signed", "thresholds from half threshold, signed IF neurons: a neuron whose membrane drops below 0 after "
           "it fired takes a spike back (-1) (Fast-SNN, Hu et al., TPAMI 2023)", v_init=0.5, neuron=SignedIF,
           spikes=SIGNED, nir_refusal=_SIGNED_REFUSAL, hardware=GRADED_CHIPS),
    Method("signed-calibrate", "signed IF neurons, then the bias calibration of 'calibrate' at --calib_timesteps",
           v_init=0.5, neuron=SignedIF, calibrate=True, spikes=SIGNED, nir_refusal=_SIGNED_REFUSAL,
           hardware=GRADED_CHIPS),
)
METHODS: Registry[Method] = Registry("conversion method")
for _m in _ALL:
    METHODS.add(_m.name, _m)
CHOICES = [AUTO, *(m.name for m in _ALL)]  # --method, in help order


def help_text() -> str:
    return "; ".join([f"{AUTO}: qcfs for a QCFS-trained ANN, else percentile"] +
                     [f"{m.name}: {m.summary} [{m.spikes} spikes]" for m in _ALL])


def resolve(name: str, qcfs_ann: bool) -> Method:
    """The method ``--method name`` stands for, given whether the ANN has QCFS activations."""
    if name == AUTO:
        return METHODS.get("qcfs" if qcfs_ann else "percentile")
    method = METHODS.get(name)
    if method.needs_qcfs and not qcfs_ann:
        raise SpikeSearchError(f"--method {name} needs an ANN trained with QCFS activations "
                               "(train-ann --activation qcfs)")
    return method
