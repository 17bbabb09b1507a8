"""``spikesearch train-ann`` (VGG ANNs, the seed's recipes) and ``spikesearch convert`` (official flags)."""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch

from ..convert.converter import convert, evaluate_snn
from ..convert.finetune import FinetuneConfig, Unrolled, check_method
from ..convert.methods import CHOICES, help_text, resolve
from ..convert.qcfs import init_thresholds
from ..convert.rebuild import convert_config, file_sha256, finetune_config, held_out, load_vgg
from ..convert.report import layer_report, plot_layer_report
from ..convert.vgg import ARCHS, VGG, VGGConfig
from ..core.errors import SpikeSearchError
from ..data.events import SPLITS
from ..data.loader import BatchLoader
from ..measure.plots import plot_accuracy_vs_timestep, plot_spike_report, plot_training
from ..runs import RunRequest, atomic_write_bytes, check_output, read_json_object, split_job_dir
from ..train.checkpoint import load_checkpoint, load_model_weights
from ..train.pipeline import make_loaders, train_and_report
from ..train.setup import pick_device, seed_everything
from ..train.trainer import TrainConfig, Trainer, evaluate, overridable
from . import args as arg

# Lu & Sengupta's README recipes (CIFAR-100), and a short one for the bundled data.
RECIPES = {
    "fp": dict(optimizer="sgd", lr=5e-2, momentum=0.9, weight_decay=1e-4, scheduler="multistep",
               milestones=[81, 122], gamma=0.1, epochs=200, batch_size=256),
    "binary": dict(optimizer="adam", lr=5e-4, weight_decay=5e-4, weight_decay_epochs=30, scheduler="periodic",
                   step_size=30, gamma=0.5, epochs=200, batch_size=256),
    "short": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, scheduler="cosine", epochs=8, batch_size=64),
}

# train-ann's flags a resume re-plans (flag -> TrainConfig field); the recipe, model and data are refused
TRAIN_ANN_OVERRIDES = overridable({k: k for k in ("epochs", "lr", "batch_size")})
# and convert's, of its fine-tuning (the conversion itself is deterministic and redone on resume)
CONVERT_OVERRIDES = overridable({f"finetune_{k}": k for k in ("epochs", "lr", "batch_size")})


def cmd_train_ann(a: argparse.Namespace) -> dict:
    device = pick_device(a.device)
    seed_everything(a.seed)
    recipe = a.recipe or ("short" if a.dataset == "fmnist-small" else "binary" if a.binary else "fp")
    params = dict(RECIPES[recipe])
    for key, flag in (("epochs", a.epochs), ("lr", a.lr), ("batch_size", a.batch_size)):
        if flag is not None:
            params[key] = flag
    cfg = TrainConfig(seed=a.seed, progress=not a.quiet, **params)
    cfg.validate()
    request = RunRequest.from_args(a, *split_job_dir(a.job_dir), overridable=TRAIN_ANN_OVERRIDES, recipe=recipe)
    request.check()
    loaders = make_loaders(a.dataset, a.data_dir, cfg.batch_size, device, a.seed, a.train_subset, a.test_subset,
                           frames=a.frames, split_by=a.event_split, val_fraction=a.val_fraction)
    train, info = loaders.train, loaders.info
    vcfg = VGGConfig(arch=a.arch, num_classes=info.num_classes, in_channels=info.channels, image_size=info.size,
                     width=a.width, batchnorm=a.batchnorm, binary=a.binary, activation=a.activation, levels=a.levels)
    vcfg.validate()
    vcfg.check_memory(copies=4)  # weights, gradients and two Adam moments
    model = VGG(vcfg).to(device)
    run = request.open()  # only after the inputs checked out: a failed command writes nothing
    if a.activation == "qcfs":
        first = next(iter(BatchLoader(train.data.subset(512), 512, train.augment, False, device)))[0]
        lams = init_thresholds(model, first)
        run.log(f"QCFS thresholds initialised from the 99.9th percentile of 512 images: {[round(v, 3) for v in lams]}")
    kind = f"{'binary' if a.binary else 'full-precision'} {a.arch}{' +BN' if a.batchnorm else ''} ({a.activation})"
    result = train_and_report(model, loaders, cfg, run, 1, f"{kind} ANN on {a.dataset}", resume=run.resumed)
    best = load_checkpoint(run.path / "checkpoints" / "best.pt", device)
    buf = io.BytesIO()
    torch.save({"model": best["model"], "meta": model.meta(), "test_acc": result["best_test_acc"]}, buf)
    atomic_write_bytes(run.file("model.pt"), buf.getvalue())
    run.log(f"model file: {run.file('model.pt')} (epoch {result['best_epoch']}, chosen on the validation split; "
            f"its test accuracy {100 * result['best_test_acc']:.2f}%)")
    return result


def cmd_convert(a: argparse.Namespace) -> dict:
    device = pick_device("cuda" if a.gpu else "cpu")
    seed_everything(a.seed)
    if a.calib_timesteps is None:  # a calibration is fitted for one latency: the one simulated, unless told
        a.calib_timesteps = a.time  # resolved before config.json records it (export re-converts from there)
    tune = finetune_config(vars(a))
    a.finetune_timesteps = tune.timesteps  # likewise a fine-tuning
    tune.validate()
    request = RunRequest.from_args(a, *split_job_dir(a.job_dir), inputs=[a.model], overridable=CONVERT_OVERRIDES,
                                   resumable=tune.epochs > 0)
    folder = request.check()
    if a.resume and not (tune.epochs and _stored_finetuning(folder)):
        # the validation split, and with it the normalisation images, exist only with fine-tuning
        raise SpikeSearchError(f"--resume continues a fine-tuning: {folder} and this command must both have "
                               "--finetune_epochs > 0 (convert again with --overwrite)")
    if a.results_file:
        check_output(a.results_file, "--results-file", a.overwrite, [a.model, a.data, folder])
    train, val, test, info = make_loaders(a.dataset, a.data, tune.batch_size, device, a.seed, None, a.eval_size,
                                          eval_batch_size=a.batch_size, frames=a.frames, split_by=a.event_split,
                                          val_fraction=held_out(vars(a)))
    ann = load_vgg(a.model, vars(a), info).to(device).eval()
    cfg = convert_config(vars(a))
    method = resolve(cfg.method, ann.cfg.activation == "qcfs")
    if method.needs_one_step and not a.one_step:
        raise SpikeSearchError(f"--method {method.name} simulates one step at a time: add --one-step")
    if tune.epochs:
        check_method(method, a.one_step)
    ann_sha256 = file_sha256(a.model)
    run = request.open()  # only after the inputs checked out: a failed command writes nothing
    _, ann_acc = evaluate(ann, test)
    # normalisation images: the first --norm training images, un-augmented (the official code used the
    # train transforms with dropout active; both inflate the percentile)
    norm = train.data.subset(a.norm)
    batches = [x for x, _ in BatchLoader(norm, a.batch_size, train.augment, False, device)]
    snn, lams = convert(ann, batches, cfg)
    snn = snn.to(device)
    mode = "one-step" if a.one_step else "synchronous (one step of delay per layer)"
    run.log(f"converted {a.arch} ({'binary' if ann.cfg.binary else 'full precision'}, {ann.cfg.activation}) by "
            f"{method.name} ({method.summary}; {method.spikes} spikes): {len(snn.stages)} IF layers, thresholds from "
            f"{'QCFS' if ann.cfg.activation == 'qcfs' else f'{a.percentile} percentile of {len(norm)} images'}; "
            f"ANN test accuracy {100 * ann_acc:.2f}%; simulating T={a.time}"
            + (f" after {snn.presim} uncounted SRP steps" if snn.presim else "")
            + (f" (biases calibrated for T={cfg.calib_timesteps}; other T use that calibration)" if method.calibrate else "")
            + f", {mode}")
    finetuned = None
    if tune.epochs:
        snn, finetuned = _finetune(snn, ann.cfg.binary, tune, (train, val, test), run, a)
    res = evaluate_snn(snn, test, a.time, a.one_step, progress=not a.quiet)
    report_images = torch.cat([x for x, _ in test])[:a.report_images]
    ts = sorted({t for t in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if t <= a.time} | {a.time})
    layers = layer_report(snn, report_images, ts, a.one_step)
    run.save_json("layer_report.json", {"images": len(report_images), "method": method.name, "layers": layers})
    plot_layer_report(layers, run.file("layer_report.png"),
                      f"{a.arch} by {method.name}: where the SNN departs from the ANN")
    acc = res["accuracy"]
    table = run.save_csv("accuracy_per_timestep.csv", ["timestep", "snn_accuracy"], ((t + 1, v) for t, v in enumerate(acc)))
    curves = {f"SNN ({mode.split(' ')[0]})": acc}
    if finetuned is not None:
        curves = {"converted": finetuned["converted_accuracy"], f"fine-tuned at T={tune.timesteps}": acc}
    plot_accuracy_vs_timestep(curves, run.file("accuracy_vs_timestep.png"), {"ANN": ann_acc}, f"{a.arch} on {a.dataset}")
    plot_spike_report(res["spikes"], run.file("spikes.png"), f"converted {a.arch}, T={a.time}")
    run.save_json("spikes.json", res["spikes"])
    near = next((t + 1 for t, v in enumerate(acc) if v >= ann_acc - 0.01), None)
    result = {"method": method.name, "spike_values": method.spikes, "nir": method.nir_refusal or "exportable",
              "ann_sha256": ann_sha256, "presim": snn.presim,
              "calibrated_for_timesteps": cfg.calib_timesteps if method.calibrate else None,
              "finetuned": finetuned, "ann_acc": ann_acc, "test_acc": acc[-1], "best_snn_acc": max(acc),
              "timesteps": a.time,
              "timesteps_to_ann_minus_1pt": near, "images": res["images"],
              "seconds_per_timestep": res["seconds_per_timestep"], "thresholds": [t.tolist() for t in lams],
              "spikes": {k: v for k, v in res["spikes"].items() if k != "layers"}}
    run.save_json("results.json", result)
    if a.results_file:
        atomic_write_bytes(Path(a.results_file), table)
    run.log(f"SNN accuracy at T={a.time}: {100 * acc[-1]:.2f}% (ANN {100 * ann_acc:.2f}%); within 1 point of the "
            f"ANN from T={near}; {1000 * res['seconds_per_timestep']:.1f} ms per timestep for {res['images']} images")
    return result


def _finetune(snn, binary: bool, tune, loaders, run, a: argparse.Namespace) -> tuple:
    """Fine-tune the converted SNN in the run folder (checkpoints, metrics.csv, training.png; resumable) and return
    it with the epoch validation chose, and what it records: the converted SNN's accuracy per timestep beside it."""
    train, val, test = loaders
    converted = evaluate_snn(snn, test, a.time, a.one_step, progress=not a.quiet)["accuracy"]
    run.log(f"converted SNN before fine-tuning: {100 * converted[-1]:.2f}% at T={a.time}; fine-tuning its 0/1 neurons "
            f"at T={tune.timesteps} for {tune.epochs} epochs (Adam {tune.lr:g}, cosine), "
            + (f"the epoch chosen on {len(val.data)} validation images" if val else "the last epoch kept (no validation split)"))
    net = Unrolled(snn, tune.timesteps, binary)
    summary = Trainer(net, train, test, tune.train_config(a.seed, not a.quiet), run, val=val).fit(resume=run.resumed)
    plot_training(summary["history"], run.file("training.png"), f"fine-tuning the converted {a.arch}")
    best = run.path / "checkpoints" / "best.pt"
    load_model_weights(net, load_checkpoint(best, train.device), str(best))
    return net.baked(), {"timesteps": tune.timesteps, "epochs": tune.epochs, "best_epoch": summary["best_epoch"],
                         "best_val_acc": summary["best_val_acc"], "val_images": len(val.data) if val else 0,
                         "converted_accuracy": converted, "weights_sha256": file_sha256(best)}


def _stored_finetuning(folder: Path) -> bool:
    """Whether the run in ``folder`` (if any) fine-tunes; a folder without a run has nothing to refuse."""
    config = folder / "config.json"
    return not config.is_file() or bool(read_json_object(config).get("finetune_epochs"))


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="vgg15ab", choices=sorted(ARCHS))
    p.add_argument("--width", type=arg.positive_float, default=0.25, help="channel multiplier (1.0 = the paper's VGG)")
    p.add_argument("--binary", action="store_true", help="binary weights (first and last layer full precision)")
    p.add_argument("--batchnorm", action="store_true", help="BN after each conv, folded before conversion")
    p.add_argument("--activation", default="relu", choices=["relu", "qcfs"], help="qcfs: low-latency conversion")
    p.add_argument("--levels", type=arg.positive_int, default=8, help="QCFS quantization levels L")
    p.add_argument("--frames", type=arg.positive_int, default=10,
                   help="event datasets: frames per sample (the ANN sees their mean, the SNN replays them)")


def add_train_ann_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job-dir", "--job_dir", dest="job_dir", default="runs/ann", help="run folder")
    p.add_argument("--dataset", default="fmnist-small")
    p.add_argument("--data", "--data_dir", dest="data_dir", default=None)
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="default: short on fmnist-small, else binary with --binary, else fp")
    p.add_argument("--epochs", type=arg.positive_int, default=None)
    p.add_argument("--lr", type=arg.positive_float, default=None)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=arg.positive_int, default=None)
    p.add_argument("--seed", type=arg.seed, default=0)
    p.add_argument("--train_subset", type=arg.positive_int, default=None)
    p.add_argument("--test_subset", type=arg.positive_int, default=None)
    arg.add_validation(p)
    add_model_flags(p)


def add_convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job-dir", "--job_dir", dest="job_dir", required=True, help="the run folder for results")
    p.add_argument("--model", required=True, help="model file from train-ann, or a bare state dict")
    p.add_argument("--results-file", "--results_file", dest="results_file", default=None,
                   help="also write the accuracy-per-timestep CSV here")
    p.add_argument("--seed", type=arg.seed, default=0)
    p.add_argument("--time", type=arg.timesteps, default=80, help=f"timesteps to simulate (at most {arg.TIME_MAX})")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=arg.positive_int, default=100)
    p.add_argument("--n-workers", "--n_workers", dest="n_workers", type=arg.nonneg_int, default=0,
                   help="accepted for compatibility; in-memory data needs no workers")
    p.add_argument("--norm", type=arg.positive_int, default=3500, help="training images for threshold balancing")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--one-step", "--one_step", dest="one_step", action="store_true",
                   help="propagate through all layers within a timestep")
    p.add_argument("--data", default=None, help="dataset root")
    p.add_argument("--percentile", type=arg.percentile, default=99.9)
    p.add_argument("--eval_size", "--eval-size", dest="eval_size", type=arg.positive_int, default=None,
                   help="simulate only the first N test images")
    p.add_argument("--dataset", default="fmnist-small")
    p.add_argument("--event_split", default="number", choices=SPLITS, help="event datasets: bin by event count or by time")
    p.add_argument("--channel-wise", "--channel_wise", dest="channel_wise", action="store_true",
                   help="one threshold per channel instead of per layer")
    p.add_argument("--v-init", "--v_init", dest="v_init", type=arg.fraction, default=None,
                   help="initial membrane as a fraction of threshold (default 0 for the percentile method, else 0.5)")
    p.add_argument("--method", default=CHOICES[0], choices=CHOICES, help=help_text())
    p.add_argument("--presim", type=arg.positive_int, default=4, help="srp: uncounted pre-simulation steps (SRP's tau)")
    p.add_argument("--calib_timesteps", type=arg.positive_int, default=None,
                   help="calibrate: the T the biases are fitted for (default: --time; a calibration fitted for 8 steps "
                        "is not one for 4)")
    p.add_argument("--calib_images", type=arg.positive_int, default=256, help="calibrate: training images used")
    p.add_argument("--report_images", type=arg.positive_int, default=256,
                   help="test images for the per-layer report (layer_report.json/.png)")
    p.add_argument("--finetune_epochs", type=arg.nonneg_int, default=FinetuneConfig.epochs,
                   help="then train the converted 0/1 SNN's weights through its spikes for this many epochs (hybrid "
                        "conversion; qcfs, percentile, calibrate; needs --one-step): the epoch is chosen on the "
                        "validation split and its weights kept in checkpoints/ (export uses them)")
    p.add_argument("--finetune_timesteps", type=arg.timesteps, default=None, help="the T fine-tuned at (default: --time)")
    p.add_argument("--finetune_lr", type=arg.positive_float, default=FinetuneConfig.lr, help="fine-tuning: Adam's learning rate")
    p.add_argument("--finetune_batch_size", type=arg.positive_int, default=FinetuneConfig.batch_size,
                   help="fine-tuning: batch size")
    arg.add_validation(p, "fine-tuning only (give the ANN's --seed and --val_fraction: then these are the images "
                          "that chose the ANN's epoch, and the normalisation images are among its training images): ")
    add_model_flags(p)
