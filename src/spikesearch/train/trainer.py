"""Training loop shared by every pillar: SGD/Adam, cosine/step schedules, AMP on CUDA, a resumable
checkpoint every epoch (model, optimizer, scheduler, RNG and loader state), best and last kept,
CSV + TensorBoard logs, progress bars, and a clean stop on a NaN loss."""
from __future__ import annotations

import io
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from ..core import distributed
from ..core.errors import Diverged, SpikeSearchError
from ..core.neurons import reset
from ..core.registry import Registry
from ..data.loader import BatchLoader
from ..runs import Run, atomic_write_bytes
from .checkpoint import load_checkpoint, load_model_weights, resumable, rng_state, set_rng_state


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    weight_decay_epochs: int | None = None  # weight decay switched off after this many epochs (binary VGG recipe)
    scheduler: str = "cosine"
    eta_min_ratio: float = 0.01  # cosine floor as a fraction of lr (SNASNet: 0.1 -> 0.001)
    milestones: list[int] = field(default_factory=list)  # multistep; empty = 50% and 75% of epochs
    step_size: int = 30  # step schedule
    gamma: float = 0.1
    amp: bool = True  # used only on CUDA
    seed: int = 0
    eval_interval: int = 1
    progress: bool = True

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_interval"):
            if getattr(self, name) <= 0:
                raise SpikeSearchError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0:
            raise SpikeSearchError(f"learning rate must be positive, got {self.lr}")
        OPTIMIZERS.get(self.optimizer)
        SCHEDULERS.get(self.scheduler)


OPTIMIZERS: Registry[Callable] = Registry("optimizer")
# Keyword arguments throughout: the official SNASNet code passed weight decay positionally into
# SGD's `dampening` slot, so it trained with no weight decay at all.
OPTIMIZERS.add("sgd", lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay))
OPTIMIZERS.add("adam", lambda p, c: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay))

SCHEDULERS: Registry[Callable] = Registry("scheduler")
SCHEDULERS.add("cosine", lambda o, c: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=c.epochs, eta_min=c.lr * c.eta_min_ratio))
SCHEDULERS.add("multistep", lambda o, c: torch.optim.lr_scheduler.MultiStepLR(
    o, milestones=c.milestones or [int(0.5 * c.epochs), int(0.75 * c.epochs)], gamma=c.gamma))
# "step" is one schedule in every command, SNASNet's official meaning: the rate times gamma (0.1) at 50 % and
# 75 % of the epochs, whatever their number. A step every ``step_size`` epochs (the binary VGG recipe) is "periodic".
SCHEDULERS.add("step", lambda o, c: torch.optim.lr_scheduler.MultiStepLR(
    o, milestones=[int(0.5 * c.epochs), int(0.75 * c.epochs)], gamma=c.gamma))
SCHEDULERS.add("periodic", lambda o, c: torch.optim.lr_scheduler.StepLR(o, step_size=c.step_size, gamma=c.gamma))
SCHEDULERS.add("none", lambda o, c: torch.optim.lr_scheduler.LambdaLR(o, lambda _: 1.0))

# The settings a resume re-plans (TrainConfig fields), so a command may let ``--override`` change them:
# the optimiser's settings come from the new config (its accumulated state, momentum or Adam moments, is
# kept when the optimiser type is the same and starts fresh when it changes); the LR schedule is rebuilt
# for the new settings and stepped to the current epoch, as an uninterrupted run with them would stand;
# batch size and evaluation interval apply from the next epoch. Anything else (model, data, seed) fixes the
# weights already trained and is refused.
REPLANNED = ("epochs", "lr", "optimizer", "scheduler", "weight_decay", "momentum", "batch_size", "eval_interval",
             "milestones", "step_size", "gamma", "eta_min_ratio", "weight_decay_epochs")


def overridable(names: dict[str, str]) -> tuple[str, ...]:
    """A command's settings (``{flag key: TrainConfig field}``) that a resume re-plans."""
    unknown = [f for f in names.values() if f not in REPLANNED]
    if unknown:
        raise ValueError(f"not re-planned on resume: {unknown}")
    return tuple(names)


@torch.no_grad()
def evaluate(model: nn.Module, loader: BatchLoader, amp: bool = False) -> tuple[float, float]:
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    for x, y in loader:
        reset(model)
        with torch.autocast(loader.device.type, enabled=amp and loader.device.type == "cuda"):
            out = model(x)
        loss_sum += float(nn.functional.cross_entropy(out.float(), y, reduction="sum"))
        correct += int((out.argmax(1) == y).sum())
        n += len(y)
    reset(model)
    return loss_sum / n, correct / n


class Trainer:
    CSV_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds"]

    def __init__(self, model: nn.Module, train: BatchLoader, test: BatchLoader | None, cfg: TrainConfig, run: Run,
                 epoch_hooks: Sequence[Callable[["Trainer", int], None]] = (), val: BatchLoader | None = None) -> None:
        """``val`` (held out from the training images) chooses ``best.pt``: the epoch of highest validation
        accuracy. The test set is evaluated for the curves and never chooses anything; without ``val`` the
        latest epoch is ``best.pt``. ``epoch_hooks(trainer, epoch)`` run after each epoch's training steps,
        before its evaluation and checkpoint (so what they change is saved and a resumed run repeats them)."""
        cfg.validate()
        self.model, self.train_loader, self.test_loader, self.cfg, self.run = model, train, test, cfg, run
        self.val_loader = val
        self.epoch_hooks = list(epoch_hooks)
        self.device = train.device
        self.amp = cfg.amp and self.device.type == "cuda"
        # the forward/backward goes through DDP under torchrun; evaluation and checkpoints use the bare model
        self.net = model
        if distributed.active():
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = OPTIMIZERS.get(cfg.optimizer)(model.parameters(), cfg)
        self.scheduler = SCHEDULERS.get(cfg.scheduler)(self.optimizer, cfg)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.history: list[dict] = []
        self.best_acc = -1.0  # validation accuracy of best.pt
        self.best_epoch: int | None = None
        self.start_epoch = 0
        self.ckpt_dir = run.dir("checkpoints")
        self.resume_path = run.path / "checkpoints" / "last.pt"  # every rank resumes from rank 0's file

    # --- checkpoints -------------------------------------------------------------------------------
    def state_dict(self, epoch: int) -> dict:
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": rng_state(), "loader": self.train_loader.state_dict(), "history": self.history,
                "best_acc": self.best_acc, "best_epoch": self.best_epoch, "config": asdict(self.cfg),
                "run": self.run.config}

    def save(self, epoch: int, is_best: bool) -> None:
        """``best.pt`` before ``last.pt``: if either write fails, the previous ``last.pt`` (which a resume
        reads) never records a best accuracy whose file is missing, and the epoch is redone on resume."""
        buf = io.BytesIO()
        torch.save(self.state_dict(epoch), buf)
        if is_best:
            atomic_write_bytes(self.ckpt_dir / "best.pt", buf.getvalue())
        atomic_write_bytes(self.ckpt_dir / "last.pt", buf.getvalue())

    def resume(self) -> bool:
        """Restore ``checkpoints/last.pt`` and re-plan what depends on settings the resume changed (see
        ``REPLANNED``); nothing is written to the run folder until this has succeeded (``Run.started``)."""
        path = self.resume_path
        if not path.exists():
            self.run.started()
            self.run.log(f"resume: no checkpoint yet ({path}): starting at epoch 1")
            return False
        ck = load_checkpoint(path)  # on the CPU: RNG states must stay CPU tensors; weights are copied over
        self.run.check_record(ck.get("run"), path)
        load_model_weights(self.model, ck, str(path))
        with resumable(path):
            ran, done = dict(ck["config"]), int(ck["epoch"]) + 1
            if self.cfg.epochs < done:
                raise SpikeSearchError(f"{path} has already trained {done} epochs: a resume needs at least that many "
                                       f"(got epochs {self.cfg.epochs})")
            changed = {k: (ran[k], v) for k, v in asdict(self.cfg).items() if k in ran and k != "progress" and ran[k] != v}
            ours = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
            if ran["optimizer"] == self.cfg.optimizer:
                self.optimizer.load_state_dict(ck["optimizer"])
                for group, settings in zip(self.optimizer.param_groups, ours):
                    group.update(settings)  # the state is the checkpoint's, the settings this run's
            self._plan_schedule(done)
            self.scaler.load_state_dict(ck["scaler"])
            set_rng_state(ck["rng"])
            self.train_loader.load_state_dict(ck["loader"])
            self.history, self.best_acc, self.start_epoch = list(ck["history"]), float(ck["best_acc"]), done
            self.best_epoch = ck["best_epoch"]
        self.run.started()
        self.run.log(f"resumed from {path} after epoch {done}")
        if changed:
            fresh = " (its state starts fresh)" if "optimizer" in changed else ""
            self.run.log("re-planned for " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
                         + f"{fresh}: learning rate {self.optimizer.param_groups[0]['lr']:.4g} at epoch {done + 1}")
        return True

    def _plan_schedule(self, epoch: int) -> None:
        """The LR schedule of an uninterrupted run with this config after ``epoch`` epochs: built afresh
        for any registered scheduler and stepped that far (the same arithmetic as the run's own steps)."""
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] = self.cfg.lr
        self.scheduler = SCHEDULERS.get(self.cfg.scheduler)(self.optimizer, self.cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns of a scheduler step before any optimiser step
            for _ in range(epoch):
                self.scheduler.step()

    # --- loop --------------------------------------------------------------------------------------
    def _apply_weight_decay_schedule(self, epoch: int) -> None:
        if self.cfg.weight_decay_epochs is not None and epoch >= self.cfg.weight_decay_epochs:
            for g in self.optimizer.param_groups:
                g["weight_decay"] = 0.0

    def train_epoch(self, epoch: int) -> tuple[float, float]:
        self.model.train()
        loss_sum, correct, n = 0.0, 0, 0
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False,
                   disable=not (self.cfg.progress and sys.stderr.isatty()), dynamic_ncols=True)
        for i, (x, y) in enumerate(bar):
            reset(self.model)
            with torch.autocast(self.device.type, enabled=self.amp):
                out = self.net(x)
                loss = nn.functional.cross_entropy(out.float(), y)
            local_loss = float(loss.detach())
            # averaged over ranks so that every rank sees a NaN on any one and all stop together
            loss_value = distributed.all_sum([local_loss], self.device)[0] / distributed.rank_world()[1]
            if not math.isfinite(loss_value):
                last = self.resume_path
                kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
                raise Diverged(f"loss became {loss_value} at epoch {epoch + 1}, batch {i + 1}; stopped: "
                               f"{kept} (try a lower learning rate)")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            loss_sum += local_loss * len(y)
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
            bar.set_postfix(loss=f"{loss_sum / n:.3f}", acc=f"{100 * correct / n:.1f}%")
        reset(self.model)
        loss_sum, correct, n = distributed.all_sum([loss_sum, correct, n], self.device)
        return loss_sum / n, correct / n

    def fit(self, resume: bool | None = None, until: int | None = None) -> dict:
        """Train; ``resume`` (default: whether the run was opened with ``resume=True``) continues from
        ``checkpoints/last.pt``. ``until`` stops after that many epochs, on the schedule planned for
        ``cfg.epochs``: a later ``fit`` (or a resume) continues exactly as one uninterrupted run would."""
        if self.run.resumed if resume is None else resume:
            self.resume()
        writer = self._tensorboard()
        end = self.cfg.epochs if until is None else min(until, self.cfg.epochs)
        for epoch in range(self.start_epoch, end):
            self._apply_weight_decay_schedule(epoch)
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss, train_acc = self.train_epoch(epoch)
            for hook in self.epoch_hooks:
                hook(self, epoch)
            row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
                   "val_loss": None, "val_acc": None, "test_loss": None, "test_acc": None}
            if (epoch + 1) % self.cfg.eval_interval == 0 or epoch + 1 == self.cfg.epochs:
                for split, loader in (("val", self.val_loader), ("test", self.test_loader)):
                    if loader is not None:
                        row[f"{split}_loss"], row[f"{split}_acc"] = evaluate(self.model, loader, self.amp)
            self.scheduler.step()
            row["seconds"] = time.perf_counter() - t0
            self.history.append(row)
            if self.val_loader is None:
                is_best = True
            else:
                is_best = row["val_acc"] is not None and row["val_acc"] > self.best_acc
                if is_best:
                    self.best_acc = row["val_acc"]
            if is_best:
                self.best_epoch = epoch + 1
            if self.run.main:
                self.save(epoch, is_best)
            self.run.save_csv("metrics.csv", self.CSV_FIELDS, ([h[k] for k in self.CSV_FIELDS] for h in self.history))
            if writer is not None:
                for k in ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
                    if row[k] is not None:
                        writer.add_scalar(k, row[k], epoch + 1)
                writer.flush()
            evals = "".join(f", {split} loss {row[f'{split}_loss']:.4f} acc {100 * row[f'{split}_acc']:.2f}%"
                            for split in ("val", "test") if row[f"{split}_acc"] is not None)
            self.run.log(f"epoch {epoch + 1}/{self.cfg.epochs}: lr {lr:.4g}, train loss {train_loss:.4f} "
                         f"acc {100 * train_acc:.2f}%{evals} ({row['seconds']:.1f}s)")
        self.start_epoch = max(self.start_epoch, end)
        if writer is not None:
            writer.close()
        distributed.barrier()  # rank 0's last checkpoint is on disk before any rank reads it back
        final = self.history[-1] if self.history else {}
        best = self.history[self.best_epoch - 1] if self.best_epoch else {}
        if best:
            self.run.log(f"best.pt: epoch {self.best_epoch}"
                         + (f", chosen by validation accuracy {100 * best['val_acc']:.2f}%" if self.val_loader else
                            " (no validation split: the last epoch)")
                         + (f"; its test accuracy {100 * best['test_acc']:.2f}%" if best.get("test_acc") is not None else ""))
        return {"epochs": self.cfg.epochs, "final_test_acc": final.get("test_acc"), "best_epoch": self.best_epoch,
                "best_val_acc": best.get("val_acc"), "best_test_acc": best.get("test_acc"), "history": self.history}

    def _tensorboard(self):
        if not self.run.main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.run.log("tensorboard not installed: TensorBoard logs skipped (CSV still written)")
            return None
        return SummaryWriter(str(self.run.file("tb")), purge_step=self.start_epoch + 1)

