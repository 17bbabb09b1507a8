"""The sequence kernels of ``kernels.py`` for CUDA tensors, in Triton: the fused multi-step IF/LIF forward
and backward, each one launch that keeps the membrane in registers for all T steps. The torch-op version
launches about four kernels per step forward and six back, which on a GPU costs more than the arithmetic.
Same semantics and layout ([T, N]) as ``csrc/lif_sequence.c``. Tensors may also be float16/bfloat16
(autocast training): they are read into float32, the membrane stays in float32 across all T steps, and
outputs are stored back in the input's dtype.
Imported only for CUDA tensors, so CPU installs never need Triton.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

BLOCK = 1024


@lru_cache(maxsize=None)
def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.language as tl

    # Pointers step by N from one timestep to the next: pointer arithmetic is 64-bit, where t * N in 32-bit
    # integers would overflow on tensors of 2^31 elements.
    @triton.jit
    def forward(x, h_out, s_out, v_out, T, N, a, b, c, v0, v_th, v_reset, HARD: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        v = tl.zeros([BLOCK], tl.float32) + v0
        xp, hp, sp = x + offs, h_out + offs, s_out + offs
        for _ in range(T):
            h = a * v + b * tl.load(xp, mask=mask, other=0.0).to(tl.float32) + c
            fired = h >= v_th
            tl.store(hp, h, mask=mask)
            tl.store(sp, fired.to(tl.float32), mask=mask)
            v = tl.where(fired, v_reset, h) if HARD else h - fired.to(tl.float32) * v_th
            xp, hp, sp = xp + N, hp + N, sp + N
        tl.store(v_out + offs, v, mask=mask)

    @triton.jit
    def backward(g_s, sg, h, g_x, T, N, last, a, b, v_th, atan_alpha, HARD: tl.constexpr, HAS_SG: tl.constexpr,
                 BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        slope, half = 1.5707963267948966 * atan_alpha, 0.5 * atan_alpha
        gv = tl.zeros([BLOCK], tl.float32)
        o = offs + last  # (T - 1) * N, computed by the caller; walk back from there
        gsp, sgp, hp, gxp = g_s + o, sg + o, h + o, g_x + o
        for _ in range(T):
            d = tl.load(hp, mask=mask, other=0.0).to(tl.float32) - v_th
            if HAS_SG:
                g = tl.load(sgp, mask=mask, other=0.0).to(tl.float32)
            else:  # the default ATan surrogate, alpha/2 / (1 + (pi/2 alpha x)^2), computed here
                g = half / (1.0 + (slope * d) * (slope * d))
            gh = tl.load(gsp, mask=mask, other=0.0).to(tl.float32) * g + (tl.where(d < 0.0, gv, 0.0) if HARD else gv)
            tl.store(gxp, b * gh, mask=mask)
            gv = a * gh
            gsp, sgp, hp, gxp = gsp - N, sgp - N, hp - N, gxp - N

    return forward, backward


def _grid(n: int) -> tuple[int]:
    return ((n + BLOCK - 1) // BLOCK,)


def lif_forward(x: Tensor, a: float, b: float, c: float, v0: float, v_th: float, v_reset: float | None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` [T, ...] on CUDA -> (pre-spike membranes h, spikes, final membrane); see ``kernels.lif_forward``."""
    x = x.contiguous()
    t_len, n = x.shape[0], x[0].numel()
    h, s, v = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x[0])
    hard = v_reset is not None
    _kernels()[0][_grid(n)](x, h, s, v, t_len, n, a, b, c, v0, v_th, v_reset if hard else 0.0, HARD=hard, BLOCK=BLOCK)
    return h, s, v


def lif_backward(grad_s: Tensor, h: Tensor, a: float, b: float, v_th: float, hard: bool,
                 sg: Tensor | None = None, atan_alpha: float = 0.0) -> Tensor:
    """Gradient for x of ``lif_forward`` on CUDA; see ``kernels.lif_backward``."""
    grad_s = grad_s.contiguous()
    t_len, n = h.shape[0], h[0].numel()
    grad_x = torch.empty_like(h)
    sg = sg.contiguous() if sg is not None else None
    _kernels()[1][_grid(n)](grad_s, sg if sg is not None else grad_s, h, grad_x, t_len, n, (t_len - 1) * n, a, b, v_th,
                            atan_alpha, HARD=hard, HAS_SG=sg is not None, BLOCK=BLOCK)
    return grad_x
