"""``spikesearch`` command line: a thin layer over the Python API."""
from __future__ import annotations

import argparse
import signal
import sys

import torch

from .. import runs as run_module
from ..core import distributed
from ..core.errors import SpikeSearchError
from ..core.models import SpikingCNN
from ..core.neurons import NEURONS
from ..core.surrogate import SURROGATES
from ..data.datasets import DATASETS
from ..data.events import SPLITS
from ..runs import RunRequest
from ..train.pipeline import make_loaders, train_and_report
from ..train.setup import pick_device, seed_everything
from ..train.trainer import SCHEDULERS, TrainConfig, overridable
from . import args as arg
from . import convert as convert_command
from . import dhs as dhs_command
from . import export as export_command
from . import nasbench as nasbench_command
from . import search as search_command
from . import snasnet as snasnet_command


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs_dir", default="runs", help="parent folder of run folders")
    p.add_argument("--device", type=arg.device, default="auto", help="auto, cpu, cuda, cuda:1 ...")
    arg.add_run_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=arg.positive_int, default=None, help="CPU threads for torch")
    p.add_argument("--event_split", default="number", choices=SPLITS,
                   help="event datasets (nmnist, dvsgesture, cifar10dvs): T frames of equal event count or equal duration")


# the flags a resume re-plans (flag -> TrainConfig field); the others are refused by --override
TRAIN_OVERRIDES = overridable({k: k for k in ("epochs", "lr", "optimizer", "scheduler", "weight_decay", "batch_size")})


def cmd_train(a: argparse.Namespace) -> dict:
    device = pick_device(a.device)
    request = RunRequest.from_args(a, a.name, a.runs_dir, overridable=TRAIN_OVERRIDES)
    folder = request.check()
    seed_everything(a.seed)
    loaders = make_loaders(a.dataset, a.data_dir, a.batch_size, device, a.seed, a.train_subset, a.test_subset,
                           frames=a.timestep, split_by=a.event_split, val_fraction=a.val_fraction)
    info = loaders.info
    model = SpikingCNN.from_run(request.config, folder, info)
    run = request.open()  # only after the inputs checked out: a failed command writes nothing
    cfg = TrainConfig(epochs=a.epochs, batch_size=a.batch_size, optimizer=a.optimizer, lr=a.lr,
                      weight_decay=a.weight_decay, scheduler=a.scheduler, seed=a.seed, progress=not a.quiet)
    return train_and_report(model.to(device), loaders, cfg, run, a.timestep,
                            f"SpikingCNN {list(a.widths)} ({a.neuron}) on {a.dataset}", resume=run.resumed)


def cmd_datasets(a: argparse.Namespace) -> None:
    for name in DATASETS:
        info = DATASETS.get(name)
        print(f"{name:<14} {info.num_classes:>4} classes  {info.channels}x{info.size}x{info.size}  {info.layout}")
    print("\nneurons:", ", ".join(NEURONS.names()), "  surrogates:", ", ".join(SURROGATES.names()))


class Parser(argparse.ArgumentParser):
    """Bad flags end in one line, like every other error, instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="spikesearch", description="Find, train and convert spiking neural networks.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a small spiking CNN", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--name", default="train")
    t.add_argument("--dataset", default="fmnist-small")
    t.add_argument("--data_dir", default=None)
    t.add_argument("--epochs", type=arg.positive_int, default=3)
    t.add_argument("--batch_size", type=arg.positive_int, default=64)
    t.add_argument("--optimizer", default="adam", choices=["sgd", "adam"])
    t.add_argument("--lr", type=arg.positive_float, default=1e-3)
    t.add_argument("--weight_decay", type=arg.nonneg_float, default=0.0)
    t.add_argument("--scheduler", default="cosine", choices=SCHEDULERS.names(), help=arg.SCHEDULER_HELP)
    t.add_argument("--timestep", type=arg.positive_int, default=4)
    t.add_argument("--neuron", default="lif", choices=NEURONS.names())
    t.add_argument("--tau", type=arg.tau, default=2.0)
    t.add_argument("--surrogate", default="atan")
    t.add_argument("--widths", type=arg.positive_int, nargs="+", default=[32, 64])
    t.add_argument("--seed", type=arg.seed, default=0)
    t.add_argument("--train_subset", type=arg.positive_int, default=None)
    t.add_argument("--test_subset", type=arg.positive_int, default=None)
    arg.add_validation(t)
    add_common(t)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("snasnet", help="SNASNet search / train / evaluate (official flags)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    snasnet_command.add_arguments(s)
    add_common(s)
    s.set_defaults(func=snasnet_command.run_snasnet)

    ta = sub.add_parser("train-ann", help="train a (binary-weight) VGG ANN for conversion",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    convert_command.add_train_ann_arguments(ta)
    add_common(ta)
    ta.set_defaults(func=convert_command.cmd_train_ann)

    c = sub.add_parser("convert", help="convert a trained ANN to an SNN and simulate it (official flags)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    convert_command.add_convert_arguments(c)
    arg.add_run_flags(c)  # --resume continues a fine-tuning (--finetune_epochs)
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.add_argument("--threads", type=arg.positive_int, default=None, help="CPU threads for torch")
    c.set_defaults(func=convert_command.cmd_convert)

    h = sub.add_parser("dhs", help="SpikeDHS differentiable search: search | derive | train")
    dhs_command.add_arguments(h, add_common)

    n = sub.add_parser("nasbench", help="proxies and search strategies evaluated on SpikeNAS-Bench's trained table")
    nasbench_command.add_arguments(n, add_common)

    q = sub.add_parser("search", help="budgeted multi-fidelity / accuracy-vs-energy search (Optuna) over SNASNet cells or SpikeNAS-Bench",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    search_command.add_arguments(q, add_common)

    x = sub.add_parser("export", help="write a trained or converted network as NIR (neuromorphic hardware)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    export_command.add_arguments(x)

    d = sub.add_parser("datasets", help="list datasets, their expected layouts, neurons and surrogates")
    d.set_defaults(func=cmd_datasets)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` runs: worker pools are stopped, runs closed."""


def _terminate(signum, frame) -> None:
    raise Terminated


def _out_of_memory(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text))


def _interrupted(folders: list) -> str:
    if not folders:
        return "interrupted before anything was written"
    if run_module.resumable(folders[-1]):
        return f"interrupted; rerun the same command with --resume to continue {folders[-1]}"
    return f"interrupted; {folders[-1]} is incomplete (rerun with --overwrite to replace it)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    previous = signal.signal(signal.SIGTERM, _terminate)
    result, code, before = None, 0, len(run_module.opened())
    try:
        result = args.func(args)
        speaks = distributed.is_main()  # asked before leave(), after which every rank looks like rank 0
    except SpikeSearchError as e:
        print(f"spikesearch: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt as e:
        print(f"spikesearch: {_interrupted(run_module.opened()[before:])}", file=sys.stderr)
        code = 143 if isinstance(e, Terminated) else 130
    except Exception as e:
        if not _out_of_memory(e):
            raise
        why = next(iter(str(e).splitlines()), "").split("DefaultCPUAllocator: ")[-1][:200]
        folders = run_module.opened()[before:]
        kept = f"; {folders[-1]} keeps this attempt's config and log (rerun with --overwrite)" if folders else ""
        print(f"spikesearch: error: out of memory ({why}): lower --batch_size or --timestep{kept}", file=sys.stderr)
        code = 2
    finally:
        run_module.close_all()
        distributed.leave()
        signal.signal(signal.SIGTERM, previous)
    if code == 0 and isinstance(result, dict) and speaks:
        acc, best = result.get("test_acc"), result.get("best_test_acc")
        if acc is not None:
            chosen = (f"; epoch {result['best_epoch']}, chosen on the validation split: {100 * best:.2f}%"
                      if result.get("val_images") and best is not None else "")
            print(f"test accuracy: {100 * acc:.2f}% (final epoch){chosen}")
        folders = run_module.opened()[before:]
        if folders:
            print(f"run folder: {folders[-1]}")
    return code


if __name__ == "__main__":
    sys.exit(main())
