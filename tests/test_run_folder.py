"""The run-folder contract (docs/robustness.md, run.py): nothing lost, mixed or overwritten, whatever the
user does: names reused, --resume with other settings, two processes on one run, torn and failed writes,
kills mid-search, stale temp files, symlinks planted in the folder."""
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spikesearch import runs as run_module
from spikesearch.cli.main import main
from spikesearch.core.errors import SpikeSearchError
from spikesearch.runs import CsvLog, Run

TRAIN = ["train", "--epochs", "1", "--train_subset", "128", "--test_subset", "64", "--widths", "8", "16", "--quiet"]
SEARCH = ["snasnet", "--num_search", "12", "--search_only", "--score_batch", "16", "--train_subset", "64",
          "--quiet", "--threads", "1"]
DHS = ["dhs", "search", "--train_subset", "192", "--epochs", "3", "--layers", "2", "--levels", "2", "--channels", "4",
       "--timestep", "2", "--batch_size", "32", "--dgs", "--tps", "--quiet", "--threads", "1", "--seed", "3"]


def cli(capsys, *argv):
    """(exit code, stderr lines) of one in-process command."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip().splitlines()


def files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def ranked(folder: Path) -> list[tuple[str, str]]:
    rows = CsvLog(folder / "search.csv", ["index", "cnt_mat", "score", "seconds", "duplicate"]).rows
    return [(r["cnt_mat"], r["score"]) for r in rows]


# --- 1. search.csv survives torn and failed writes -----------------------------------------------------

HEADER = ["index", "cnt_mat", "score"]


def test_csv_log_drops_a_torn_last_row_and_never_glues(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"index,cnt_mat,score\n0,a,1.5\n1,b,2")  # a crash mid-append
    log = CsvLog(path, HEADER)
    assert [r["cnt_mat"] for r in log.rows] == ["a"] and log.dropped == "1,b,2"
    log.append([1, "c", 3.0])
    log.close()
    assert path.read_bytes() == b"index,cnt_mat,score\n0,a,1.5\n1,c,3.0\n"


def test_csv_log_zero_bytes_gets_its_header(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"")
    log = CsvLog(path, HEADER)
    log.append([0, "a", 1.0])
    log.close()
    assert path.read_text().splitlines() == ["index,cnt_mat,score", "0,a,1.0"]


@pytest.mark.parametrize("content,message", [
    (b"index,cnt_mat,score\n0,a,1.5\n1,b2,5,c,3\n", "line 3 is malformed"),  # two rows glued
    (b"idx,mat\n0,a\n", "header"),
])
def test_csv_log_malformed_rows_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "log.csv"
    path.write_bytes(content)
    with pytest.raises(SpikeSearchError, match=message):
        CsvLog(path, HEADER)


def test_csv_log_failed_append_is_cut_back(tmp_path, monkeypatch):
    path = tmp_path / "log.csv"
    log = CsvLog(path, HEADER)
    log.append([0, "a", 1.0])
    real = os.pwrite

    def disk_full(fd, data, offset):  # half the row reaches the disk, then the disk is full
        real(fd, data[: len(data) // 2], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_module.os, "pwrite", disk_full)
    with pytest.raises(SpikeSearchError, match="No space left on device; the 1 rows before are kept"):
        log.append([1, "b", 2.0])
    monkeypatch.setattr(run_module.os, "pwrite", real)
    log.append([1, "c", 3.0])
    log.close()
    assert path.read_text().splitlines() == ["index,cnt_mat,score", "0,a,1.0", "1,c,3.0"]


def test_search_killed_by_a_full_disk_resumes_to_the_same_ranking(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    assert cli(capsys, *SEARCH, "--exp_name", "whole", "--runs_dir", runs)[0] == 0
    real, rows = os.pwrite, []

    def fills_up(fd, data, offset):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("search.csv"):
            rows.append(data)
            if len(rows) == 7:  # the header and 5 rows fit, the 6th row does not
                real(fd, data[:9], offset)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(run_module.os, "pwrite", fills_up)
    code, err = cli(capsys, *SEARCH, "--exp_name", "cut", "--runs_dir", runs)
    monkeypatch.setattr(run_module.os, "pwrite", real)
    assert code == 2 and len(err) == 1 and "No space left on device" in err[0] and "--resume" in err[0], err
    assert len(ranked(runs / "cut")) == 5 and (runs / "cut/search.csv").read_bytes().endswith(b"\n")
    assert cli(capsys, *SEARCH, "--exp_name", "cut", "--runs_dir", runs, "--resume")[0] == 0
    assert ranked(runs / "cut") == ranked(runs / "whole")
    best = [json.loads((runs / n / "results.json").read_text())["search"]["best"] for n in ("cut", "whole")]
    assert best[0] == best[1]


def test_search_resume_after_a_torn_row_reports_it_and_matches(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli(capsys, *SEARCH, "--exp_name", "a", "--runs_dir", runs)[0] == 0
    whole = ranked(runs / "a")
    csv = runs / "a/search.csv"
    csv.write_bytes(csv.read_bytes()[:-7])  # the last row cut mid-line, as a kill mid-write leaves it
    assert cli(capsys, *SEARCH, "--exp_name", "a", "--runs_dir", runs, "--resume")[0] == 0
    assert ranked(runs / "a") == whole
    assert "dropped a torn last row" in (runs / "a/log.txt").read_text()


# --- 2. dhs search resumes exactly --------------------------------------------------------------------

def _as_from_a_terminal() -> None:
    # a shell's background job (`make test &`, nohup) starts with SIGINT ignored, and Python then keeps ignoring
    # it: the CLI is run here as a user at a terminal runs it, where Ctrl-C interrupts
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spikesearch(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "spikesearch", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=_as_from_a_terminal, **kw)


def test_dhs_search_killed_mid_epoch_resumes_to_the_same_genotype(tmp_path):
    whole = spikesearch(*DHS, "--name", "whole", "--runs_dir", tmp_path)
    killed = spikesearch(*DHS, "--name", "killed", "--runs_dir", tmp_path)
    ckpt = tmp_path / "killed/checkpoints/last.pt"
    deadline = time.time() + 240
    while not ckpt.is_file():  # epoch 1 is done and checkpointed
        assert killed.poll() is None and time.time() < deadline, killed.stderr.read() if killed.poll() is not None else "slow"
        time.sleep(0.05)
    time.sleep(1.0)  # into epoch 2
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert torch.load(ckpt, weights_only=True)["epoch"] == 0, "the kill should land in epoch 2"
    resumed = spikesearch(*DHS, "--name", "killed", "--runs_dir", tmp_path, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert whole.wait(timeout=300) == 0, whole.stderr.read()
    assert "resumed the search" in (tmp_path / "killed/log.txt").read_text()
    genotype = [json.loads((tmp_path / n / "genotype.json").read_text()) for n in ("whole", "killed")]
    for g in genotype:
        g.pop("info")
    assert genotype[0] == genotype[1]
    history = [json.loads((tmp_path / n / "search_history.json").read_text()) for n in ("whole", "killed")]
    drop = ("seconds",)
    assert [{k: v for k, v in h.items() if k not in drop} for h in history[0]] == \
        [{k: v for k, v in h.items() if k not in drop} for h in history[1]]


# --- 3. --resume never mixes configurations; 12. nothing to resume ---------------------------------------

def test_resume_with_other_settings_is_refused_and_listed(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli(capsys, *TRAIN, "--name", "keep", "--runs_dir", runs)[0] == 0
    before = files(runs / "keep")
    code, err = cli(capsys, *TRAIN, "--name", "keep", "--runs_dir", runs, "--resume", "--timestep", "1", "--neuron", "if",
                    "--lr", "0.05")
    assert code == 2 and len(err) == 1, err
    for change in ("lr 0.001 -> 0.05", "neuron 'lif' -> 'if'", "timestep 4 -> 1", "--override lr neuron timestep"):
        assert change in err[0], err
    assert files(runs / "keep") == before  # not even config.json changed


def test_resume_with_override_changes_and_records_the_setting(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli(capsys, *TRAIN, "--name", "keep", "--runs_dir", runs)[0] == 0
    assert cli(capsys, *TRAIN, "--name", "keep", "--runs_dir", runs, "--resume", "--epochs", "2",
               "--override", "epochs")[0] == 0
    cfg = json.loads((runs / "keep/config.json").read_text())
    assert cfg["epochs"] == 2 and cfg["resumed"][0]["changed"] == {"epochs": {"from": 1, "to": 2}}
    assert len((runs / "keep/metrics.csv").read_text().splitlines()) == 3  # epoch 2 added, epoch 1 kept
    code, err = cli(capsys, *TRAIN, "--name", "keep", "--runs_dir", runs, "--resume", "--epochs", "2", "--override", "nope")
    assert code == 2 and "--override nope" in err[0]


@pytest.mark.parametrize("change", [["--cnt_mat", "0303", "0030", "2002", "0200"], ["--score_norm", "none"],
                                    ["--score_batch", "8"]])
def test_snasnet_resume_with_another_cell_or_score_is_refused(tmp_path, capsys, change):
    runs = tmp_path / "runs"
    first = ["--cnt_mat", "0302", "0030", "3003", "0000"] if change[0] == "--cnt_mat" else []
    base = [*SEARCH, "--exp_name", "s", "--runs_dir", runs]
    assert cli(capsys, *base, *first)[0] == 0
    before = files(runs / "s")
    code, err = cli(capsys, *base, "--resume", *change)
    assert code == 2 and "--resume would change" in err[0] and change[0].lstrip("-") in err[0], err
    assert files(runs / "s") == before


def test_resume_of_a_run_that_does_not_exist_is_refused(tmp_path, capsys):
    code, err = cli(capsys, *TRAIN, "--name", "typo", "--runs_dir", tmp_path, "--resume")
    assert code == 2 and "nothing to resume" in err[0] and not (tmp_path / "typo").exists()


# --- 4. reusing a name destroys nothing; two processes on one run --------------------------------------

def test_a_name_that_holds_a_run_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli(capsys, *SEARCH, "--exp_name", "s", "--runs_dir", runs)[0] == 0
    before = files(runs / "s")
    code, err = cli(capsys, *SEARCH, "--exp_name", "s", "--runs_dir", runs)
    assert code == 2 and "already holds a run" in err[0] and files(runs / "s") == before
    assert cli(capsys, *SEARCH, "--exp_name", "s", "--runs_dir", runs, "--num_search", "3", "--overwrite")[0] == 0
    assert len(ranked(runs / "s")) == 3  # replaced, because it was asked for


def test_convert_into_the_ann_folder_is_refused(tmp_path, capsys):
    ann = tmp_path / "ann"
    assert cli(capsys, "train-ann", "--job-dir", ann, "--epochs", "1", "--train_subset", "128", "--test_subset", "64",
               "--quiet")[0] == 0
    before = files(ann)
    convert = ["convert", "--job-dir", ann, "--model", ann / "model.pt", "--time", "2", "--eval_size", "16",
               "--norm", "32", "--quiet"]
    code, err = cli(capsys, *convert)
    assert code == 2 and "already holds a run" in err[0] and "--resume" not in err[0], err  # nothing to resume
    code, err = cli(capsys, *convert, "--overwrite")
    assert code == 2 and "would delete" in err[0] and "model.pt" in err[0]
    assert files(ann) == before


def test_dhs_derive_over_a_search_run_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli(capsys, "dhs", "derive", "--random", "--name", "g", "--runs_dir", runs)[0] == 0
    before = files(runs / "g")
    code, err = cli(capsys, "dhs", "derive", "--random", "--seed", "1", "--name", "g", "--runs_dir", runs)
    assert code == 2 and "already holds a run" in err[0] and files(runs / "g") == before


def test_a_second_process_on_the_same_run_is_refused_naming_the_holder(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli(capsys, *TRAIN, "--name", "busy", "--runs_dir", runs)[0] == 0
    holder = spikesearch("train", "--name", "busy", "--runs_dir", runs, "--resume", "--epochs", "40", "--override", "epochs",
                         "--train_subset", "128", "--test_subset", "64", "--widths", "8", "16", "--quiet")
    try:
        lock = runs / "busy/.lock"
        deadline = time.time() + 60
        while not lock.read_text():
            assert holder.poll() is None and time.time() < deadline, holder.stderr.read()
            time.sleep(0.05)
        code, err = cli(capsys, *TRAIN, "--name", "busy", "--runs_dir", runs, "--resume", "--epochs", "40",
                        "--override", "epochs")
        assert code == 2 and f"in use by process {holder.pid}" in err[0], err
    finally:
        holder.kill()
        holder.wait()


# --- 5. a failed best.pt write never blocks the run -------------------------------------------------------

def test_train_ann_finishes_after_a_failed_best_checkpoint_write(tmp_path, capsys, monkeypatch):
    real = run_module.atomic_write_bytes
    failed = []

    def best_fails_once(path, data):
        if Path(path).name == "best.pt" and not failed:
            failed.append(path)
            raise SpikeSearchError(f"cannot write {path}: No space left on device")
        return real(path, data)

    monkeypatch.setattr("spikesearch.train.trainer.atomic_write_bytes", best_fails_once)
    argv = ["train-ann", "--job-dir", tmp_path / "ann", "--epochs", "2", "--train_subset", "128", "--test_subset", "64",
            "--quiet"]
    code, err = cli(capsys, *argv)
    assert code == 2 and "No space left" in err[0]
    assert not (tmp_path / "ann/checkpoints/last.pt").exists()  # last.pt never claims a best.pt that is missing
    monkeypatch.setattr("spikesearch.train.trainer.atomic_write_bytes", real)
    assert cli(capsys, *argv, "--resume")[0] == 0
    assert (tmp_path / "ann/model.pt").is_file()


# --- 7. failed commands leave config.json as it was ---------------------------------------------------------

def test_a_failed_resume_leaves_config_json_alone(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli(capsys, *TRAIN, "--name", "r", "--runs_dir", runs)[0] == 0
    before = files(runs / "r")
    torch.save({"model": {"x": torch.zeros(1)}}, runs / "r/checkpoints/last.pt")  # a checkpoint of something else
    before["checkpoints/last.pt"] = (runs / "r/checkpoints/last.pt").read_bytes()
    code, err = cli(capsys, *TRAIN, "--name", "r", "--runs_dir", runs, "--resume")
    assert code == 2 and "does not match this architecture" in err[0]
    after = files(runs / "r")
    assert after.pop("log.txt").startswith(before.pop("log.txt"))  # the log says what happened; nothing else moves
    assert after == before


# --- 9. workers die with their parent ---------------------------------------------------------------------------

def _session_members(sid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(d.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_search_workers_die_with_their_parent(tmp_path, sig):
    # rows arrive one shard (an eighth of the candidates) at a time: enough candidates that the signal comes
    # long before the search would finish on an idle machine, few enough that the first shard comes soon
    proc = spikesearch("snasnet", "--num_search", "1200", "--search_only", "--score_batch", "16", "--train_subset", "64",
                       "--workers", "2", "--parallel", "processes", "--exp_name", "w", "--runs_dir", tmp_path, "--quiet",
                       start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "w/search.csv").is_file() or len((tmp_path / "w/search.csv").read_text().splitlines()) < 3:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
            time.sleep(0.1)
        assert len(_session_members(proc.pid)) >= 3  # the parent and its workers
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == (143 if sig == signal.SIGTERM else 130)
        assert "--resume" in proc.stderr.read()
        deadline = time.time() + 20
        while _session_members(proc.pid):
            assert time.time() < deadline, f"left running: {_session_members(proc.pid)}"
            time.sleep(0.2)
    finally:  # a failed assertion must not leave the search and its workers running
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# --- 13. messages --------------------------------------------------------------------------------------------------

def test_convert_interrupted_suggests_resume_only_for_a_finetuning(tmp_path, capsys, monkeypatch):
    ann = tmp_path / "ann"
    assert cli(capsys, "train-ann", "--job-dir", ann, "--epochs", "1", "--train_subset", "128", "--test_subset", "64",
               "--quiet")[0] == 0

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("spikesearch.cli.convert.evaluate_snn", interrupted)
    code, err = cli(capsys, "convert", "--job-dir", tmp_path / "snn", "--model", ann / "model.pt", "--time", "2",
                    "--norm", "32", "--quiet")
    assert code == 130 and "--resume" not in err[0] and "--overwrite" in err[0], err
    code, err = cli(capsys, "convert", "--job-dir", tmp_path / "ft", "--model", ann / "model.pt", "--time", "2",
                    "--norm", "32", "--finetune_epochs", "1", "--one-step", "--quiet")
    assert code == 130 and "--resume" in err[0], err  # a fine-tuning continues


def test_unwritable_home_prints_only_the_error(tmp_path):
    env = {**os.environ, "HOME": "/dev/null"}
    env.pop("MPLCONFIGDIR", None)
    env.pop("XDG_CONFIG_HOME", None)
    out = subprocess.run([sys.executable, "-m", "spikesearch", "train", "--dataset", "svhn"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [out.stderr.strip()], out.stderr


# --- 14. containment ------------------------------------------------------------------------------------------------

def test_files_follow_the_umask_and_stale_temps_are_removed(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli(capsys, *TRAIN, "--name", "u", "--runs_dir", runs)[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE((runs / "u/checkpoints/last.pt").stat().st_mode)
    assert mode == 0o666 & ~umask
    stale = runs / "u/checkpoints/.last.pt.ab12cd34.tmp"  # what a SIGKILL during a checkpoint write leaves
    stale.write_bytes(b"half")
    assert cli(capsys, *TRAIN, "--name", "u", "--runs_dir", runs, "--resume", "--epochs", "2", "--override", "epochs")[0] == 0
    assert not stale.exists()


def test_a_symlinked_log_is_not_followed(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli(capsys, *TRAIN, "--name", "s", "--runs_dir", runs)[0] == 0
    target = tmp_path / "precious.txt"
    target.write_text("mine")
    (runs / "s/log.txt").unlink()
    (runs / "s/log.txt").symlink_to(target)
    code, err = cli(capsys, *TRAIN, "--name", "s", "--runs_dir", runs, "--resume")
    assert code == 2 and "symbolic link" in err[0] and target.read_text() == "mine"


def test_run_python_api_refuses_reuse_and_releases_its_lock(tmp_path):
    with Run("a", tmp_path, quiet=True, config={"x": 1}) as run:
        run.log("hello")
        with pytest.raises(SpikeSearchError, match="in use by process"):
            Run("a", tmp_path, quiet=True, config={"x": 1}, resume=True)
    with pytest.raises(SpikeSearchError, match="already holds a run"):
        Run("a", tmp_path, config={"x": 1})
    Run("a", tmp_path, quiet=True, config={"x": 1}, resume=True).close()
    assert (tmp_path / "a/.lock").read_text() == ""  # the holder line is gone with the holder


# --- 10. file-system failures at save time: one line, the previous good files kept --------------------------

def test_a_file_size_limit_at_checkpoint_time_keeps_the_last_checkpoint(tmp_path, capsys):
    import resource

    runs = tmp_path / "runs"
    assert cli(capsys, *TRAIN, "--name", "full", "--runs_dir", runs)[0] == 0
    last = runs / "full/checkpoints/last.pt"
    before = last.read_bytes()
    limit = len(before) // 2  # config, log and metrics fit; a checkpoint does not (the disk is "full")

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    resume = [*TRAIN, "--name", "full", "--runs_dir", runs, "--resume", "--epochs", "2", "--override", "epochs"]
    out = subprocess.run([sys.executable, "-m", "spikesearch", *map(str, resume)], capture_output=True, text=True,
                         preexec_fn=small_files, env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and "File too large" in err[0] and "is kept" in err[0], out.stderr
    assert last.read_bytes() == before and not [p for p in last.parent.iterdir() if p.name.startswith(".")]
    assert cli(capsys, *resume)[0] == 0  # space again: the run goes on from the kept checkpoint
    assert len((runs / "full/metrics.csv").read_text().splitlines()) == 3


def test_a_read_only_checkpoint_folder_is_one_line(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    assert cli(capsys, *TRAIN, "--name", "ro", "--runs_dir", runs)[0] == 0
    before = (runs / "ro/checkpoints/last.pt").read_bytes()
    real = run_module.tempfile.mkstemp

    def read_only(dir=None, **kw):  # what a read-only folder answers (root ignores chmod, so say it here)
        if Path(dir).name == "checkpoints":
            raise PermissionError(errno.EROFS, "Read-only file system")
        return real(dir=dir, **kw)

    monkeypatch.setattr(run_module.tempfile, "mkstemp", read_only)
    code, err = cli(capsys, *TRAIN, "--name", "ro", "--runs_dir", runs, "--resume", "--epochs", "2", "--override", "epochs")
    assert code == 2 and len(err) == 1 and "Read-only file system; the previous last.pt is kept" in err[0], err
    assert (runs / "ro/checkpoints/last.pt").read_bytes() == before


@pytest.mark.parametrize("target,message", [("checkpoints/last.pt", "is not a file"), ("log.txt", "Is a directory"),
                                            ("config.json", "Is a directory"), ("checkpoints", "File exists")])
def test_a_directory_or_file_in_the_way_is_one_line(tmp_path, capsys, target, message):
    runs = tmp_path / "runs"
    assert cli(capsys, *TRAIN, "--name", "d", "--runs_dir", runs)[0] == 0
    path = runs / "d" / target
    if path.is_dir():
        import shutil

        shutil.rmtree(path)
        path.write_text("in the way")
    else:
        path.unlink()
        path.mkdir()
    code, err = cli(capsys, *TRAIN, "--name", "d", "--runs_dir", runs, "--resume")
    assert code == 2 and len(err) == 1 and message in err[0], err


# --- 15. issue 27: --overwrite replaces one run of this command, nothing else ----------------------------

SMALL = ["--train_subset", "128", "--test_subset", "32", "--widths", "4", "8", "--timestep", "2", "--quiet",
         "--threads", "1"]


def test_overwrite_never_deletes_a_folder_of_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli(capsys, "train", *SMALL, "--epochs", "1", "--name", "a", "--runs_dir", runs)[0] == 0
    before = files(runs)
    code, err = cli(capsys, "train-ann", "--job-dir", runs, "--epochs", "1", "--overwrite", *SMALL[:4], "--quiet")
    assert code == 2 and len(err) == 1 and "runs" in err[0] and "/a" in err[0], err
    assert files(runs) == before


def test_overwrite_never_deletes_a_folder_that_is_not_a_run(tmp_path, capsys):
    mine = tmp_path / "runs/notes"
    mine.mkdir(parents=True)
    (mine / "thesis.tex").write_text("years of work")
    code, err = cli(capsys, "train", *SMALL, "--name", "notes", "--runs_dir", tmp_path / "runs", "--overwrite")
    assert code == 2 and "not one" in err[0], err
    assert (mine / "thesis.tex").read_text() == "years of work" and sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_overwrite_and_resume_refuse_another_commands_run_naming_it(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli(capsys, "train", *SMALL, "--epochs", "1", "--name", "a", "--runs_dir", runs)[0] == 0
    before = files(runs / "a")
    for flag in ("--overwrite", "--resume"):
        code, err = cli(capsys, "train-ann", "--job-dir", runs / "a", "--epochs", "1", flag, *SMALL[:4], "--quiet")
        assert code == 2 and len(err) == 1 and "a run of 'train'" in err[0] and "not recorded" not in err[0], err
    assert files(runs / "a") == before


def test_overwrite_refuses_a_run_held_by_a_live_process_before_any_work(tmp_path, capsys, monkeypatch):
    import fcntl

    runs = tmp_path / "runs"
    assert cli(capsys, "train", *SMALL, "--epochs", "1", "--name", "a", "--runs_dir", runs)[0] == 0
    before = files(runs / "a")
    loaded = []
    monkeypatch.setattr("spikesearch.cli.main.make_loaders", lambda *a, **k: loaded.append(1))
    with open(runs / "a/.lock", "r+") as held:  # as a live `spikesearch train --name a` holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("process 4242 (spikesearch train --name a)")
        held.flush()
        code, err = cli(capsys, "train", *SMALL, "--name", "a", "--runs_dir", runs, "--overwrite")
    assert code == 2 and "in use by process 4242" in err[0] and not loaded, err  # refused before the data are read
    after = files(runs / "a")
    assert after.pop(".lock") != before.pop(".lock")  # the holder line is the test's own
    assert after == before


# --- 16. issue 27: a failed resume leaves the folder byte-identical; config.json only after it started ----

def _interrupt_after(monkeypatch, epochs: int) -> None:
    """The next training stops (as Ctrl-C) once ``epochs`` epochs have been checkpointed."""
    from spikesearch.train.trainer import Trainer

    real, seen = Trainer.train_epoch, []

    def train_epoch(self, epoch):
        if len(seen) == epochs:
            raise KeyboardInterrupt
        seen.append(epoch)
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)


def test_a_failed_resume_leaves_the_folder_byte_identical(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert cli(capsys, "train", *SMALL, "--epochs", "1", "--name", "r", "--runs_dir", runs)[0] == 0
    torch.save({**torch.load(runs / "r/checkpoints/last.pt", weights_only=True), "model": {"x": torch.zeros(1)}},
               runs / "r/checkpoints/last.pt")  # a checkpoint of another network
    before = files(runs / "r")
    code, err = cli(capsys, "train", *SMALL, "--name", "r", "--runs_dir", runs, "--resume", "--epochs", "3", "--lr", "0.01",
                    "--override", "epochs", "lr")
    assert code == 2 and "does not match this architecture" in err[0], err
    assert files(runs / "r") == before  # config.json and log.txt included


@pytest.mark.parametrize("edit,listed", [({"lr": 0.5}, "lr 0.001 -> 0.5"),
                                         ({"resumed": [{"changed": {"lr": {"from": 0.5, "to": 0.001}}}]}, "resumed")])
def test_an_edited_config_json_is_refused(tmp_path, capsys, edit, listed):
    runs = tmp_path / "runs"
    assert cli(capsys, "train", *SMALL, "--epochs", "1", "--name", "r", "--runs_dir", runs)[0] == 0
    cfg = json.loads((runs / "r/config.json").read_text())
    (runs / "r/config.json").write_text(json.dumps({**cfg, **edit}))
    before = files(runs / "r")
    code, err = cli(capsys, "train", *SMALL, "--name", "r", "--runs_dir", runs, "--resume", "--lr", str(edit.get("lr", 0.001)),
                    "--epochs", "2", "--override", "epochs")
    assert code == 2 and len(err) == 1 and "edited" in err[0] and listed in err[0], err
    assert files(runs / "r") == before


def test_dhs_train_resume_with_another_genotype_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed in ("0", "1"):
        assert cli(capsys, "dhs", "derive", "--random", "--seed", seed, "--layers", "2", "--levels", "2", "--name",
                   f"g{seed}", "--runs_dir", runs, "--quiet")[0] == 0
    genotype = tmp_path / "g.json"
    genotype.write_bytes((runs / "g0/genotype.json").read_bytes())
    train = ["dhs", "train", "--genotype", genotype, "--epochs", "1", "--channels", "4", "--timestep", "2", "--train_subset",
             "64", "--test_subset", "32", "--name", "t", "--runs_dir", runs, "--quiet", "--threads", "1"]
    assert cli(capsys, *train)[0] == 0
    before = files(runs / "t")
    genotype.write_bytes((runs / "g1/genotype.json").read_bytes())  # the file the run was started from, edited
    code, err = cli(capsys, *train, "--resume")
    assert code == 2 and len(err) == 1 and "no longer the genotype" in err[0], err
    assert files(runs / "t") == before


def test_a_resume_killed_before_its_first_checkpoint_resumes_again(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    argv = ["train", *SMALL, "--epochs", "3", "--name", "r", "--runs_dir", runs]
    _interrupt_after(monkeypatch, 1)
    assert cli(capsys, *argv)[0] == 130
    _interrupt_after(monkeypatch, 0)  # config.json now says lr 0.01; the checkpoint still ran 0.001
    assert cli(capsys, *argv, "--resume", "--lr", "0.01", "--override", "lr")[0] == 130
    assert json.loads((runs / "r/config.json").read_text())["lr"] == 0.01
    monkeypatch.undo()
    assert cli(capsys, *argv, "--resume", "--lr", "0.01", "--override", "lr")[0] == 0
    cfg = json.loads((runs / "r/config.json").read_text())
    assert cfg["lr"] == 0.01 and len(cfg["resumed"]) == 1


# --- 17. issue 27: --override re-plans; what config.json records is what the resumed run did ---------------

def _lrs(folder: Path) -> list[float]:
    return [float(line.split(",")[1]) for line in (folder / "metrics.csv").read_text().splitlines()[1:]]


@pytest.mark.parametrize("key,value", [("epochs", "4"), ("lr", "0.01"), ("scheduler", "multistep"), ("optimizer", "sgd"),
                                       ("weight_decay", "0.01"), ("batch_size", "32")])
def test_override_replans_as_an_uninterrupted_run_with_the_new_setting(tmp_path, capsys, monkeypatch, key, value):
    runs = tmp_path / "runs"
    base = ["train", *SMALL, "--epochs", "3", "--runs_dir", runs]
    _interrupt_after(monkeypatch, 1)
    assert cli(capsys, *base, "--name", "r")[0] == 130
    monkeypatch.undo()
    code, err = cli(capsys, *base, "--name", "r", "--resume", f"--{key}", value, "--override", key)
    assert code == 0, err
    assert cli(capsys, *base, "--name", "whole", f"--{key}", value)[0] == 0
    cfg = json.loads((runs / "r/config.json").read_text())
    assert str(cfg[key]) == value and list(cfg["resumed"][0]["changed"]) == [key]
    # epoch 1 ran under the old settings; from epoch 2 on the schedule is the new settings' own
    assert _lrs(runs / "r")[1:] == _lrs(runs / "whole")[1:] and len(_lrs(runs / "r")) == len(_lrs(runs / "whole"))
    ck = torch.load(runs / "r/checkpoints/last.pt", weights_only=True)
    group = ck["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == cfg["weight_decay"] and ck["run"] == cfg
    state = next(iter(ck["optimizer"]["state"].values()))
    assert ("momentum_buffer" in state) == (cfg["optimizer"] == "sgd")
    if cfg["optimizer"] == "adam":  # Adam counts its steps: 2 batches of 64 in epoch 1, then at the new batch size
        assert float(state["step"]) == 2 + (cfg["epochs"] - 1) * 128 // cfg["batch_size"]
    if key == "optimizer":
        assert "optimizer 'adam' -> 'sgd' (its state starts fresh)" in (runs / "r/log.txt").read_text()


def test_override_of_epochs_on_a_finished_run_continues_the_new_plan(tmp_path, capsys):
    runs = tmp_path / "runs"
    base = ["train", *SMALL, "--runs_dir", runs]
    assert cli(capsys, *base, "--epochs", "1", "--name", "r")[0] == 0
    assert cli(capsys, *base, "--epochs", "3", "--name", "r", "--resume", "--override", "epochs")[0] == 0
    assert cli(capsys, *base, "--epochs", "3", "--name", "whole")[0] == 0
    lrs, whole = _lrs(runs / "r"), _lrs(runs / "whole")
    assert lrs[1:] == whole[1:] and lrs[1] > lrs[2]  # no wrap-around of the old one-epoch cosine
    code, err = cli(capsys, *base, "--epochs", "2", "--name", "r", "--resume", "--override", "epochs")
    assert code == 2 and "already trained 3 epochs" in err[0], err


@pytest.mark.parametrize("command,change,key", [
    (["train", *SMALL, "--epochs", "1"], ["--neuron", "if"], "neuron"),
    (SEARCH, ["--num_search", "20"], "num_search"),
    (SEARCH, ["--score_norm", "none"], "score_norm"),
    (["snasnet", "--cnt_mat", "0302", "0030", "3003", "0000", "--epochs", "1", "--train_subset", "64", "--test_subset",
      "32", "--timestep", "2", "--quiet", "--threads", "1"], ["--cnt_mat", "0303", "0030", "2002", "0200"], "cnt_mat"),
])
def test_override_of_a_setting_the_work_depends_on_is_refused(tmp_path, capsys, command, change, key):
    runs = tmp_path / "runs"
    flags = ["--runs_dir", runs, "--exp_name" if command[0] == "snasnet" else "--name", "r"]
    assert cli(capsys, *command, *flags)[0] == 0
    before = files(runs / "r")
    code, err = cli(capsys, *command, *flags, "--resume", *change, "--override", key)
    assert code == 2 and len(err) == 1 and f"a resume cannot change {key}" in err[0], err
    assert files(runs / "r") == before


def test_snasnet_override_of_its_learning_rate_is_applied(tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    base = ["snasnet", "--cnt_mat", "0302", "0030", "3003", "0000", "--epochs", "2", "--train_subset", "64",
            "--test_subset", "32", "--timestep", "2", "--quiet", "--threads", "1", "--runs_dir", runs]
    _interrupt_after(monkeypatch, 1)
    assert cli(capsys, *base, "--exp_name", "r")[0] == 130
    monkeypatch.undo()
    assert cli(capsys, *base, "--exp_name", "r", "--resume", "--learning_rate", "0.01", "--override", "learning_rate")[0] == 0
    assert cli(capsys, *base, "--exp_name", "whole", "--learning_rate", "0.01")[0] == 0
    assert _lrs(runs / "r")[1:] == _lrs(runs / "whole")[1:]
    assert json.loads((runs / "r/config.json").read_text())["learning_rate"] == 0.01


# --- 18. issue 27: output files are checked before work and written atomically ------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs = tmp_path_factory.mktemp("trained") / "runs"
    assert main(["train", *SMALL, "--epochs", "1", "--name", "t", "--runs_dir", str(runs)]) == 0
    return runs / "t"


@pytest.mark.parametrize("target", ["checkpoints/best.pt", "config.json", "new.nir"])
def test_export_never_writes_into_a_run_folder(trained, capsys, target):
    before = files(trained)
    code, err = cli(capsys, "export", trained, "-o", trained / target, "--overwrite")
    assert code == 2 and len(err) == 1 and "inside the run folder" in err[0], err
    assert files(trained) == before


def test_export_never_writes_through_a_symlink_or_over_a_file_it_reads(trained, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    (tmp_path / "net.nir").symlink_to(precious)
    code, err = cli(capsys, "export", trained, "-o", tmp_path / "net.nir", "--overwrite")
    assert code == 2 and "symbolic link" in err[0] and precious.read_text() == "mine", err
    ann = tmp_path / "ann.pt"
    torch.save({"model": {}}, ann)
    code, err = cli(capsys, "convert", "--job-dir", tmp_path / "snn", "--model", ann, "--results-file", ann, "--overwrite",
                    "--quiet")
    assert code == 2 and "which this command reads" in err[0] and not (tmp_path / "snn").exists(), err


def test_export_onto_a_full_disk_is_one_line_and_leaves_no_file(trained, tmp_path):
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the NIR file (tens of kB) does not fit

    out = subprocess.run([sys.executable, "-m", "spikesearch", "export", str(trained), "-o", str(tmp_path / "net.nir")],
                         capture_output=True, text=True, preexec_fn=small_files, env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and "File too large" in err[0], out.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no partial .nir, no temp file


def test_export_of_nan_weights_or_an_edited_config_is_one_line(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "t"
    shutil.copytree(trained, run)
    ck = torch.load(run / "checkpoints/best.pt", weights_only=True)
    ck["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in ck["model"].items()}
    torch.save(ck, run / "checkpoints/best.pt")
    code, err = cli(capsys, "export", run, "-o", tmp_path / "nan.nir")
    assert code == 2 and len(err) == 1 and "NaN or infinite" in err[0] and not (tmp_path / "nan.nir").exists(), err
    cfg = json.loads((trained / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "command": "snasnet"}))
    code, err = cli(capsys, "export", run, "-o", tmp_path / "edited.nir")
    assert code == 2 and len(err) == 1 and "config.json" in err[0], err


def test_nasbench_search_overwrite_never_deletes_the_scores_it_reads(tmp_path, capsys):
    from test_nasbench import cell_of, params_of, reaches_output, write_log

    bench = tmp_path / "SpikeNAS-Bench"
    for k, arch_id in enumerate([0, 7, 12617, 3906, 5000, 777]):
        write_log(bench, arch_id, params_of(arch_id), 10.0 if not reaches_output(cell_of(arch_id)) else 80.0 + k)
    runs = tmp_path / "runs"
    proxies = ["nasbench", "proxies", "--bench_dir", bench, "--sample", "4", "--width", "0.0625", "--batch", "8",
               "--repeats", "1", "--timestep", "2", "--inputs", "noise", "--proxies", "params", "--runs_dir", runs,
               "--name", "p", "--quiet"]
    assert cli(capsys, *proxies)[0] == 0
    before = files(runs / "p")
    code, err = cli(capsys, "nasbench", "search", "--bench_dir", bench, "--runs_dir", runs, "--budget", "3", "--repeats", "2",
                    "--proxy", "params", "--scores", runs / "p", "--name", "p", "--overwrite", "--quiet")
    assert code == 2 and "a run of 'nasbench proxies'" in err[0], err
    code, err = cli(capsys, *proxies, "--resume", "--sample", "5", "--override", "sample")
    assert code == 2 and "a resume cannot change sample" in err[0], err
    assert files(runs / "p") == before
