"""The search layer (spikesearch.search) on SpikeNAS-Bench read as a table, and the benchmark reader's hard cases,
on small clones written here in the benchmark's exact formats (CIFAR's 5-column logs, Tiny-ImageNet's 7)."""
import dataclasses

import numpy as np
import optuna
import pytest

from spikesearch import SpikeSearchError
from spikesearch.nasbench import bench
from spikesearch.nasbench.bench import cell_of, parse_log, reaches_output
from spikesearch.search import SearchConfig, search
from spikesearch.search.pareto import hypervolume, pareto_mask
from spikesearch.search.strategies import budget_eta, halving_cost, pool_of, random_plan, rungs
from spikesearch.search.tabular import BenchSpace



def write_log(root, arch_id, quality, dataset="CIFAR10", epochs=100, params=None, label=None, tiny=False, rows=None,
              seed=0):
    """A train_process.txt as SpikeNAS-Bench writes it. ``quality`` in [0, 1] drives the whole curve, so early
    epochs predict the end (noisily) as in the real logs."""
    rng = np.random.default_rng(seed * 100_003 + arch_id)
    folder = root / "data" / dataset / str(arch_id)
    folder.mkdir(parents=True)
    final = 60 + 30 * quality
    lines = []
    for e in range(epochs):
        val = final * (1 - np.exp(-(e + 1) / 8)) + rng.normal(0, 0.4)
        loss = 2.3 * np.exp(-(e + 1) * (0.05 + 0.1 * quality)) + 0.01
        cols = [e, min(99.9, val + 5), loss, max(0.0, val), 1.0]
        if tiny:
            cols = [e, min(99.9, val + 5), 90.0, loss, max(0.0, val), 95.0, 1.0]
        lines.append(", ".join(f"{c:.3f}" for c in cols))
    if rows is not None:
        lines = [lines[r] for r in rows]
    test = final + rng.normal(0, 0.2)
    header = ("epoch, train_acc,train_top5, train_loss, val_acc, val_top5, val_loss" if tiny
              else "epoch, train_acc, train_loss, val_acc, val_loss")
    end = f"test top1: {test:.3f}, test tpo5: 75.5" if tiny else f"test accuracy: {test:.3f}"
    firing = "firing rate of layers: " + ", ".join(f"{r:.3f}" for r in rng.uniform(0.02, 0.3, 16))
    (folder / "train_process.txt").write_text(
        f"architecture id: {arch_id if label is None else label}\nmodel parameters: {params or 17_179_620}\n{header}\n"
        + "\n".join(lines) + f"\n{end}\n{firing}\nElapsed time: 2.0hour1.0minute3.0second\n")
    return folder / "train_process.txt"


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """120 live cells of CIFAR-10 whose quality grows with the parameter count (as #params ranks the real ones)."""
    root = tmp_path_factory.mktemp("bench") / "SpikeNAS-Bench"
    rng = np.random.default_rng(1)
    ids = [i for i in rng.permutation(15625)[:400] if reaches_output(cell_of(int(i)))][:120]
    for i in ids:
        convs = int((cell_of(int(i)) >= 2).sum())
        write_log(root, int(i), quality=min(1.0, convs / 6 * 0.6 + rng.uniform(0, 0.4)),
                  params=17_179_620 + 738_048 * convs)
    return root


def test_tiny_imagenet_logs_parse_by_their_header(tmp_path):
    log = write_log(tmp_path, 10938, 0.5, dataset="TinyImagenet", tiny=True)
    rec = parse_log(log)
    rows = [line.split(", ") for line in log.read_text().splitlines()[3:103]]
    assert rec.val_acc == pytest.approx([float(r[4]) for r in rows])  # val_acc, not val_top5 (column 5)
    assert rec.train_loss == pytest.approx([float(r[3]) for r in rows])  # train_loss, not train_top5
    assert rec.test_acc == pytest.approx(float(log.read_text().split("test top1: ")[1].split(",")[0]))
    assert rec.seconds == 2 * 3600 + 60 + 3 and len(rec.firing) == 15


def test_reader_skips_and_reports_broken_logs(tmp_path):
    for i in (5, 6, 7):
        write_log(tmp_path, i, 0.5, dataset="TinyImagenet", tiny=True)
    write_log(tmp_path, 4880, 0.5, dataset="TinyImagenet", tiny=True, label=2)  # labelled with another id
    write_log(tmp_path, 15507, 0.5, dataset="TinyImagenet", tiny=True, rows=[99])  # the last epoch's row only
    table = bench.read_bench(tmp_path, "tinyimagenet")
    assert sorted(table) == [5, 6, 7]
    assert table.skipped == {"4880": bench.MISLABELLED, "15507": bench.NO_EPOCH_ROWS}
    assert "3 records read; skipped 1 logs labelled with another id than their folder; 1 logs without per-epoch rows" \
        in table.report()


def test_reader_range_checks_accuracies(tmp_path):
    log = write_log(tmp_path, 3, 0.5)
    text = log.read_text().replace("test accuracy: ", "test accuracy: 99999")
    log.write_text(text)
    with pytest.raises(SpikeSearchError, match=r"3/train_process.txt:104: an accuracy must lie in \[0, 100\] %"):
        parse_log(log)


def test_incomplete_cifar10_clone_is_reported(clone):
    table = bench.read_bench(clone)
    assert table.missing == 15625 - len(table) and "incomplete clone" in table.report()


def test_params_ties_are_broken_at_random_not_by_id(clone):
    space = BenchSpace(bench.read_bench(clone))
    space.params[:] = 1.0  # every cell ties
    cfg = SearchConfig(prefilter="params", prefilter_frac=0.25)
    pools = [pool_of(space, cfg, np.random.default_rng(s)) for s in range(20)]
    assert len({tuple(sorted(p)) for p in pools}) == 20
    ranks = [np.searchsorted(space.ids, p).mean() / len(space.ids) for p in pools]
    assert 0.35 < np.mean(ranks) < 0.65  # an id-ordered tie-break would sit at 0.125 or 0.875


def test_successive_halving_continues_training_and_counts_each_epoch_once(clone):
    space = BenchSpace(bench.read_bench(clone))
    cfg = SearchConfig(strategy="sh", budget=400, prefilter=None, eta=3)  # < 423, the whole table's bracket
    study = optuna.create_study(direction="maximize")
    res = search(space, cfg, study)
    epochs = rungs(cfg, 100)
    assert epochs == [1, 3, 9, 27, 100]
    n0 = max(n for n in range(1, 121) if halving_cost(n, epochs, 3) <= 400)
    assert n0 < 120
    # promotion continues training: the cost is n0*1 + n1*(3-1) + ..., not a restart at every rung
    assert res.epochs_spent == halving_cost(n0, epochs, 3) <= 400
    states = [t.state for t in study.trials]
    assert len(states) == n0 and states.count(optuna.trial.TrialState.COMPLETE) == len(res.finals) >= 1
    assert states.count(optuna.trial.TrialState.PRUNED) == n0 - len(res.finals)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert all(max(t.intermediate_values) < 100 for t in pruned)
    assert res.arch == max(res.finals, key=lambda f: f["acc"])["arch"]


def test_budget_eta_is_the_smallest_rate_whose_bracket_fits():
    epochs = [1, 3, 9, 27, 100]
    assert halving_cost(39, epochs, 4) == 160  # Tiny-ImageNet's pool at eta 4
    assert budget_eta(39, epochs, 4, 160) == budget_eta(39, epochs, 4, 100) == 4  # the budget binds: eta as set
    assert budget_eta(39, epochs, 4, 3900) == budget_eta(39, epochs, 4, 10_000) == 1.0  # all 39 fully trained
    for budget in (300, 500, 1000, 2000):
        eta = budget_eta(39, epochs, 4, budget)
        assert 1 < eta < 4 and halving_cost(39, epochs, eta) <= budget < halving_cost(39, epochs, eta - 1e-3)


def _trained(study):
    return [t.user_attrs["arch"]["arch_id"] for t in study.trials]


def test_sh_keeps_its_pool_and_eta_when_the_budget_binds(clone):
    space = BenchSpace(bench.read_bench(clone))
    cfg = SearchConfig(budget=100, seed=4)  # the default: the 24 largest of 120 cells cost 133 epochs at eta 4
    pool = pool_of(space, cfg, np.random.default_rng(4))
    epochs = rungs(cfg, 100)
    assert len(pool) == 24 and halving_cost(24, epochs, 4) == 133
    study = optuna.create_study(direction="maximize")
    res = search(space, cfg, study)
    n0 = max(n for n in range(1, 25) if halving_cost(n, epochs, 4) <= 100)
    assert len(study.trials) == n0 < 24 and set(_trained(study)) <= set(pool)
    assert res.epochs_spent == halving_cost(n0, epochs, 4) and len(res.finals) == 1


def test_sh_spends_a_budget_its_pool_cannot_use(clone):
    """A pool used up before the budget: the whole pool starts and each rung keeps more (eta lowered until the
    bracket fits); a budget beyond training the whole pool fully widens it along the score's order."""
    space = BenchSpace(bench.read_bench(clone))
    cfg = SearchConfig(budget=1000, seed=4)
    pool = pool_of(space, cfg, np.random.default_rng(4))
    epochs = rungs(cfg, 100)
    study = optuna.create_study(direction="maximize")
    res = search(space, cfg, study)
    eta = budget_eta(24, epochs, 4, 1000)
    assert sorted(_trained(study)) == sorted(pool)  # the pool is not widened: each of its cells starts
    assert res.epochs_spent == halving_cost(24, epochs, eta) == 934  # not 133
    assert len(res.finals) == 8 and res.arch in pool  # 24, 19, 15, 11, 8 cells at the rungs (eta just above 1.25)

    study = optuna.create_study(direction="maximize")
    res = search(space, dataclasses.replace(cfg, budget=3000), study)  # the 24 fully trained cost 2,400
    wide = pool_of(space, cfg, np.random.default_rng(4), at_least=30)
    assert set(pool) < set(wide) and len(wide) == 30
    by_params = sorted(space.params[[space.row[a] for a in wide]])
    assert by_params[0] >= max(space.params[[space.row[a] for a in space.ids if a not in wide]])  # the top 30
    assert sorted(_trained(study)) == sorted(f["arch"] for f in res.finals) == sorted(wide)
    assert res.epochs_spent == 3000


@pytest.mark.parametrize("strategy", ["random", "evolution", "tpe", "sh", "hyperband"])
def test_every_strategy_stays_within_budget_and_returns_a_trained_cell(clone, strategy):
    space = BenchSpace(bench.read_bench(clone))
    res = search(space, SearchConfig(strategy=strategy, budget=1000, prefilter_frac=0.5, warm_start=5, seed=3))
    assert 100 <= res.epochs_spent <= 1000
    assert res.arch in space.row and res.arch in {f["arch"] for f in res.finals}
    assert len({f["arch"] for f in res.finals}) == len(res.finals)  # no cell trained (and paid for) twice


def test_pareto_front_and_hypervolume():
    acc, energy = np.array([90, 80, 85, 70, 85]), np.array([10, 2, 5, 1, 6])
    assert pareto_mask(acc, energy).tolist() == [True, True, True, True, False]
    # reference (60, 12): steps at energy 1, 2, 5, 10 with accuracy 70, 80, 85, 90 above 60
    assert hypervolume(acc, energy, 60, 12) == pytest.approx(1 * 10 + 3 * 20 + 5 * 25 + 2 * 30)
    assert hypervolume(acc, energy, 95, 12) == 0.0


def test_energy_proxy_counts_only_edges_the_input_feeds():
    from spikesearch.search.tabular import inv_threshold

    mat = np.zeros((4, 4), dtype=np.int64)
    mat[0, 3] = 1  # skip to the output
    mat[1, 2] = 2  # LIF at threshold 0.5 out of node 1, which nothing feeds: it never fires
    mat[2, 3] = 4
    assert inv_threshold(bench.id_of(mat)) == 0.0
    mat[0, 1] = 3  # now node 1 is fed (threshold 1.0), and through it node 2
    assert inv_threshold(bench.id_of(mat)) == pytest.approx(1 / 1.0 + 1 / 0.5 + 1 / 1.5)


def test_hypervolume_reference_is_the_true_fronts_nadir(clone):
    from spikesearch.search.simulate import hv_reference

    for kind in ("sops", "rates"):
        space = BenchSpace(bench.read_bench(clone), energy=kind)
        energy = np.array([space.energy(int(i)) for i in space.ids])
        on = pareto_mask(space.test, energy)
        (acc, e), total = hv_reference(space)
        assert (acc, e) == (space.test[on].min(), energy[on].max()) and total > 0
        assert hypervolume(space.test[on], energy[on], acc, e) == pytest.approx(total)
        (acc, e), _ = hv_reference(space, "median")
        assert (acc, e) == (np.median(space.test), energy.max())
    assert energy.max() < 16  # the plain sum of 15 rates (the clone writes 16; the 16th is not a layer)
    with pytest.raises(SpikeSearchError, match="energy estimate"):
        BenchSpace(bench.read_bench(clone), energy="joules")


def test_defaults_follow_the_objectives():
    assert (SearchConfig().prefilter, SearchConfig().eta) == ("params", 4)
    mo = SearchConfig(objectives=("acc", "energy"))
    assert (mo.prefilter, mo.eta) == (None, 2)
    assert dataclasses.replace(mo, seed=3).prefilter is None  # resolved once, kept
    assert SearchConfig(objectives=("acc", "energy"), prefilter="params", eta=4).eta == 4  # given: kept


def test_search_command_writes_the_run_folder(clone, tmp_path):
    import json

    from spikesearch.cli.main import main

    runs = tmp_path / "runs"
    argv = ["search", "--space", "spikenas-bench", "--bench_dir", str(clone), "--budget", "600", "--prefilter_frac",
            "0.5", "--runs_dir", str(runs), "--quiet", "--seed", "2"]
    assert main([*argv, "--name", "s"]) == 0
    res = json.loads((runs / "s/results.json").read_text())
    table = bench.read_bench(clone)
    assert res["arch_id"] in table and res["cnt_mat"] == cell_of(res["arch_id"]).tolist()
    assert 100 <= res["epochs_spent"] <= 600 and res["test_acc"] == table[res["arch_id"]].test_acc
    study = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(runs / "s/study.journal"))))
    assert len(study.trials) == res["trials"] and study.best_trial.user_attrs["arch"]["arch_id"] == res["arch_id"]
    # the same search in memory returns the same cell: the CLI adds storage, not behaviour
    same = search(BenchSpace(table), SearchConfig(budget=600, prefilter_frac=0.5, seed=2))
    assert same.arch == res["arch_id"] and same.epochs_spent == res["epochs_spent"]

    assert main([*argv, "--name", "e", "--objectives", "acc,energy", "--strategy", "random", "--budget", "800"]) == 0
    front = json.loads((runs / "e/results.json").read_text())["front"]
    recorded = json.loads((runs / "e/config.json").read_text())
    assert (recorded["prefilter"], recorded["eta"]) == ("none", 2)  # what "auto" meant, recorded
    assert front["cells"] and 0 < front["hypervolume_share"] <= 1 and (runs / "e/front.png").is_file()
    energies = [c["energy"] for c in front["cells"]]
    assert energies == sorted(energies)

    assert main([*argv, "--name", "bad", "--objectives", "energy"]) == 2
    assert main([*argv, "--name", "bad", "--prefilter", "sahd"]) == 2  # no --scores: one line, no folder
    assert not (runs / "bad").exists()


def test_nasbench_search_refuses_a_torn_proxies_csv(clone, tmp_path, capsys):
    from spikesearch.cli.main import main

    scores = tmp_path / "scores"
    scores.mkdir()
    ids = sorted(bench.read_bench(clone))[:6]
    rows = [f"{i},80.0,{k}.5,1.0" for k, i in enumerate(ids)]
    (scores / "proxies.csv").write_text("id,test_acc,sahd,seconds\n" + "\n".join(rows[:5]) + f"\n{ids[5]},80.0,abc\n")
    argv = ["nasbench", "search", "--bench_dir", str(clone), "--proxy", "sahd", "--scores", str(scores), "--budget", "3",
            "--repeats", "2", "--runs_dir", str(tmp_path / "runs"), "--quiet"]
    assert main(argv) == 2
    assert "proxies.csv:7: a torn or non-numeric row" in capsys.readouterr().err
    (scores / "proxies.csv").write_text("id,test_acc,sahd,seconds\n" + "\n".join(rows) + "\n")
    assert main(argv) == 0


class SlowSpace(BenchSpace):
    """Training takes ``delay`` seconds, so that a worker can be killed in the middle of a trial."""

    def __init__(self, table, delay: float):
        super().__init__(table)
        self.delay = delay

    def evaluate(self, arch, epochs):
        import time

        time.sleep(self.delay)
        return super().evaluate(arch, epochs)


def _worker(clone, url, name, cfg, delay=0.4):
    from spikesearch.search.workers import rdb_storage, work

    storage = rdb_storage(url, heartbeat=1, grace=5)
    work(optuna.load_study(study_name=name, storage=storage), SlowSpace(bench.read_bench(clone), delay), cfg, poll=0.2)


@pytest.fixture(params=["sqlite", "postgresql"])
def rdb_url(request, tmp_path):
    """The study's storage: SQLite in a file (as the run folder has it), or a PostgreSQL server started for the test
    (``postgres_url`` in conftest.py: skipped, saying what is missing, where it cannot start one)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgres_url")


def test_three_workers_one_killed_mid_trial_count_every_cell_once(clone, rdb_url):
    """Storage covered: Optuna's RDB storage on SQLite and on a real PostgreSQL server (row locks: a stale trial is
    failed by one worker only; SQLite has none, see workers.py)."""
    import multiprocessing
    import os
    import signal
    import time

    from spikesearch.search.workers import collect, plan, rdb_storage

    url, cfg = rdb_url, SearchConfig(strategy="random", budget=1200, prefilter=None, seed=4)
    space = BenchSpace(bench.read_bench(clone))
    study = plan(cfg, space, rdb_storage(url, heartbeat=1, grace=5), "w")
    plan(cfg, space, rdb_storage(url), "w")  # a second process joining enqueues nothing more
    assert len(study.trials) == 12
    ctx = multiprocessing.get_context("fork")
    # the victim's first trial outlasts the test, so the kill lands mid-trial however loaded the machine; it starts
    # alone, since SQLite can hand one waiting trial to two workers popping at once (workers.py): another worker
    # could then complete the victim's trial and leave nothing to retry
    procs = [ctx.Process(target=_worker, args=(clone, url, "w", cfg) + ((600.0,) if k == 0 else ())) for k in range(3)]
    try:
        procs[0].start()
        victim = procs[0].pid
        deadline = time.time() + 60
        while not any(t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("pid") == victim
                      for t in study.get_trials()):
            assert time.time() < deadline, "the first worker never started a trial"
            time.sleep(0.05)
        for p in procs[1:]:
            p.start()
        time.sleep(1.0)  # the others are training when it dies
        os.kill(victim, signal.SIGKILL)
        for p in procs:
            p.join(120)
    finally:  # a failed test leaves no worker running (nor one holding the PostgreSQL server's connections)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert procs[0].exitcode == -signal.SIGKILL and [p.exitcode for p in procs[1:]] == [0, 0]

    trials = study.get_trials()
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    killed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("pid") == victim]
    assert len(killed) == 1  # the lost attempt, not counted
    cells = [space.decode(t.params) for t in done]
    if url.startswith("postgresql"):  # row locks: each planned cell completed exactly once
        assert sorted(cells) == sorted(random_plan(space, cfg))
    else:  # SQLite: a late tell can race the stale-trial check and a cell complete twice (workers.py); each once
        assert sorted(set(cells)) == sorted(random_plan(space, cfg))  # ... counted by collect, below
    assert space.decode(killed[0].params) in cells  # ... the killed one by its retry
    many = collect(study, space)
    single = search(space, cfg)
    assert (many.arch, many.epochs_spent) == (single.arch, single.epochs_spent) == (many.arch, 1200)


def test_retry_enqueues_a_dead_cell_once_and_gives_up_after_max_retry(tmp_path):
    from spikesearch.search.workers import MAX_RETRY, retry

    study = optuna.create_study()
    cell = {"edge_01": 1}
    waiting = lambda: [t for t in study.get_trials() if t.state == optuna.trial.TrialState.WAITING]  # noqa: E731
    study.enqueue_trial(cell)
    for attempt in range(MAX_RETRY + 1):  # the first attempt and MAX_RETRY retries, each killed
        trial = study.ask()  # pops the waiting attempt at the cell
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        dead = study.get_trials()[-1]
        retry(study, dead)
        retry(study, dead)  # a second worker failing the same stale trial: no second retry
        assert len(waiting()) == (1 if attempt < MAX_RETRY else 0)
    empty = study.ask()  # killed before it took a cell
    study.tell(empty, state=optuna.trial.TrialState.FAIL)
    retry(study, study.get_trials()[-1])
    assert not waiting()


def test_a_stale_trial_failed_twice_is_trained_once(clone, tmp_path):
    """Two workers failing one stale trial at the same moment (SQLite has no row lock) both enqueue its cell."""
    from spikesearch.search.workers import DUPLICATE_ATTR, collect, plan, rdb_storage, work

    cfg = SearchConfig(strategy="random", budget=500, prefilter=None, seed=4)
    space = BenchSpace(bench.read_bench(clone))
    study = plan(cfg, space, rdb_storage(f"sqlite:///{tmp_path / 'study.db'}"), "w")
    first = study.get_trials()[0]
    cell = first.system_attrs["fixed_params"]
    study.enqueue_trial(cell)
    study.enqueue_trial(cell)
    assert work(study, space, cfg) == 5
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    stood_down = [t for t in study.get_trials() if DUPLICATE_ATTR in t.user_attrs]
    assert len(done) == 5 and sorted(space.decode(t.params) for t in done) == sorted(random_plan(space, cfg))
    assert [t.user_attrs[DUPLICATE_ATTR] for t in stood_down] == [first.number, first.number]
    result = collect(study, space)
    assert (result.arch, result.epochs_spent) == (search(space, cfg).arch, 500)
    late = done[0]  # two tells at the same moment: a second completion of a cell counts nothing
    study.add_trial(optuna.trial.create_trial(params=late.params, distributions=late.distributions, value=100.0,
                                              user_attrs=late.user_attrs))
    assert (collect(study, space).arch, collect(study, space).epochs_spent) == (result.arch, 500)


def test_a_trial_handed_to_two_workers_is_trained_by_one_and_the_other_goes_on(clone, tmp_path):
    """SQLite can hand one waiting trial to two workers (seen in CI: the second worker's first write to it raised
    and killed the worker). Here the other worker completes the trial between this one's pop and its first write."""
    from spikesearch.search.workers import collect, plan, rdb_storage, work

    class Raced(BenchSpace):
        raced = False

        def describe(self, arch):  # called right after the pop, before the worker's first write to the trial
            if not self.raced:
                self.raced = True
                running = next(t for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING)
                study._storage.set_trial_state_values(running._trial_id, optuna.trial.TrialState.COMPLETE, [50.0])
            return super().describe(arch)

    cfg = SearchConfig(strategy="random", budget=500, prefilter=None, seed=4)
    space = Raced(bench.read_bench(clone))
    study = plan(cfg, space, rdb_storage(f"sqlite:///{tmp_path / 'study.db'}"), "w")
    assert work(study, space, cfg) == 4  # the fifth was told by the other worker, not by this one
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 5 and len(collect(study, space).finals) == 4  # the raced trial holds no cell record


def test_search_command_with_workers_equals_one_process(clone, tmp_path):
    import json

    from spikesearch.cli.main import main

    runs = tmp_path / "runs"
    argv = ["search", "--bench_dir", str(clone), "--strategy", "random", "--prefilter", "none", "--budget", "500",
            "--runs_dir", str(runs), "--quiet"]
    assert main([*argv, "--name", "one"]) == 0
    assert main([*argv, "--name", "three", "--workers", "3"]) == 0
    one, three = (json.loads((runs / n / "results.json").read_text()) for n in ("one", "three"))
    assert (one["arch_id"], one["epochs_spent"]) == (three["arch_id"], three["epochs_spent"]) == (one["arch_id"], 500)
    study = optuna.load_study(study_name="three", storage=f"sqlite:///{runs / 'three/study.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 5
    assert main([*argv, "--name", "bad", "--workers", "2", "--strategy", "sh"]) == 2
    assert not (runs / "bad").exists()
