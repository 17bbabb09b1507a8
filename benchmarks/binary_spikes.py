"""0/1-spike conversion at low latency: the routes that emit only binary spikes (every one NIR-exportable except
SRP), side by side on one trained ANN, accuracy at T = 4 and T = 8 against the ANN.

Routes: ``percentile`` (membrane from 0); ``half`` (percentile thresholds, membrane from half threshold, no
calibration: what qcfs does for a ReLU ANN); ``calibrate@T`` (bias calibration fitted for T steps, simulated at
that T: a calibration is fitted for one latency, so each T gets its own); ``calibrate@T+N`` (fitted on N
training images instead of 256). The ANN is a ``train-ann`` run's final-epoch checkpoint (``last.pt``: no
checkpoint chosen on test data). One thread.

    python benchmarks/binary_spikes.py --ann runs/ann_fp_s0 --out runs/bench/binary_spikes_s0.json
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch

from spikesearch.convert import ConvertConfig, convert, evaluate_snn
from spikesearch.convert.vgg import VGG, VGGConfig
from spikesearch.data.loader import BatchLoader
from spikesearch.runs import atomic_write_bytes, dump_json
from spikesearch.train.checkpoint import load_checkpoint
from spikesearch.train.pipeline import make_loaders
from spikesearch.train.trainer import evaluate

# route -> (ConvertConfig fields, the T it is simulated at)
ROUTES = {
    "percentile": (dict(method="percentile"), (4, 8)),
    "half": (dict(method="percentile", v_init=0.5), (4, 8)),
    "calibrate@4": (dict(method="calibrate", calib_timesteps=4), (4,)),
    "calibrate@8": (dict(method="calibrate", calib_timesteps=8), (8,)),
    "calibrate@4+1000": (dict(method="calibrate", calib_timesteps=4, calib_images=1000), (4,)),
    "calibrate@8+1000": (dict(method="calibrate", calib_timesteps=8, calib_images=1000), (8,)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ann", type=Path, required=True, help="a train-ann run folder (its checkpoints/last.pt is used)")
    ap.add_argument("--dataset", default="fmnist-small")
    ap.add_argument("--data", default=None)
    ap.add_argument("--images", type=int, default=1000, help="test images simulated")
    ap.add_argument("--norm", type=int, default=1000, help="training images for thresholds (and calibration's pool)")
    ap.add_argument("--routes", nargs="+", default=list(ROUTES), choices=list(ROUTES))
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = json.loads((a.ann / "config.json").read_text())
    train, _, test, info = make_loaders(a.dataset, a.data, 100, torch.device("cpu"), 0, None, a.images)
    vcfg = VGGConfig(width=cfg["width"], batchnorm=cfg["batchnorm"], binary=cfg["binary"], activation=cfg["activation"],
                     levels=cfg["levels"], num_classes=info.num_classes, in_channels=info.channels, image_size=info.size)
    ann = VGG(vcfg)
    ann.load_state_dict(load_checkpoint(a.ann / "checkpoints" / "last.pt")["model"])
    ann.eval()
    _, ann_acc = evaluate(ann, test)
    norm = [x for x, _ in BatchLoader(train.data.subset(a.norm), 250, train.augment, False)]
    rows = {}
    for route in a.routes:
        fields, ts = ROUTES[route]
        t0 = time.perf_counter()
        snn, _ = convert(copy.deepcopy(ann), norm, ConvertConfig(percentile=99.9, **fields))
        res = evaluate_snn(snn, test, max(ts), one_step=True, progress=False)
        rows[route] = {f"T={t}": res["accuracy"][t - 1] for t in ts}
        rows[route]["seconds"] = time.perf_counter() - t0
        print(route, {k: round(100 * v, 2) for k, v in rows[route].items() if k.startswith("T=")},
              f"ANN {100 * ann_acc:.2f}", flush=True)
    atomic_write_bytes(a.out, dump_json({
        "ann": str(a.ann), "checkpoint": "last.pt (final epoch)", "ann_acc": ann_acc, "dataset": a.dataset,
        "test_images": a.images, "routes": rows, "spike_values": "0/1", "date": str(date.today()),
        "machine": f"{platform.machine()}, 1 thread, torch {torch.__version__}"}))


if __name__ == "__main__":
    main()
