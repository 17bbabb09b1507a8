"""First-order bi-level search (SpikeDHS ``search.py``): per step an SGD step on the weights with a
training batch, then an Adam step on alpha/beta/node logits with a batch from the held-out half (plus
an optional energy penalty), and every ``dgs_every`` epochs a short DGS phase.

DGS here is a hypergradient: for each node the surrogate backward is a softmax mixture of Dspike
temperatures ``b - delta, b, b + delta``; one SGD step is taken *functionally* with that mixture,
``w' = w - lr grad_w L_train``, and the mixture logits follow ``d L_val(w') / d logits`` (a double
backward). The winner then moves ``b``, as in the official code. The official code instead trains
five shadow copies of the layer for one step each; the hypergradient asks the same question (which
surrogate makes the next weight step best on held-out data) for every node at once.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm import tqdm

from ..core.errors import SpikeSearchError
from ..core.neurons import reset
from ..data.datasets import ImageSet
from ..data.loader import Augment, BatchLoader
from ..runs import Run, atomic_write_bytes
from ..train.checkpoint import load_checkpoint, resumable, rng_state, set_rng_state
from .genotype import Genotype, derive_cell, transition_weights, viterbi
from .network import DHSNet
from .nodes import DGSSurrogate, NeuronChoice, NodeMix

DGS_LR = 0.05  # Adam on the DGS logits (official: 0.01 over up to 200 steps; ours takes 4-20 hypergradient steps)


@dataclass
class SearchConfig:
    epochs: int = 4
    batch_size: int = 32
    lr: float = 0.05  # SGD on weights (official: 0.4 at batch 100, cosine to 1e-3, 50 epochs)
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-3  # Adam on alpha/beta/node logits (official 1e-3 over 50 epochs)
    arch_weight_decay: float = 1e-3
    arch_start_epoch: int = 0  # weights-only warm-up epochs before architecture steps (official: none)
    energy_weight: float = 0.0  # lambda of lambda * E[energy] / E[dense ANN energy]
    dgs_every: int = 1  # epochs between DGS phases
    dgs_steps: int = 4
    dgs_lr: float = DGS_LR
    train_portion: float = 0.5
    seed: int = 0

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "dgs_every"):
            if getattr(self, name) <= 0:
                raise SpikeSearchError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.train_portion < 1:
            raise SpikeSearchError(f"train_portion must be in (0, 1), got {self.train_portion}")


def split(data: ImageSet, portion: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Weights and architecture train on disjoint halves of the training set (never the test set)."""
    if not isinstance(data, ImageSet):
        raise SpikeSearchError("the differentiable search needs an in-memory dataset (fmnist-small, fashion-mnist, cifar)")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n = int(len(data) * portion)
    a, b = order[:n], order[n:]
    return (ImageSet(data.images[a], data.labels[a], data.classes), ImageSet(data.images[b], data.labels[b], data.classes))


def _loss(model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    reset(model)
    out = model(x)
    return nn.functional.cross_entropy(out, y), out


def dgs_step(model: DHSNet, batch: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], lr: float,
             opt: torch.optim.Optimizer) -> float:
    """One hypergradient step on every DGS logit; returns the validation loss after the virtual step."""
    trainable = {id(p) for p in model.weight_parameters()}
    names = [n for n, p in model.named_parameters() if id(p) in trainable]
    weights = [model.get_parameter(n) for n in names]
    loss, _ = _loss(model, *batch)
    grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
    stepped = {n: w - lr * g if g is not None else w for n, w, g in zip(names, weights, grads)}
    reset(model)
    val_loss = nn.functional.cross_entropy(functional_call(model, stepped, (val[0],)), val[1])
    logits = [s.logits for s in model.dgs_surrogates()]
    hyper = torch.autograd.grad(val_loss, logits, allow_unused=True)
    opt.zero_grad(set_to_none=True)
    for p, g in zip(logits, hyper):
        p.grad = torch.zeros_like(p) if g is None else g
    opt.step()
    reset(model)
    return float(val_loss.detach())


def snapshot(model: DHSNet) -> dict:
    """The architecture state at one moment, as plain lists (for the history JSON and the plots)."""
    snap: dict = {}
    if model.alpha is not None:
        snap["alpha"] = torch.softmax(model.alpha.detach(), -1).tolist()
    if model.beta is not None:
        snap["beta"] = transition_weights(model.beta.detach(), model.cfg.levels).tolist()
    snap["nodes"] = {name: m.weights().detach().tolist() for name, m in model.named_modules() if isinstance(m, NodeMix)}
    snap["b"] = {name: m.alpha for name, m in model.named_modules() if isinstance(m, DGSSurrogate)}
    return snap


def derive(model: DHSNet, info: dict | None = None) -> Genotype:
    """Discretise: top-k edges per node, Viterbi path, argmax neuron per node of the cells on the path,
    and each node's learned Dspike temperature."""
    cfg = model.cfg
    cell = derive_cell(model.alpha, cfg.ops, cfg.steps, cfg.top_k) if model.alpha is not None else \
        [[(int(s), str(o)) for s, o in n] for n in cfg.fixed_cell]
    path = viterbi(model.beta, cfg.levels) if model.beta is not None else list(model.path)
    nodes = []
    for k, lv in enumerate(path):
        src = path[k - 1] if k else 0
        cell_mod = model.cells[f"{k}_{lv}_{'same' if src == lv else 'down'}"]
        layer = []
        for node in cell_mod.nodes:
            choice = node.choices[node.best()] if isinstance(node, NodeMix) else NeuronChoice()
            sg = next((m for m in node.modules() if isinstance(m, DGSSurrogate)), None)
            if choice.kind == "lif" and sg is not None:
                choice = NeuronChoice("lif", choice.tau, sg.alpha)
            layer.append(choice)
        nodes.append(layer)
    stem_sg = model.stem[1].surrogate
    return Genotype(cell, path, nodes, float(stem_sg.alpha), info or {})


def _endless(loader: BatchLoader):
    """Batches of pass after pass: a phase of more steps than one pass has batches starts another."""
    while True:
        yield from loader


def _consecutive_pairs(loader: BatchLoader):
    batches = _endless(loader)
    while True:
        yield next(batches), next(batches)


def dgs_phase(model: DHSNet, pairs, steps: int, lr: float, opt: torch.optim.Optimizer) -> None:
    """``steps`` hypergradient steps on every DGS logit, (train batch, held-out batch) from ``pairs``, then
    each node's ``b`` moves to its winner (``DGSSurrogate.commit``)."""
    surrogates = model.dgs_surrogates()
    for s in surrogates:
        s.searching = True
    try:
        for _ in range(steps):
            batch, held_out = next(pairs)
            dgs_step(model, batch, held_out, lr, opt)
    finally:
        for s in surrogates:
            s.searching = False
    for s in surrogates:
        s.commit()


def dgs_during_training(model: DHSNet, every: int, steps: int):
    """A ``Trainer`` epoch hook that keeps searching each node's ``b`` while a derived network trains (the
    official ``train.py --use_DGS``: every ``every`` epochs, b clamped to [1, 6]). Consecutive training
    batches serve as the (train, held-out) pairs; the logits restart at zero each phase, so a fresh Adam
    per phase loses nothing and a resumed run repeats the phases exactly."""
    def hook(trainer, epoch: int) -> None:
        if (epoch + 1) % every:
            return
        logits = [s.logits for s in model.dgs_surrogates()]
        lr = trainer.optimizer.param_groups[0]["lr"]
        dgs_phase(model, _consecutive_pairs(trainer.train_loader), steps, lr, torch.optim.Adam(logits, lr=DGS_LR))
        trainer.run.log(f"DGS after epoch {epoch + 1}: b in {sorted({round(s.alpha, 2) for s in model.dgs_surrogates()})}")
    return hook


def _save_state(path: Path, epoch: int, model: DHSNet, opts: dict, loaders: dict, history: list[dict], run: Run) -> None:
    """Everything the next epoch depends on: weights and architecture parameters (each DGS ``b`` is in the
    state dict as extra state), the optimisers and schedule, the loaders' generators and every RNG."""
    buf = io.BytesIO()
    torch.save({"epoch": epoch, "model": model.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in opts.items() if o is not None},
                "loaders": {k: v.state_dict() for k, v in loaders.items()}, "rng": rng_state(), "history": history,
                "run": run.config}, buf)
    atomic_write_bytes(path, buf.getvalue())


def _load_state(path: Path, model: DHSNet, opts: dict, loaders: dict, run: Run) -> tuple[int, list[dict]]:
    ck = load_checkpoint(path)
    run.check_record(ck.get("run"), path)
    with resumable(path):
        model.load_state_dict(ck["model"])
        for k, o in opts.items():
            if o is not None:
                o.load_state_dict(ck["optimizers"][k])
        for k, v in loaders.items():
            v.load_state_dict(ck["loaders"][k])
        set_rng_state(ck["rng"])
        return int(ck["epoch"]) + 1, list(ck["history"])


def run_search(model: DHSNet, data: ImageSet, augment: Augment, cfg: SearchConfig, run: Run,
               device: torch.device, progress: bool = True, resume: bool = False) -> list[dict]:
    """The search, checkpointed after every epoch to ``checkpoints/last.pt``; ``resume`` continues after the
    last completed epoch exactly (the same genotype as an uninterrupted search with the same seed)."""
    cfg.validate()
    train_set, val_set = split(data, cfg.train_portion, cfg.seed)
    train = BatchLoader(train_set, cfg.batch_size, augment, True, device, cfg.seed)
    val = BatchLoader(val_set, cfg.batch_size, augment, True, device, cfg.seed + 1)
    weights = model.weight_parameters()
    w_opt = torch.optim.SGD(weights, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, cfg.epochs, eta_min=cfg.lr * 0.01)
    arch = model.arch_parameters()
    # the official search.py's Adam: betas (0.9, 0.999) (DARTS used 0.5), weight decay 1e-3
    a_opt = torch.optim.Adam(arch, lr=cfg.arch_lr, betas=(0.9, 0.999), weight_decay=cfg.arch_weight_decay) if arch else None
    surrogates = model.dgs_surrogates()
    d_opt = torch.optim.Adam([s.logits for s in surrogates], lr=cfg.dgs_lr) if surrogates else None
    opts = {"weights": w_opt, "schedule": sched, "arch": a_opt, "dgs": d_opt}
    loaders = {"train": train, "val": val}
    state_path = run.dir("checkpoints") / "last.pt"
    start, history = 0, [{"epoch": 0, **snapshot(model)}]
    if resume and state_path.exists():
        start, history = _load_state(state_path, model, opts, loaders, run)
        run.started()
        run.log(f"resumed the search from {state_path} after epoch {start}")
    elif resume:
        run.started()
        run.log(f"resume: no checkpoint yet ({state_path}): starting at epoch 1")
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        sums = {"train_loss": 0.0, "train_acc": 0.0, "val_loss": 0.0, "val_acc": 0.0, "energy_ratio": 0.0}
        n = 0
        search_arch = a_opt is not None and epoch >= cfg.arch_start_epoch
        bar = tqdm(zip(train, val), total=min(len(train), len(val)), desc=f"search {epoch + 1}/{cfg.epochs}",
                   leave=False, disable=not progress, dynamic_ncols=True)
        for (x, y), (xv, yv) in bar:
            loss, out = _loss(model, x, y)
            if not torch.isfinite(loss):
                raise SpikeSearchError(f"search loss became {float(loss.detach())} at epoch {epoch + 1}; lower --lr")
            w_opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(weights, cfg.grad_clip)
            w_opt.step()
            sums["train_loss"] += float(loss.detach()) * len(y)
            sums["train_acc"] += float((out.argmax(1) == y).sum())
            if search_arch:
                vloss, vout = _loss(model, xv, yv)
                ratio = model.energy / model.dense_energy
                a_opt.zero_grad(set_to_none=True)
                (vloss + cfg.energy_weight * ratio).backward()
                a_opt.step()
            else:
                with torch.no_grad():
                    vloss, vout = _loss(model, xv, yv)
                ratio = model.energy / model.dense_energy
            sums["val_loss"] += float(vloss.detach()) * len(yv)
            sums["val_acc"] += float((vout.argmax(1) == yv).sum())
            sums["energy_ratio"] += float(ratio.detach()) * len(y)
            n += len(y)
            bar.set_postfix(loss=f"{sums['train_loss'] / n:.3f}", val_acc=f"{100 * sums['val_acc'] / n:.1f}%")
        sched.step()
        if d_opt is not None and (epoch + 1) % cfg.dgs_every == 0:
            dgs_phase(model, zip(_endless(train), _endless(val)), cfg.dgs_steps, w_opt.param_groups[0]["lr"], d_opt)
        row = {"epoch": epoch + 1, **{k: v / max(n, 1) for k, v in sums.items()},
               "arch_steps": search_arch, "seconds": time.perf_counter() - t0, **snapshot(model)}
        history.append(row)
        _save_state(state_path, epoch, model, opts, loaders, history, run)
        run.save_json("search_history.json", history)
        bs = sorted({round(b, 2) for b in row["b"].values()})
        run.log(f"search epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.3f} acc {100 * row['train_acc']:.1f}%, "
                f"held-out acc {100 * row['val_acc']:.1f}%, E/E_dense {row['energy_ratio']:.3f}"
                + (f", b in {bs}" if bs else "") + f" ({row['seconds']:.0f}s)")
    reset(model)
    return history
