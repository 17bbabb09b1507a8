"""Where one SNASNet candidate's scoring time goes: building the model, the forward pass with and without
the kernel hooks, the log-det, and a torch.profiler table of one whole ``score_model`` call (with the
CUDA time per op on a GPU). The figures behind the P1 reading in docs/BENCHMARKS.md.

    python benchmarks/profile_scoring.py --device cuda --batch 256
"""
from __future__ import annotations

import argparse
import time
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from spikesearch.core.neurons import reset
from spikesearch.data.datasets import load_dataset
from spikesearch.data.loader import Augment
from spikesearch.snasnet.network import macro_config
from spikesearch.snasnet.parallel import SNASNetBuilder
from spikesearch.proxies import ScoreConfig, SpikeRecorder, score_model, scoring_layout
from spikesearch.snasnet.space import parse_cnt_mat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--cnt_mat", nargs=4, default=["0302", "0030", "3003", "0000"])
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per figure (after one warm-up)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def ms(f: Callable[[], object]) -> float:
        f()
        sync()
        t0 = time.perf_counter()
        for _ in range(a.repeats):
            f()
        sync()
        return 1e3 * (time.perf_counter() - t0) / a.repeats

    train, _, info = load_dataset("fmnist-small")
    augment = Augment.for_dataset(info)
    batches = [augment.normalise(train.images[i * a.batch:(i + 1) * a.batch]).to(dev) for i in range(2)]
    build = SNASNetBuilder("backward", macro_config("fmnist-small"), 5, 4 / 3, 1.0, "atan:2", str(dev))
    cfg = ScoreConfig(batch_size=a.batch)
    mat = parse_cnt_mat(a.cnt_mat)
    net = build(mat).train()

    @torch.inference_mode()
    def forward(hooked: bool) -> None:
        with scoring_layout(net, batches[:1]) as (x,):  # as score_model runs it
            reset(net)
            hooks = SpikeRecorder(net) if hooked else None
            net(x)
            if hooks is not None:
                hooks.remove().kernel(cfg.kernel)

    print(f"{a.device}, batch {a.batch}, cell {' '.join(a.cnt_mat)}; ms per call, mean of {a.repeats}:")
    print(f"  build the model            {ms(lambda: build(mat)):8.2f}")
    print(f"  score_model (2 batches)    {ms(lambda: score_model(net, batches, cfg)):8.2f}")
    print(f"  forward, no hooks          {ms(lambda: forward(False)):8.2f}")
    print(f"  forward + kernel hooks     {ms(lambda: forward(True)):8.2f}")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        score_model(build(mat), batches, cfg)
        sync()
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
