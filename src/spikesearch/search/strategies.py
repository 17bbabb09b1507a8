"""Search strategies over any ``Space``, run on an Optuna study (in memory for a simulation, SQLite in the run
folder for a real search: the same code). Each trial is one architecture; its intermediate values are the rung
signals (``trial.report(signal, epoch)``), a cell cut at a rung is PRUNED, a fully trained one COMPLETE with its
final signal (and energy). The budget counts training epochs: a rung continues from the previous one, so a cell
promoted from 3 to 9 epochs costs 6 more."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np
import optuna

from ..core.errors import SpikeSearchError
from ..core.registry import Registry
from .pareto import nondominated_rank, pareto_mask
from .space import SIGNALS, Evaluation, Space

OBJECTIVES = ("acc", "energy")
ARCH_ATTR = "arch"
AUTO = "auto"
# what the pre-filter and eta default to, by objectives (chosen on CIFAR-10 logs, docs/search.md): accuracy alone
# searches the largest cells; accuracy against energy needs the small ones too (the frugal end of the front is
# made of them), and halves at each rung so that more cells reach full training, where the front is read
OBJECTIVE_DEFAULTS = {("acc",): {"prefilter": "params", "eta": 4}, ("acc", "energy"): {"prefilter": None, "eta": 2}}


@dataclass
class SearchConfig:
    strategy: str = "sh"
    budget: int = 3000  # training epochs, all trials together
    objectives: tuple[str, ...] = ("acc",)
    signal: str = "tse"  # what ranks the cells at a rung
    final_signal: str = "val_acc_last10"  # what picks among fully trained cells
    prefilter: str | None = AUTO  # zero-cost score: search only its top ``prefilter_frac`` (AUTO: by objectives)
    prefilter_frac: float = 0.2
    warm_start: int = 0  # enqueue the zero-cost score's best cells first (TPE, NSGA-II, evolution)
    eta: int | None = None  # successive halving keeps 1/eta of the cells at each rung (None: by objectives)
    rung_factor: int = 3  # ... and trains them rung_factor times longer
    min_epochs: int = 1
    energy_proxy: str = "inv_threshold"  # ranks energy at a rung where the space measures none (acc,energy)
    population: int = 20  # regularised evolution
    tournament: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        self.objectives = tuple(self.objectives)
        defaults = OBJECTIVE_DEFAULTS.get(self.objectives, OBJECTIVE_DEFAULTS[("acc",)])  # check() refuses others
        if self.prefilter == AUTO:
            self.prefilter = defaults["prefilter"]
        if self.eta is None:
            self.eta = defaults["eta"]

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SpikeSearchError(f"unknown strategy {self.strategy!r}; choose from {', '.join(STRATEGIES)}")
        if not self.objectives or any(o not in OBJECTIVES for o in self.objectives) or self.objectives[0] != "acc":
            raise SpikeSearchError(f"--objectives is acc or acc,energy; got {','.join(self.objectives)}")
        for name in (self.signal, self.final_signal):
            if name not in SIGNALS:
                raise SpikeSearchError(f"unknown signal {name!r}; choose from {', '.join(SIGNALS)}")
        if not 0 < self.prefilter_frac <= 1:
            raise SpikeSearchError(f"the pre-filter keeps a fraction in (0, 1] of the cells; got {self.prefilter_frac}")
        if self.eta < 2 or self.rung_factor < 2 or self.min_epochs < 1 or self.budget < 1:
            raise SpikeSearchError("eta and rung_factor must be >= 2, min_epochs and the budget >= 1")
        if "energy" in self.objectives and self.strategy == "tpe":
            raise SpikeSearchError("--objectives acc,energy: use nsga2, random, evolution, sh or hyperband (TPE here is "
                                   "single-objective)")


@dataclass
class SearchResult:
    arch: Hashable | None  # the most accurate by the final signal (None: the budget paid for no full training)
    epochs_spent: int
    seconds_spent: float
    trials: int
    front: list[dict[str, Any]] = field(default_factory=list)  # accuracy-vs-energy: the non-dominated full trainings
    finals: list[dict[str, Any]] = field(default_factory=list)  # every fully trained cell, in order


class Ledger:
    """The study, the space and the budget: every evaluation goes through here, so the cost is counted once."""

    def __init__(self, study: optuna.Study, space: Space, cfg: SearchConfig):
        self.study, self.space, self.cfg = study, space, cfg
        self.epochs, self.seconds, self.finals = 0, 0.0, []
        self.dists = space.distributions()

    def left(self) -> int:
        return self.cfg.budget - self.epochs

    def ask(self, arch: Hashable | None = None) -> tuple[optuna.Trial, Hashable | None]:
        """A trial for ``arch``, or for what the study's sampler proposes (None when not in the space)."""
        if arch is not None:
            self.study.enqueue_trial(self.space.encode(arch), skip_if_exists=False)
        trial = self.study.ask()
        params = {k: trial.suggest_categorical(k, d.choices) for k, d in self.dists.items()}
        arch = self.space.decode(params)
        if arch is not None:
            trial.set_user_attr(ARCH_ATTR, self.space.describe(arch))
        return trial, arch

    def evaluate(self, trial: optuna.Trial, arch: Hashable, epochs: int) -> Evaluation:
        ev = self.space.evaluate(arch, epochs)
        self.epochs += ev.cost_epochs
        self.seconds += ev.cost_seconds
        if len(self.cfg.objectives) == 1:
            trial.report(ev.signals[self.cfg.signal], ev.epochs)
        else:  # Optuna keeps no intermediate values for a multi-objective trial
            trial.set_user_attr(f"{self.cfg.signal}@{ev.epochs}", ev.signals[self.cfg.signal])
        trial.set_user_attr("epochs", ev.epochs)
        return ev

    def complete(self, trial: optuna.Trial, arch: Hashable, ev: Evaluation) -> None:
        if ev.extra.get("diverged"):  # trained to the end, or as far as it could: no result to pick
            trial.set_user_attr("diverged", ev.extra["diverged"])
            self.reject(trial)
            return
        acc = ev.signals[self.cfg.final_signal]
        values = [acc] if len(self.cfg.objectives) == 1 else [acc, ev.energy]
        self.study.tell(trial, values)
        self.finals.append({"arch": arch, "acc": acc, "energy": ev.energy, "epochs_spent": self.epochs})

    def prune(self, trial: optuna.Trial) -> None:
        self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)

    def reject(self, trial: optuna.Trial) -> None:
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def result(self) -> SearchResult:
        finals = self.finals
        arch = max(finals, key=lambda f: f["acc"])["arch"] if finals else None
        front = []
        if finals and "energy" in self.cfg.objectives:
            m = pareto_mask(np.array([f["acc"] for f in finals]), np.array([f["energy"] for f in finals]))
            front = [f for f, keep in zip(finals, m) if keep]
        return SearchResult(arch, self.epochs, self.seconds, len(self.study.trials), front, finals)


def pool_of(space: Space, cfg: SearchConfig, rng: np.random.Generator, at_least: int = 0) -> list[Hashable]:
    """The candidates, cut to the zero-cost score's top fraction (but at least its top ``at_least``) when
    pre-filtered. Ties (#params takes only 7 values on SpikeNAS-Bench) are broken at random, never by id: the id
    itself ranks accuracy. Cells the score left unscored (NaN) are dropped."""
    cand = space.candidates(rng)
    if not cfg.prefilter:
        return cand
    score = space.zero_cost(cfg.prefilter, cand)
    ok = np.flatnonzero(np.isfinite(score))
    if not len(ok):
        raise SpikeSearchError(f"the zero-cost score {cfg.prefilter!r} scores none of the candidates")
    order = ok[np.lexsort((rng.random(len(ok)), -score[ok]))]
    keep = min(len(ok), max(1, int(round(cfg.prefilter_frac * len(ok))), at_least))
    return [cand[k] for k in order[:keep]]


def ranked_by_zero_cost(space: Space, cfg: SearchConfig, pool: list[Hashable], rng: np.random.Generator) -> list[Hashable]:
    if not cfg.prefilter:
        return list(rng.permutation(np.array(pool, dtype=object)))
    score = space.zero_cost(cfg.prefilter, pool)
    return [pool[k] for k in np.lexsort((rng.random(len(pool)), -np.nan_to_num(score, nan=-np.inf)))]


Strategy = Callable[[Ledger, np.random.Generator], None]
STRATEGIES: Registry[Strategy] = Registry("strategy")
SAMPLERS: dict[str, Callable[[SearchConfig], optuna.samplers.BaseSampler]] = {}


def _full(ledger: Ledger, arch: Hashable, trial: optuna.Trial | None = None) -> float | None:
    """Train ``arch`` fully in one trial; its final signal, or None when the budget cannot pay for it."""
    space = ledger.space
    need = space.max_epochs - getattr(space, "reached", {}).get(arch, 0)
    if need > ledger.left():
        if trial is not None:
            ledger.reject(trial)
        return None
    if trial is None:
        trial, _ = ledger.ask(arch)
    ev = ledger.evaluate(trial, arch, space.max_epochs)
    ledger.complete(trial, arch, ev)
    return ev.signals[ledger.cfg.final_signal]


def random_plan(space: Space, cfg: SearchConfig) -> list[Hashable]:
    """Random search's cells, in order: as many full trainings as the budget pays for, drawn without
    replacement from the (pre-filtered) pool. A fixed plan, so any number of workers trains the same cells."""
    rng = np.random.default_rng(cfg.seed)
    pool = pool_of(space, cfg, rng)
    return list(rng.permutation(np.array(pool, dtype=object))[:cfg.budget // space.max_epochs])


@STRATEGIES.register("random")
def random_search(ledger: Ledger, rng: np.random.Generator) -> None:
    """Full trainings of random_plan's cells."""
    for arch in random_plan(ledger.space, ledger.cfg):
        if _full(ledger, arch) is None:
            return


@STRATEGIES.register("evolution")
def evolution(ledger: Ledger, rng: np.random.Generator) -> None:
    """Regularised (aging) evolution (Real et al. 2019) with full trainings as fitness: the population starts
    from the pool (its zero-cost best first when warm-started), then a tournament's winner is mutated in one
    edge and the oldest member dies. A cell already trained is re-read for free (it only ages the population);
    a run of 100 such re-reads in a row ends the search (the neighbourhood is exhausted)."""
    cfg = ledger.cfg
    pool = pool_of(ledger.space, cfg, rng)
    first = ranked_by_zero_cost(ledger.space, cfg, pool, rng)[:cfg.population] if cfg.warm_start else \
        list(rng.permutation(np.array(pool, dtype=object))[:cfg.population])
    population: deque[tuple[Hashable, float]] = deque()
    value: dict[Hashable, float] = {}
    repeats = 0
    while repeats < 100:
        if first:
            arch = first.pop(0)
        else:
            k = rng.choice(len(population), size=min(cfg.tournament, len(population)), replace=False)
            arch = ledger.space.mutate(max((population[int(i)] for i in k), key=lambda p: p[1])[0], rng)
        if arch in value:
            repeats += 1
        else:
            got = _full(ledger, arch)
            if got is None:
                return
            value[arch], repeats = got, 0
        population.append((arch, value[arch]))
        if len(population) > cfg.population:
            population.popleft()


def _model_based(ledger: Ledger, rng: np.random.Generator) -> None:
    """TPE or NSGA-II: the study's sampler proposes cells (warm-started by enqueuing the zero-cost best); a
    proposal outside the space or the pre-filtered pool is told FAIL at no cost, a cell already trained is told
    its value again at no cost; 200 such proposals in a row end the search."""
    cfg = ledger.cfg
    pool = pool_of(ledger.space, cfg, rng)
    allowed = set(pool)
    for arch in ranked_by_zero_cost(ledger.space, cfg, pool, rng)[:cfg.warm_start] if cfg.warm_start else []:
        ledger.study.enqueue_trial(ledger.space.encode(arch))
    trained: set = set()
    idle = 0
    while idle < 200 and ledger.left() > 0:
        trial, arch = ledger.ask()
        if arch is None or arch not in allowed:
            ledger.reject(trial)
            idle += 1
            continue
        if arch in trained:
            idle += 1
            ev = ledger.evaluate(trial, arch, ledger.space.max_epochs)  # costs nothing: already trained
            ledger.study.tell(trial, [ev.signals[cfg.final_signal]] + ([ev.energy] if len(cfg.objectives) > 1 else []))
            continue
        if _full(ledger, arch, trial) is None:
            return
        trained.add(arch)
        idle = 0


STRATEGIES.add("tpe", _model_based)
STRATEGIES.add("nsga2", _model_based)
SAMPLERS["tpe"] = lambda cfg: optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True, n_startup_trials=10)
SAMPLERS["nsga2"] = lambda cfg: optuna.samplers.NSGAIISampler(seed=cfg.seed, population_size=cfg.population)


def rungs(cfg: SearchConfig, max_epochs: int, start: int | None = None) -> list[int]:
    """The epochs of successive halving's rungs: min_epochs x rung_factor^k while the next rung is still
    within full training, then full training (1, 3, 9, 27, 100: the last step is at least rung_factor long)."""
    e, out = start or cfg.min_epochs, []
    while e * cfg.rung_factor <= max_epochs:
        out.append(e)
        e *= cfg.rung_factor
    return out + [max_epochs]


def halving_cost(n0: int, epochs: list[int], eta: float) -> int:
    n, prev, cost = n0, 0, 0
    for e in epochs:
        cost += n * (e - prev)
        prev, n = e, max(1, int(n // eta))
    return cost


def budget_eta(n: int, epochs: list[int], eta: float, budget: int) -> float:
    """The smallest rate in [1, eta] at which a bracket of ``n`` cells costs at most ``budget`` (``eta`` itself
    when even that costs more). The cost falls as the rate grows, so a bisection finds it."""
    if halving_cost(n, epochs, eta) >= budget:
        return eta
    if halving_cost(n, epochs, 1) <= budget:
        return 1.0
    lo, hi = 1.0, float(eta)  # cost(lo) > budget >= cost(hi)
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if halving_cost(n, epochs, mid) <= budget else (mid, hi)
    return hi


def halving(ledger: Ledger, rng: np.random.Generator, pool: list[Hashable], epochs: list[int], budget: int,
            eta: float | None = None) -> None:
    """One synchronous successive-halving bracket: as many cells of ``pool`` as ``budget`` pays for start at the
    first rung; at each rung the best 1/eta (``cfg.eta`` unless given) by the chosen signal go on (continuing
    their training), the rest are pruned; the last rung is full training."""
    cfg = ledger.cfg
    eta = eta or cfg.eta
    n0 = 0
    while n0 < len(pool) and halving_cost(n0 + 1, epochs, eta) <= budget:
        n0 += 1
    if n0 == 0:
        return
    alive = []
    for arch in rng.choice(np.array(pool, dtype=object), size=n0, replace=False):
        trial, _ = ledger.ask(arch)
        alive.append((trial, arch))
    for k, e in enumerate(epochs):
        evs = [ledger.evaluate(t, a, e) for t, a in alive]
        if k == len(epochs) - 1:
            for (t, a), ev in zip(alive, evs):
                ledger.complete(t, a, ev)
            return
        keep = max(1, int(len(alive) // eta))
        signal = np.array([ev.signals[cfg.signal] for ev in evs])
        if len(cfg.objectives) == 1:
            order = np.lexsort((rng.random(len(alive)), -signal))  # ties at random
        else:  # by front level of (signal, energy): measured at the rung where the space can (our cells), else
            # a zero-cost estimate (SpikeNAS-Bench logs a cell's firing rates for full training only)
            energy = [ev.energy for ev in evs]
            if any(x is None for x in energy):
                energy = ledger.space.zero_cost(cfg.energy_proxy, [a for _, a in alive])
            level = nondominated_rank(signal, np.asarray(energy, dtype=float))
            order = np.lexsort((rng.random(len(alive)), level))
        for j in order[keep:]:
            ledger.prune(alive[j][0])
        alive = [alive[j] for j in order[:keep]]


@STRATEGIES.register("sh")
def successive_halving(ledger: Ledger, rng: np.random.Generator) -> None:
    """One bracket over the pre-filtered pool that spends the budget, whichever of the two is the smaller.

    The rungs and eta are the schedule; the budget decides how many cells start. When the pool holds more cells than
    the budget pays for at the first rung (CIFAR-10: the 3,125 largest cells against the 1,263 that 3,000 epochs pay
    for at eta 4), a random draw of the pool starts and nothing below applies. When the pool is the smaller, a
    bracket at eta would use it up early and leave the rest of the budget unspent (Tiny-ImageNet's 195 cells
    pre-filtered to 39: 160 epochs at eta 4, whatever the budget). Then the budget goes into depth, not width: the
    whole pool starts and each rung keeps more cells — the smallest rate in [1, eta] whose bracket fits the budget
    (``budget_eta``; as fixed-budget successive halving, Karnin et al. 2013, spends a given budget on a given set of
    arms — with the rungs fixed, the rate is what gives). More cells reach full training, where the pick reads the
    best signal there is (validation accuracy of a fully trained cell), and the pool stays the zero-cost score's
    choice. Only a budget beyond training the whole pool fully (rate 1) widens the pool, along the score's order, to
    the cells the budget can train fully.

    Why depth before width: chosen on CIFAR-10 logs only, before CIFAR-100's or Tiny-ImageNet's figures were read
    (the CIFAR-10 logs of those two tables' cells and random 195- and 276-cell subsets of CIFAR-10, budgets
    300-2,000 epochs; docs/search.md). There it left the least regret averaged over the budgets (0.37 points,
    against 0.43-0.57 for widening the pool to the score's top cells the first rung pays for, with or without
    spending what is left by lower rates or further brackets, and for Hyperband-style brackets over the pool with
    the leftover budget), though widening and then lowering the rate was 0.02-0.04 lower at 1,000-2,000 epochs.
    Keeping the pool keeps what the pre-filter is for: the cells below it rarely hold the best."""
    cfg, space = ledger.cfg, ledger.space
    pool = pool_of(space, cfg, rng, at_least=cfg.budget // space.max_epochs)
    epochs = rungs(cfg, space.max_epochs)
    halving(ledger, rng, pool, epochs, cfg.budget, budget_eta(len(pool), epochs, cfg.eta, cfg.budget))


@STRATEGIES.register("hyperband")
def hyperband(ledger: Ledger, rng: np.random.Generator) -> None:
    """Hyperband (Li et al. 2018): successive-halving brackets that start at each rung in turn (the most
    exploratory first), the budget shared equally; the pick is the best fully trained cell of all brackets."""
    cfg, space = ledger.cfg, ledger.space
    pool = pool_of(space, cfg, rng)
    starts = rungs(cfg, space.max_epochs)
    for k, start in enumerate(starts):
        share = ledger.left() // (len(starts) - k)
        halving(ledger, rng, pool, rungs(cfg, space.max_epochs, start), share)


def sampler_for(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
    """The study's sampler: the model-based strategies' own; the others choose their cells themselves and
    enqueue them, so the sampler only draws what is not enqueued (nothing)."""
    return SAMPLERS.get(cfg.strategy, lambda c: optuna.samplers.RandomSampler(seed=c.seed))(cfg)


def new_study(cfg: SearchConfig, storage: str | optuna.storages.BaseStorage | None = None,
              name: str | None = None, load: bool = False) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize"] + (["minimize"] if "energy" in cfg.objectives else [])
    return optuna.create_study(storage=storage, study_name=name, sampler=sampler_for(cfg), directions=directions,
                               load_if_exists=load)


def search(space: Space, cfg: SearchConfig, study: optuna.Study | None = None) -> SearchResult:
    """Run one search of ``space`` under ``cfg`` on ``study`` (a fresh in-memory study when None)."""
    cfg.check()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space.reset()
    ledger = Ledger(study or new_study(cfg), space, cfg)
    STRATEGIES.get(cfg.strategy)(ledger, np.random.default_rng(cfg.seed))
    return ledger.result()
