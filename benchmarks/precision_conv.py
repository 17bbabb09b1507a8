"""Do reduced-precision convolutions pay on this CPU? The scoring network's conv inputs are spike maps (exact
in bf16 and uint8), so a scorer could run them in bf16 or int8 if the hardware does those faster than fp32.
Times one 3x3 convolution at SNASNet scoring shapes (batch 256, channels-last) in fp32 (oneDNN), bf16 and int8
(fbgemm u8s8), and prints the CPU's relevant ISA flags (avx512_bf16, avx512_vnni, amx, avx2).

    python benchmarks/precision_conv.py --out runs/bench/precision_conv
"""
from __future__ import annotations

import argparse
import platform
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F


def timed(fn, repeats: int = 5) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/precision_conv"))
    a = ap.parse_args()
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8") if f in flags]
    lines = ["| conv 3x3, batch 256, channels-last | fp32 ms | bf16 ms (vs fp32) | int8 ms (vs fp32) |", "|---|---|---|---|"]
    warnings.filterwarnings("ignore", message=".*quantize.*deprecated.*")
    import torch.ao.nn.quantized.functional as qF

    torch.backends.quantized.engine = "fbgemm" if "fbgemm" in torch.backends.quantized.supported_engines else "onednn"
    for c, size in ((16, 28), (32, 14), (128, 32), (256, 16)):
        x = (torch.rand(256, c, size, size) < 0.2).float().contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, c, 3, 3)
        fp = timed(lambda: F.conv2d(x, w, padding=1))
        xb, wb = x.bfloat16(), w.bfloat16()
        bf = timed(lambda: F.conv2d(xb, wb, padding=1))
        qx = torch.quantize_per_tensor(x, 1.0, 0, torch.quint8)
        qw = torch.quantize_per_channel(w, w.abs().amax((1, 2, 3)) / 127, torch.zeros(c, dtype=torch.long), 0, torch.qint8)
        q = timed(lambda: qF.conv2d(qx, qw, torch.zeros(c), padding=1, scale=0.05, zero_point=0))
        lines.append(f"| {c} channels, {size}x{size} | {1e3 * fp:.1f} | {1e3 * bf:.1f} ({fp / bf:.2f}x) | {1e3 * q:.1f} ({fp / q:.2f}x) |")
    table = "\n".join(lines) + (f"\n\nCPU flags: {', '.join(isa) or 'none of those'}; {torch.get_num_threads()} threads, "
                                f"{platform.machine()}, torch {torch.__version__}, quantized engine {torch.backends.quantized.engine}.")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
