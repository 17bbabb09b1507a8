"""ANN->SNN conversion on the bundled data: accuracy vs T and wall time per timestep.

Trains four vgg15ab ANNs (full-precision / binary weights x ReLU / QCFS), converts each with our
converter (percentile 99.9 for ReLU nets, the trained thresholds and half-threshold start for QCFS),
and converts the ReLU nets with spikingjelly 2.0's ``ann2snn`` (RateCodingRecipe, mode 99.9%) when
it is installed (``pip install -e .[bench]``). All SNNs run one-step (depth-first) on the same test
images; spikingjelly's converted model is stepped the same way, one call per timestep.

    python benchmarks/conversion.py --epochs 6 --timesteps 128 --eval_size 1000
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from spikesearch.convert import VGG, ConvertConfig, VGGConfig, convert, evaluate_snn
from spikesearch.convert.converter import materialize
from spikesearch.convert.qcfs import init_thresholds
from spikesearch.loader import BatchLoader
from spikesearch.pipeline import make_loaders
from spikesearch.plots import plot_accuracy_vs_timestep
from spikesearch.run import Run
from spikesearch.trainer import TrainConfig, Trainer, evaluate, seed_everything

REPORT_T = (1, 2, 4, 8, 16, 32, 64, 128)


@torch.no_grad()
def spikingjelly_curve(ann, norm_batches, test, timesteps: int) -> tuple[list[float], float] | None:
    try:
        from spikingjelly.activation_based import ann2snn, functional
    except ImportError:
        return None
    loader = [(x, torch.zeros(len(x))) for x in norm_batches]
    snn = ann2snn.Converter(ann2snn.RateCodingRecipe(loader, mode="99.9%")).convert(materialize(ann).eval())
    correct = torch.zeros(timesteps, device=norm_batches[0].device)
    n, seconds = 0, 0.0
    for x, y in test:
        functional.reset_net(snn)
        total = 0.0
        t0 = time.perf_counter()
        for t in range(timesteps):
            total = total + snn(x)
            correct[t] += (total.argmax(1) == y).sum()  # on the device: no host sync per step
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        seconds += time.perf_counter() - t0
        n += len(y)
    return (correct.cpu() / n).tolist(), seconds / timesteps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--timesteps", type=int, default=128)
    ap.add_argument("--eval_size", type=int, default=1000)
    ap.add_argument("--norm", type=int, default=1000)
    ap.add_argument("--levels", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_conversion"))
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(2)  # the CI machine's cores, whatever this one has
    seed_everything(0)
    train, test, info = make_loaders("fmnist-small", None, 64, device, 0, None, a.eval_size, eval_batch_size=250)
    norm = [x for x, _ in BatchLoader(train.data.subset(a.norm), 250, train.augment, False, device)]
    curves, ann_acc, per_step, rows = {}, {}, {}, []
    for binary in (False, True):
        for act in ("relu", "qcfs"):
            name = f"{'binary' if binary else 'FP'} {act.upper() if act == 'qcfs' else 'ReLU'}"
            seed_everything(0)
            ann = VGG(VGGConfig(num_classes=10, in_channels=1, image_size=28, width=a.width, batchnorm=True,
                                binary=binary, activation=act, levels=a.levels)).to(device)
            if act == "qcfs":
                init_thresholds(ann, norm[0])
            cfg = TrainConfig(epochs=a.epochs, optimizer="adam", lr=1e-3, weight_decay=0, progress=False)
            t0 = time.perf_counter()
            Trainer(ann, train, test, cfg, Run(name.replace(" ", "_"), a.out, quiet=True, overwrite=True)).fit()
            train_s = time.perf_counter() - t0
            ann.eval()
            _, ann_acc[name] = evaluate(ann, test)
            snn, _ = convert(ann, norm, ConvertConfig(percentile=99.9))
            res = evaluate_snn(snn, test, a.timesteps, one_step=True, progress=False)
            label = f"{name} ANN -> ours ({'QCFS' if act == 'qcfs' else 'percentile 99.9'})"
            curves[label], per_step[label] = res["accuracy"], res["seconds_per_timestep"]
            rows.append((label, ann_acc[name]))
            print(f"{name}: ANN {100 * ann_acc[name]:.2f}% (trained {train_s:.0f}s); ours "
                  + " ".join(f"T{t}={100 * res['accuracy'][t - 1]:.1f}" for t in REPORT_T if t <= a.timesteps), flush=True)
            if act == "relu":
                sj = spikingjelly_curve(ann, norm, test, a.timesteps)
                if sj is not None:
                    label = f"{name} ANN -> spikingjelly 2.0 ann2snn (99.9%)"
                    curves[label], per_step[label] = sj
                    rows.append((label, ann_acc[name]))
                    print("  spikingjelly: " + " ".join(f"T{t}={100 * sj[0][t - 1]:.1f}" for t in REPORT_T
                                                        if t <= a.timesteps), flush=True)
    ts = [t for t in REPORT_T if t <= a.timesteps]
    lines = ["| ANN -> SNN | ANN | " + " | ".join(f"T={t}" for t in ts) + " | ms / timestep |",
             "|---|---|" + "---|" * len(ts) + "---|"]
    for label, acc in rows:
        lines.append(f"| {label} | {100 * acc:.2f} | " + " | ".join(f"{100 * curves[label][t - 1]:.2f}" for t in ts)
                     + f" | {1000 * per_step[label]:.1f} |")
    sj_labels = [lab for lab, _ in rows if "spikingjelly" in lab]
    ratio = ""
    if sj_labels:
        ours = [per_step[lab.replace("spikingjelly 2.0 ann2snn (99.9%)", "ours (percentile 99.9)")] for lab in sj_labels]
        theirs = [per_step[lab] for lab in sj_labels]
        ratio = ("\nSimulation time per timestep, spikingjelly / ours: "
                 + ", ".join(f"{t / o:.2f}x" for t, o in zip(theirs, ours)) + " (same ANN, same images).")
    table = "\n".join(lines) + ratio + (
        f"\n\n{a.eval_size} test images of fmnist-small, vgg15ab width {a.width} with BN (folded), {a.epochs} epochs "
        f"Adam 1e-3, QCFS L={a.levels}, {a.norm} normalisation images; one-step simulation; "
        f"{platform.machine()}, {torch.get_num_threads()} threads, "
        f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}.")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.md").write_text(table + "\n")
    (a.out / "curves.json").write_text(json.dumps({"curves": curves, "ann": ann_acc, "per_step_s": per_step}))
    plot_accuracy_vs_timestep(curves, a.out / "accuracy_vs_timestep.png", ann_acc, "vgg15ab on fmnist-small")
    print(table)


if __name__ == "__main__":
    main()
