"""ANN->SNN conversion on the bundled data: accuracy at T = 1..32 per method, the gap to the ANN, and wall time
per timestep, for full-precision and binary-weight vgg15ab.

Trains four ANNs (full precision / binary weights x ReLU / QCFS) with the same recipe and seed, each for
``--epochs`` epochs with a cosine schedule, keeping the best epoch (the learning curve is in the run folders; the
table names the best epoch, so a best epoch near the end says the ANN was still improving). Converts each with
every method that applies (ReLU ANNs: percentile, srp, calibrate, signed, signed-calibrate; QCFS ANNs: qcfs in
place of percentile), and the ReLU ANNs with spikingjelly 2.0's ``ann2snn`` (RateCodingRecipe 99.9 %, and its
LocalThresholdBalancingRecipe where it exists) when spikingjelly is installed (``pip install -e .[bench]``). All
SNNs run one-step on the same test images. SRP's T counts only the simulated steps after its ``--presim``
uncounted ones (as its paper).

Trained ANNs and measured curves are kept in ``--out`` and reused by the next call with the same settings, so a
run can be interrupted, or split over processes with ``--only``, and a last call assembles the table. After a
change to the conversion code, ``--overwrite`` retrains and remeasures everything.

    python benchmarks/conversion.py --epochs 20 --out runs/bench/conversion
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from spikesearch.convert import VGG, ConvertConfig, VGGConfig, convert, evaluate_snn
from spikesearch.convert.converter import materialize
from spikesearch.convert.methods import METHODS as METHOD_RECORDS
from spikesearch.convert.qcfs import init_thresholds
from spikesearch.data.loader import BatchLoader
from spikesearch.measure.plots import plot_accuracy_vs_timestep
from spikesearch.runs import Run, holds_run
from spikesearch.train.pipeline import make_loaders
from spikesearch.train.setup import seed_everything
from spikesearch.train.trainer import TrainConfig, Trainer, evaluate

REPORT_T = (1, 2, 4, 8, 16, 32)
METHODS = {"relu": ("percentile", "srp", "calibrate", "signed", "signed-calibrate"),
           "qcfs": ("qcfs", "srp", "calibrate", "signed", "signed-calibrate")}


def spikingjelly_curves(ann, norm_batches, test, timesteps: int) -> dict[str, Callable[[], tuple[list[float], float]]]:
    """spikingjelly's recipes that exist in the installed version, each as a function that converts and
    simulates (accuracy per timestep, seconds per timestep)."""
    try:
        from spikingjelly.activation_based import ann2snn, functional
    except ImportError:
        return {}
    loader = [(x, torch.zeros(len(x))) for x in norm_batches]
    recipes = {"spikingjelly 2.0 ann2snn (99.9%)": lambda: ann2snn.RateCodingRecipe(loader, mode="99.9%")}
    if hasattr(ann2snn, "LocalThresholdBalancingRecipe"):
        recipes["spikingjelly 2.0 local threshold balancing"] = lambda: ann2snn.LocalThresholdBalancingRecipe(loader)

    @torch.no_grad()
    def simulate(recipe) -> tuple[list[float], float]:
        snn = ann2snn.Converter(recipe()).convert(materialize(ann).eval())
        correct = torch.zeros(timesteps, device=norm_batches[0].device)
        n, seconds = 0, 0.0
        for x, y in test:
            functional.reset_net(snn)
            total = 0.0
            t0 = time.perf_counter()
            for t in range(timesteps):
                total = total + snn(x)
                correct[t] += (total.argmax(1) == y).sum()
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            seconds += time.perf_counter() - t0
            n += len(y)
        return (correct.cpu() / n).tolist(), seconds / timesteps

    return {label: (lambda recipe=recipe: simulate(recipe)) for label, recipe in recipes.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--timesteps", type=int, default=32)
    ap.add_argument("--eval_size", type=int, default=1000)
    ap.add_argument("--norm", type=int, default=1000)
    ap.add_argument("--levels", type=int, default=4, help="QCFS quantization levels L")
    ap.add_argument("--presim", type=int, default=4, help="SRP's uncounted steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="*", default=None, help="ANN names to run, e.g. 'FP QCFS'")
    ap.add_argument("--methods", nargs="*", default=None, help="conversion methods to run (default: all that apply)")
    ap.add_argument("--dataset", default="fmnist-small", help="fmnist-small (bundled) or fashion-mnist (--data_dir)")
    ap.add_argument("--data_dir", default=None)
    ap.add_argument("--overwrite", action="store_true", help="retrain ANNs already trained in --out")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/conversion"))
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))  # the CI machine's 2 cores unless told
    seed_everything(a.seed)
    # best.pt is chosen on 10 % of the training images held out (never on the test set)
    train, val, test, info = make_loaders(a.dataset, a.data_dir, 64, device, a.seed, None, a.eval_size, eval_batch_size=250,
                                          val_fraction=0.1)
    norm = [x for x, _ in BatchLoader(train.data.subset(a.norm), 250, train.augment, False, device)]
    curves, ann_acc, per_step, rows, trained = {}, {}, {}, [], {}
    for binary in (False, True):
        for act in ("relu", "qcfs"):
            name = f"{'binary' if binary else 'FP'} {'QCFS' if act == 'qcfs' else 'ReLU'}"
            if a.only and name not in a.only:
                continue
            seed_everything(a.seed)
            ann = VGG(VGGConfig(num_classes=10, in_channels=1, image_size=28, width=a.width, batchnorm=True,
                                binary=binary, activation=act, levels=a.levels)).to(device)
            if act == "qcfs":
                init_thresholds(ann, norm[0])
            cfg = TrainConfig(epochs=a.epochs, optimizer="adam", lr=1e-3, weight_decay=0, progress=False, seed=a.seed)
            # a finished or interrupted ANN of the same settings is continued, not retrained (--overwrite retrains)
            config = {"ann": name, "epochs": a.epochs, "width": a.width, "levels": a.levels, "seed": a.seed,
                      "eval_size": a.eval_size, "norm": a.norm, "optimizer": "adam", "lr": 1e-3, "val_fraction": 0.1}
            if a.dataset != "fmnist-small":  # the bundled runs' settings stay as they were (and resumable)
                config["dataset"] = a.dataset
            path = a.out / name.replace(" ", "_")
            run = Run(path.name, a.out, quiet=True, config=config, resume=holds_run(path) and not a.overwrite,
                      overwrite=a.overwrite)
            summary = Trainer(ann, train, test, cfg, run, val=val).fit()
            best = torch.load(run.path / "checkpoints/best.pt", weights_only=True, map_location=device)
            ann.load_state_dict(best["model"])
            best_epoch = summary["best_epoch"]
            trained[name] = {"best_epoch": best_epoch, "epochs": a.epochs,
                             "train_seconds": sum(h["seconds"] for h in summary["history"])}
            ann.eval()
            _, ann_acc[name] = evaluate(ann, test)
            print(f"{name}: ANN {100 * ann_acc[name]:.2f}% (best epoch {best_epoch}/{a.epochs}, "
                  f"{trained[name]['train_seconds']:.0f}s)", flush=True)
            # each curve is kept in the ANN's run folder with the settings it was measured with, so an interrupted
            # benchmark (or one split over processes with --only) redoes nothing and a final run assembles the table
            cache_file = run.file("conversions.json")
            cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
            settings = {"timesteps": a.timesteps, "presim": a.presim, "device": device.type}

            def measured(label: str, simulate) -> None:
                if cache.get(label, {}).get("settings") != settings:
                    acc, secs = simulate()
                    cache[label] = {"settings": settings, "accuracy": acc, "seconds_per_timestep": secs}
                    run.save_json("conversions.json", cache)
                curves[label], per_step[label] = cache[label]["accuracy"], cache[label]["seconds_per_timestep"]
                rows.append((label, name))
                print(f"  {label}: " + " ".join(f"T{t}={100 * curves[label][t - 1]:.1f}" for t in REPORT_T
                                                if t <= a.timesteps), flush=True)

            def ours(method: str):
                snn, _ = convert(copy.deepcopy(ann), norm, ConvertConfig(percentile=99.9, method=method, presim=a.presim))
                res = evaluate_snn(snn, test, a.timesteps, one_step=True, progress=False)
                return res["accuracy"], res["seconds_per_timestep"]

            for method in (m for m in METHODS[act] if a.methods is None or m in a.methods):
                measured(f"{name} -> ours, {method}" + (f" (+{a.presim} uncounted steps)" if METHOD_RECORDS.get(method).presim else ""),
                         lambda: ours(method))
            if act == "relu":
                for label, simulate in spikingjelly_curves(ann, norm, test, a.timesteps).items():
                    try:
                        measured(f"{name} -> {label}", simulate)
                    except Exception as e:  # a recipe that does not run on this network is reported, not fatal
                        print(f"  {label}: did not run ({type(e).__name__}: {str(e)[:120]})", flush=True)
            run.close()
    ts = [t for t in REPORT_T if t <= a.timesteps]
    lines = ["| ANN -> SNN | ANN | " + " | ".join(f"T={t}" for t in ts) + " | gap at T=4 / 8 | ms / step |",
             "|---|---|" + "---|" * len(ts) + "---|---|"]
    for label, name in rows:
        acc = curves[label]
        gap = " / ".join(f"{100 * (ann_acc[name] - acc[t - 1]):+.1f}".replace("+-", "-") for t in (4, 8) if t <= a.timesteps)
        lines.append(f"| {label} | {100 * ann_acc[name]:.2f} | " + " | ".join(f"{100 * acc[t - 1]:.2f}" for t in ts)
                     + f" | {gap} | {1000 * per_step[label]:.1f} |")
    best = {name: max((lab for lab, n in rows if n == name and "ours" in lab), key=lambda lab: curves[lab][min(8, a.timesteps) - 1])
            for name in ann_acc}
    summary_lines = [f"- {name}: ANN {100 * ann_acc[name]:.2f} % (best epoch {trained[name]['best_epoch']}/{a.epochs}); "
                     f"best method at T=8: {lab.split(', ', 1)[1]}, {100 * curves[lab][3]:.2f} % at T=4 and "
                     f"{100 * curves[lab][7]:.2f} % at T=8" for name, lab in best.items() if a.timesteps >= 8]
    table = "\n".join(lines) + "\n\n" + "\n".join(summary_lines) + (
        f"\n\n{a.eval_size} test images of {a.dataset}, vgg15ab width {a.width} with BN (folded), {a.epochs} epochs Adam "
        f"1e-3 cosine (best epoch kept), seed {a.seed}, QCFS L={a.levels}, {a.norm} normalisation images, calibration "
        f"on 256 of them at T=8, SRP tau={a.presim}; one-step simulation; {platform.machine()}, "
        f"{torch.get_num_threads()} threads, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, "
        f"torch {torch.__version__}.")
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "table.md").write_text(table + "\n")
    (a.out / "curves.json").write_text(json.dumps({"curves": curves, "ann": ann_acc, "per_step_s": per_step,
                                                   "trained": trained}))
    plot_accuracy_vs_timestep(curves, a.out / "accuracy_vs_timestep.png", ann_acc, f"vgg15ab on {a.dataset}")
    print(table)


if __name__ == "__main__":
    main()
