"""Compiled kernels: neurons in C on the CPU and Triton on CUDA (``triton_lif.py``), chosen by the tensors'
device; on the CPU also the scoring reductions (a popcount Gram of spike maps, fixed-order BatchNorm
statistics).

The C code (``csrc/*.c``) is built on first use with the system C compiler into a per-user cache (a
second or so, once); it uses OpenMP with torch's thread count and binds to the libgomp torch loaded.
Where there is no compiler or no Triton, or with ``SPIKESEARCH_NO_KERNELS=1``, callers keep their torch
implementation."""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from . import triton_lif

SOURCES = ("lif_sequence.c", "spike_stats.c")
FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c99"]
_f, _i64, _ptr = ctypes.c_float, ctypes.c_int64, ctypes.c_void_p
SIGNATURES = {
    "lif_forward": [_ptr, _ptr, _ptr, _ptr, _i64, _i64, _f, _f, _f, _f, _f, _f, ctypes.c_int, ctypes.c_int],
    "lif_backward": [_ptr, _ptr, _ptr, _ptr, _i64, _i64, _f, _f, _f, ctypes.c_int, _f, ctypes.c_int],
    "neuron_step": [_ptr, _ptr, _f, _ptr, _ptr, _i64, _f, _f, _f, _f, _f, ctypes.c_int, ctypes.c_int],
    "spike_gram": [_ptr, _i64, _i64, _ptr, ctypes.c_int],
    "channel_stats": [_ptr, _i64, _i64, _ptr, _ptr, ctypes.c_int],
}
RETURNS_STATUS = ("spike_gram", "channel_stats")  # 0, or -1 where their scratch memory could not be allocated
MIN_PER_THREAD = 1 << 14  # below this many neurons per thread, threads cost more than they save


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spikesearch"


@lru_cache(maxsize=None)
def _enabled() -> bool:
    return not os.environ.get("SPIKESEARCH_NO_KERNELS")


@lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    if not _enabled():
        return None
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        return None
    sources = {name: resources.files("spikesearch.core.csrc").joinpath(name).read_bytes() for name in SOURCES}
    key = hashlib.sha256(b"".join(sources.values()) + " ".join([cc, *FLAGS]).encode()).hexdigest()[:16]
    so = _cache_dir() / f"kernels_{key}.so"
    try:
        if not so.is_file():
            so.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=so.parent) as tmp:
                c_files, built = [Path(tmp) / name for name in sources], Path(tmp) / "lib.so"
                for c_file, src in zip(c_files, sources.values()):
                    c_file.write_bytes(src)
                subprocess.run([cc, *FLAGS, *map(str, c_files), "-o", str(built)], check=True, capture_output=True,
                               timeout=120)
                os.replace(built, so)  # atomic: concurrent first uses (DDP ranks, workers) do not clash
        lib = ctypes.CDLL(str(so))
    except (OSError, subprocess.SubprocessError):
        return None
    for name, args in SIGNATURES.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = ctypes.c_int if name in RETURNS_STATUS else None
    return lib


def _threads(n: int) -> int:
    return max(1, min(torch.get_num_threads(), n // MIN_PER_THREAD))


def usable(*tensors: Tensor) -> bool:
    """True when the kernels can take these tensors: all float32 on the CPU (with the C library built), or
    all on CUDA in one float32/float16/bfloat16 dtype (with Triton)."""
    kinds, dtypes = {t.device.type for t in tensors}, {t.dtype for t in tensors}
    if len(kinds) != 1 or len(dtypes) != 1 or not _enabled():
        return False
    if kinds == {"cuda"}:
        return dtypes <= {torch.float32, torch.float16, torch.bfloat16} and triton_lif.available()
    return kinds == {"cpu"} and dtypes == {torch.float32} and library() is not None


def cpu_usable(*tensors: Tensor) -> bool:
    """True when the C library can take these tensors: all float32 on the CPU. The gate of the CPU-only
    kernels, ``neuron_step`` included: on a GPU one Triton launch for a single step costs more host time
    than the four torch ops it would replace (measured on an H100 while scoring)."""
    return all(t.device.type == "cpu" for t in tensors) and usable(*tensors)


def lif_forward(x: Tensor, a: float, b: float, c: float, v0: float, v_th: float, v_reset: float | None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` [T, ...] -> (pre-spike membranes h, spikes, final membrane), as ``_FusedSequence.forward``."""
    if x.is_cuda:
        return triton_lif.lif_forward(x, a, b, c, v0, v_th, v_reset)
    x = x.contiguous()
    t_len, n = x.shape[0], x[0].numel()
    h, s, v = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x[0])
    hard = v_reset is not None
    library().lif_forward(x.data_ptr(), h.data_ptr(), s.data_ptr(), v.data_ptr(), t_len, n, a, b, c, v0, v_th,
                          v_reset if hard else 0.0, int(hard), _threads(n))
    return h, s, v


def lif_backward(grad_s: Tensor, h: Tensor, a: float, b: float, v_th: float, hard: bool,
                 sg: Tensor | None = None, atan_alpha: float = 0.0) -> Tensor:
    """Gradient for x of ``lif_forward``; ``sg`` is the surrogate gradient at ``h - v_th``, or None for
    the ATan surrogate with ``atan_alpha``, computed in the kernel."""
    if h.is_cuda:
        return triton_lif.lif_backward(grad_s, h, a, b, v_th, hard, sg, atan_alpha)
    grad_s = grad_s.contiguous()
    sg = sg.contiguous() if sg is not None else None
    t_len, n = h.shape[0], h[0].numel()
    grad_x = torch.empty_like(h)
    library().lif_backward(grad_s.data_ptr(), sg.data_ptr() if sg is not None else None, h.data_ptr(),
                           grad_x.data_ptr(), t_len, n, a, b, v_th, int(hard), atan_alpha, _threads(n))
    return grad_x


def dense_format(x: Tensor) -> torch.memory_format | None:
    """The memory format in which ``x`` is dense (contiguous or, for 4-D maps, channels-last), else None.
    Either way each sample's values are one block of memory, all that elementwise kernels and the Gram need."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


def neuron_step(x: Tensor, v: Tensor | float, a: float, b: float, c: float, v_th: float, v_reset: float | None
                ) -> tuple[Tensor, Tensor]:
    """One step of a neuron with linear charge, no autograd, on the CPU: (spikes, new membrane), in the
    memory format of ``x`` (a channels-last scoring pass stays channels-last)."""
    fmt = dense_format(x) or torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    v_in = v.contiguous(memory_format=fmt) if isinstance(v, Tensor) else None
    s, v_out = torch.empty_like(x), torch.empty_like(x)
    hard = v_reset is not None
    library().neuron_step(x.data_ptr(), v_in.data_ptr() if v_in is not None else None,
                          0.0 if v_in is not None else float(v), s.data_ptr(), v_out.data_ptr(), x.numel(),
                          a, b, c, v_th, v_reset if hard else 0.0, int(hard), _threads(x.numel()))
    return s, v_out


def gram_usable(x: Tensor) -> bool:
    """True when ``spike_gram`` can take ``x``: float32 on the CPU, each sample one block of memory."""
    return cpu_usable(x) and x.dim() >= 2 and dense_format(x) is not None


def _check(status: int, what: str) -> None:
    if status:
        raise MemoryError(f"{what}: could not allocate its scratch memory")


def spike_gram(x: Tensor) -> Tensor:
    """Counts ``G[i, j]`` of positions where samples i and j of ``x`` [B, ...] both spike (non-zero), float32.
    Equal to ``x.flatten(1) @ x.flatten(1).T`` for 0/1 spikes below 2^24 per sample, in any memory format:
    the Gram does not depend on the order of a sample's values."""
    b, n = x.shape[0], x[0].numel()
    out = torch.empty(b, b, dtype=torch.float32)
    _check(library().spike_gram(x.data_ptr(), b, n, out.data_ptr(), _threads(x.numel())), "spike_gram")
    return out


def stats_usable(x: Tensor) -> bool:
    """True when ``channel_stats`` can take ``x``: a float32 channels-last [B, C, H, W] map on the CPU."""
    return cpu_usable(x) and dense_format(x) == torch.channels_last


def channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of a channels-last map, summed in float64 in a fixed order:
    the same numbers for any thread count."""
    c = x.shape[1]
    mean, var = torch.empty(c), torch.empty(c)
    _check(library().channel_stats(x.data_ptr(), x.numel() // c, c, mean.data_ptr(), var.data_ptr(),
                                   _threads(x.numel())), "channel_stats")
    return mean, var
