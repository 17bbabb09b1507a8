"""The run folder contract: every command writes ``RUNS_DIR/NAME/`` (config, log, metrics, checkpoints,
plots) and treats it like a database table.

- **Names stay inside the runs folder.** A run name is a plain folder name: not empty, no path separator,
  not ``.``/``..``, not hidden (temp files start with a dot).
- **One writer.** A run folder is locked (``flock`` on ``.lock``, released by the kernel when the process
  dies, so a crash leaves no stale lock); a second process on the same run fails with one line naming the
  holder.
- **Nothing destroyed without being asked.** A name that holds a run is refused unless ``--resume``
  continues it or ``--overwrite`` replaces it; ``--overwrite`` replaces only one run folder of the same
  command that no live process holds: never a folder of runs, another command's run, a folder that is not
  a run, or one holding an input of the command. Output files outside the run folder go through
  ``check_output`` (never an input, never a file of a run folder, never through a symlink) and are
  written atomically.
- **Resume never mixes configurations.** ``--resume`` continues only a run of the same command; it
  compares the stored resolved ``config.json`` with the new one and refuses every difference that changes
  results (listed), unless ``--override KEY ...`` names it and the command can re-plan it (its
  ``overridable`` settings; the others are refused with the reason); overrides are recorded in
  ``config.json``. Checkpoints keep the config they ran under: a config.json edited by hand is refused
  (``Run.check_record``). A resumed run writes nothing until its state is restored (``Run.started``), so
  a failed resume leaves the folder byte-identical. ``--resume`` of a run that does not exist is refused.
- **No torn files.** JSON, CSV and checkpoints are written to a temp file, fsynced and renamed; a save that
  fails (disk full, read-only, a directory in the way) is one line and the previous file stays. Append-only
  logs (``CsvLog``) write each row whole; a torn last row (a crash mid-append) is dropped and reported on
  the next open, never glued to the next row. Temp files a kill left behind are removed on open.
- ``config.json`` is written only once the command's inputs have been validated.
"""
from __future__ import annotations

import atexit
import csv
import dataclasses
import errno
import fcntl
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .core import distributed
from .core.errors import SpikeSearchError

# settings that do not change a run's results: free to differ on --resume
RUN_ONLY_KEYS = frozenset({
    "resume", "overwrite", "override", "quiet", "threads", "device", "gpu", "runs_dir", "name", "exp_name",
    "job_dir", "workers", "parallel", "ray_address", "top_k", "results_file", "n_workers", "search_only",
    "command", "dhs_command", "nasbench_command", "resumed",
})
LOCK = ".lock"
NAME_MAX = 255  # bytes in one path component on ext4, xfs, btrfs, tmpfs
_TEMP = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")  # atomic_write_bytes' temp names (mkstemp's 8 characters)
_UMASK = os.umask(0)
os.umask(_UMASK)


def jsonable(obj: Any) -> Any:
    """Plain JSON values; non-finite floats become null (JSON has no NaN or Infinity)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dump_json(obj: Any) -> bytes:
    return (json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n").encode()


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves a half-written file,
    and a failed write (disk full, read-only folder, a directory in the way) keeps the previous file."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; a run folder's files follow the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        kept = f"; the previous {path.name} is kept" if path.is_file() else ""
        raise SpikeSearchError(f"cannot write {path}: {_why(e)}{kept}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def run_path(name: str, root: str | Path) -> Path:
    """``root/name`` for a plain run name; anything that could leave ``root``, hide, or that the file system
    cannot hold (not UTF-8: config.json and the lock record the name as text; longer than a folder name may
    be) is refused."""
    if not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") \
            or any(c in name for c in "/\\\0"):
        raise SpikeSearchError(f"run name {name!r} is not a plain folder name (not empty, no '/', not starting "
                               "with '.'): the run folder is RUNS_DIR/NAME")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise SpikeSearchError(f"run name {ascii(name)} is not valid UTF-8: name the run in UTF-8 text") from None
    if size > NAME_MAX:
        raise SpikeSearchError(f"run name of {size} bytes is longer than a folder name may be ({NAME_MAX} bytes): "
                               f"{name[:40]}...")
    if not str(root):
        raise SpikeSearchError("the runs folder is empty ('')")
    return Path(root) / name


def split_job_dir(job_dir: str) -> tuple[str, Path]:
    """``--job-dir PATH`` (the conversion repository's flag) as a (name, root) pair under the same rules."""
    if not job_dir:
        raise SpikeSearchError("--job-dir is empty: give the run folder's path")
    p = Path(job_dir)
    return p.name or job_dir, p.parent


def config_of(args, **extra: Any) -> dict:
    """The resolved configuration of a command: its parsed arguments (the handler left out) plus ``extra``."""
    return jsonable({**extra, **{k: v for k, v in vars(args).items() if k != "func"}})


def holds_run(path: Path) -> bool:
    """A folder holds a run once anything but the lock and temp files is in it."""
    return path.is_dir() and any(p.name != LOCK and not _TEMP.match(p.name) for p in path.iterdir())


def is_run_folder(path: Path) -> bool:
    """A folder a ``Run`` opened: it keeps its lock file and its log for good (a lock alone is not enough:
    other tools, pytest among them, leave a ``.lock`` in their folders)."""
    return path.is_dir() and not path.is_symlink() and (path / LOCK).is_file() and \
        ((path / "log.txt").is_file() or (path / "config.json").is_file())


def command_of(config: dict) -> str:
    """The command a config records: ``train``, ``dhs train``, ``nasbench proxies`` ('' from the Python API)."""
    command = config.get("command")
    if not isinstance(command, str):
        return ""
    sub = config.get(f"{command.replace('-', '_')}_command")
    return f"{command} {sub}" if isinstance(sub, str) else command


def _read_config(path: Path) -> dict:
    cfg = path / "config.json"
    if not cfg.exists():
        raise SpikeSearchError(f"{path} holds no config.json, so --resume cannot check that it continues the same "
                               "run; use --overwrite to start it again")
    return read_json_object(cfg)


def read_json_object(path: Path) -> dict:
    """A JSON file the program wrote (config.json, results.json) read back: unreadable, malformed or not an object
    is one line."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise SpikeSearchError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(data, dict):
        raise SpikeSearchError(f"{path} is not a JSON object")
    return data


def _differing(old: dict, new: dict, ignore: frozenset | set = frozenset()) -> dict[str, tuple[Any, Any]]:
    missing = "<not recorded>"
    return {k: (old.get(k, missing), new.get(k, missing)) for k in sorted((old.keys() | new.keys()) - ignore)
            if k not in old or k not in new or old[k] != new[k]}


def config_diff(stored: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Settings that differ between two resolved configs, ignoring those that do not change results."""
    return _differing(stored, new, RUN_ONLY_KEYS)


def _changes(ran: dict, now: dict) -> str:
    """Every setting that differs between what a checkpoint records as run and what is asked now, for one line."""
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in _differing(ran, now).items())[:300]


def _holder(path: Path) -> str | None:
    """Who holds a run folder's lock now (None: nobody), asked of the kernel, not read from the file."""
    try:
        fd = os.open(path / LOCK, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except OSError:
        return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)  # releases the shared lock taken to ask


def _nested_run(path: Path) -> Path | None:
    return next((p for p in path.rglob(LOCK) if p.parent != path and is_run_folder(p.parent)), None)


def _check_replaceable(path: Path, config: dict | None, inputs: Iterable[str | Path], locked: bool) -> None:
    """``--overwrite`` replaces one run of this command that nobody holds, and nothing else: not a folder the
    user keeps other things in, not a folder of runs, not a run of another command, not an input."""
    nested = _nested_run(path)
    if nested is not None:
        raise SpikeSearchError(f"--overwrite would delete the run {nested.parent} inside {path}: a folder of runs is "
                               "never replaced; choose another name")
    if not is_run_folder(path):
        raise SpikeSearchError(f"--overwrite replaces only a run folder, and {path} is not one (no {LOCK} and log): "
                               "remove it yourself or choose another name")
    root = path.resolve()
    for item in inputs:
        p = Path(item).resolve()
        if p == root or root in p.parents:
            raise SpikeSearchError(f"--overwrite would delete {item}, an input of this command, inside {path}")
    if config is not None:
        stored = _read_config(path)
        if command_of(stored) != command_of(config):
            raise SpikeSearchError(f"{path} holds a run of '{command_of(stored) or 'another program'}': --overwrite "
                                   f"replaces only a run of '{command_of(config)}'; choose another name")
    holder = None if locked else _holder(path)
    if holder is not None:
        raise SpikeSearchError(f"run folder {path} is in use by {holder}; --overwrite never replaces a live run")


def _check_overrides(overrides: Sequence[str], config: dict, overridable: Sequence[str] | None) -> None:
    """Each ``--override`` names a setting a resume knows how to re-plan (``overridable``; None: any setting,
    for the Python API, whose caller re-plans); the others are refused with the reason."""
    unknown = [k for k in overrides if k not in config or k in RUN_ONLY_KEYS]
    if unknown:
        raise SpikeSearchError(f"--override {' '.join(unknown)}: not a setting of this command that changes results")
    fixed = [k for k in overrides if overridable is not None and k not in overridable]
    if fixed:
        can = ", ".join(overridable) if overridable else "none of its settings"
        raise SpikeSearchError(f"--override {' '.join(fixed)}: a resume cannot change {', '.join(fixed)} (the weights, "
                               f"data, cell or scores it has already produced depend on it; start a new run); it can "
                               f"change {can}")


def check_run(path: Path, config: dict | None, resume: bool = False, overwrite: bool = False,
              overrides: Sequence[str] = (), inputs: Iterable[str | Path] = (), *, resumable: bool = True,
              overridable: Sequence[str] | None = None, locked: bool = False) -> dict[str, tuple[Any, Any]]:
    """Refuse what would lose, mix or overwrite work; returns the overridden differences of a resume.
    Reads only: commands call it before their slow work, and ``Run`` again under the lock (``locked``)."""
    if resume and overwrite:
        raise SpikeSearchError("--resume continues a run and --overwrite replaces it: give one of them")
    if overrides and not resume:
        raise SpikeSearchError("--override only applies with --resume")
    if path.exists() and not path.is_dir():
        raise SpikeSearchError(f"cannot write the run folder {path}: it is a file")
    exists = holds_run(path)
    if resume:
        if not exists:
            raise SpikeSearchError(f"nothing to resume: {path} holds no run (check the name and the runs folder)")
        if config is None:
            return {}
        stored = _read_config(path)
        if command_of(stored) != command_of(config):
            raise SpikeSearchError(f"{path} holds a run of '{command_of(stored) or 'another program'}': "
                                   f"'{command_of(config)} --resume' continues only its own runs; choose another name")
        _check_overrides(overrides, config, overridable)
        diff = config_diff(stored, config)
        refused = {k: v for k, v in diff.items() if k not in overrides}
        if refused:
            listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
            raise SpikeSearchError(f"--resume would change the settings of {path}: {listed}; drop those flags, or "
                                   f"name them in --override {' '.join(refused)} to change them deliberately")
        return diff
    if exists:
        if not overwrite:
            how = "--resume continues it, --overwrite replaces it" if resumable else "--overwrite replaces it"
            raise SpikeSearchError(f"{path} already holds a run: {how}, or choose another name")
        _check_replaceable(path, config, inputs, locked)
    return {}


def _without_last_change(config: dict) -> dict | None:
    """``config`` before its last recorded override, or None if it records none (or a malformed one)."""
    try:
        *earlier, last = config["resumed"]
        undone = {**config, **{k: c["from"] for k, c in last["changed"].items()}}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if earlier:
        undone["resumed"] = earlier
    else:
        undone.pop("resumed")
    return undone


def _clear(path: Path) -> None:
    for p in path.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _remove_stale_temps(path: Path) -> None:
    for p in path.rglob(".*.tmp"):
        if _TEMP.match(p.name) and p.is_file():
            p.unlink(missing_ok=True)


def _open_no_follow(path: Path, flags: int) -> int:
    """Open a run-folder file without following a symlink planted in its place."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        why = "it is a symbolic link (refused)" if e.errno == errno.ELOOP else _why(e)
        raise SpikeSearchError(f"cannot open {path}: {why}") from None


_OPEN: list[weakref.ref] = []  # weak: a Run the caller dropped is closed by its __del__
_OPENED: list[Path] = []  # every run folder this process opened, in order
_RESUMABLE: dict[Path, bool] = {}  # whether the command that opened it last can continue it (--resume)


class Run:
    """A locked run folder (see the module doc). ``path`` is the folder every process reads from
    (checkpoints to resume); under torchrun only rank 0 locks and writes it: the other ranks' ``file()``
    points into a private temporary folder, deleted at exit, so the commands need no rank checks.

    ``config`` (the resolved settings) is checked against the folder's ``config.json`` and written there;
    ``resumed`` is True when the folder held a run that this one continues. A resumed run changes nothing in
    its folder (not config.json, not log.txt) until the work calls ``started()`` once its state is restored:
    a resume that fails leaves the folder byte for byte as it was. ``stored`` is the config.json the resume
    found; ``config`` what this run records (checkpoints keep it, ``check_record`` compares)."""

    def __init__(self, name: str, root: str | Path = "runs", quiet: bool = False, *, config: dict | None = None,
                 resume: bool = False, overwrite: bool = False, overrides: Sequence[str] = (),
                 inputs: Iterable[str | Path] = (), resumable: bool = True,
                 overridable: Sequence[str] | None = None) -> None:
        self.path = run_path(name, root)
        self.main = distributed.is_main()
        self.quiet = quiet or not self.main
        self._out = self.path
        self._lock: int | None = None
        self._log: int | None = None
        self._pending_log: list[bytes] = []
        self.resumed = resume
        self.stored: dict | None = None
        self.config: dict | None = config
        self._started = False
        if not self.main:
            self._out = Path(tempfile.mkdtemp(prefix=f"spikesearch-rank{distributed.rank_world()[0]}-"))
            atexit.register(shutil.rmtree, self._out, ignore_errors=True)
        else:
            rules = dict(resumable=resumable, overridable=overridable)
            check_run(self.path, config, resume, overwrite, overrides, inputs, **rules)  # before anything is created
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise SpikeSearchError(f"cannot write the run folder {self.path}: {_why(e)}") from None
            self._acquire()
            try:
                diff = check_run(self.path, config, resume, overwrite, overrides, inputs, locked=True, **rules)
                if overwrite and holds_run(self.path):
                    _clear(self.path)
                _remove_stale_temps(self.path)
                if resume and config is not None:
                    self.stored = _read_config(self.path)
                    self.config = self._recorded(config, diff)
            except BaseException:
                self.close()
                raise
        _OPEN.append(weakref.ref(self))
        _OPENED.append(self.path)
        _RESUMABLE[self.path] = resumable
        if not resume:
            self.started()

    def _acquire(self) -> None:
        fd = _open_no_follow(self.path / LOCK, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise SpikeSearchError(f"cannot lock the run folder {self.path}: {_why(e)}") from None
            raise SpikeSearchError(f"run folder {self.path} is in use by {holder or 'another process'}; "
                                   "wait for it to end or choose another name") from None
        self._lock = fd
        info = f"process {os.getpid()} ({' '.join(['spikesearch', *sys.argv[1:]])[:300]}), since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(errors="backslashreplace"), 0)

    def _recorded(self, config: dict, diff: dict) -> dict:
        """What a resumed run records: the stored config, the overridden settings changed, each change listed
        under ``resumed``."""
        if not diff:
            return self.stored
        change = {"at": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "changed": {k: {"from": old, "to": new} for k, (old, new) in diff.items()}}
        resumed = self.stored.get("resumed", [])
        return {**self.stored, **{k: config[k] for k in diff if k in config},
                "resumed": [*(resumed if isinstance(resumed, list) else []), change]}

    def started(self) -> None:
        """The work has begun (a resumed run: its state is restored and checked): from here on the folder is
        written, config.json first (atomically), then the log lines held back so far."""
        if self._started:
            return
        self._started = True
        if self.main and self.config is not None and self.config != self.stored:
            atomic_write_bytes(self.path / "config.json", dump_json(self.config))
        self._log = _open_no_follow(self._out / "log.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        for line in self._pending_log:
            self._write_log(line)
        self._pending_log.clear()

    def check_record(self, record: Any, source: Path) -> None:
        """Refuse a resume whose config.json is not what the checkpoint ``source`` says ran (``record``, the
        ``config`` saved with it): a config.json edited by hand would otherwise pass the resume check while
        the checkpoint's settings go on. A config.json one override ahead of its checkpoint (killed before the
        first checkpoint of the resumed work) is what ran. Checkpoints without a record are not checked."""
        if record is None or self.stored is None or record == self.stored:
            return
        if record == _without_last_change(self.stored):
            return
        raise SpikeSearchError(f"{self.path / 'config.json'} is not what {source} records as run "
                               f"({_changes(record, self.stored)}): it was edited after the run wrote it; restore it, "
                               "or start a new run")

    def file(self, name: str) -> Path:
        return self._out / name

    def dir(self, name: str) -> Path:
        """A subfolder of the run (created); a file in its way is one clear line."""
        path = self._out / name
        try:
            path.mkdir(exist_ok=True)
        except OSError as e:
            raise SpikeSearchError(f"cannot create {path}: {_why(e)}") from None
        return path

    def _write_log(self, line: bytes) -> None:
        try:
            os.write(self._log, line)
        except OSError as e:
            raise SpikeSearchError(f"cannot write {self._out / 'log.txt'}: {_why(e)}") from None

    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}\n".encode(errors="backslashreplace")
        if self._started:
            self._write_log(line)
        else:
            self._pending_log.append(line)
        if not self.quiet:
            print(msg, file=sys.stdout, flush=True)

    def save_json(self, name: str, obj: Any) -> Path:
        self.started()  # a result written means the work has begun
        path = self.file(name)
        atomic_write_bytes(path, dump_json(obj))
        return path

    def save_csv(self, name: str, header: list[str], rows) -> bytes:
        """Write a CSV atomically; returns its bytes for callers that also copy it elsewhere."""
        self.started()
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        data = buf.getvalue().encode()
        atomic_write_bytes(self.file(name), data)
        return data

    def close(self) -> None:
        if getattr(self, "_log", None) is not None:
            os.close(self._log)
            self._log = None
        if getattr(self, "_lock", None) is not None:
            try:
                os.ftruncate(self._lock, 0)  # the holder line is only true while the lock is held
            except OSError:
                pass
            os.close(self._lock)  # releases the flock
            self._lock = None
        _OPEN[:] = [r for r in _OPEN if r() is not None and r() is not self]

    def __enter__(self) -> "Run":
        return self

    def __del__(self) -> None:  # a Run dropped without close() (Python API) still releases its lock
        self.close()

    def __exit__(self, *exc) -> None:
        self.close()


class Part(Run):
    """A subfolder of an open run that a ``Trainer`` writes as it would a run (one trained cell of a search):
    its own checkpoints, metrics.csv and log.txt, under the run's lock (it holds no lock of its own, so it is no
    nested run: ``--overwrite`` replaces it with its run). ``config`` is what its checkpoints record; one trained
    under other settings is refused."""

    def __init__(self, parent: Run, name: str, config: dict) -> None:
        # as Run: ``path`` is the shared folder a resume reads, ``_out`` where this rank writes (torchrun)
        self.path, self._out = parent.path / name, parent.file(name)
        try:
            self._out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpikeSearchError(f"cannot create {self.path}: {_why(e)}") from None
        self.main, self.quiet, self.resumed = parent.main, True, False
        self.config = self.stored = config
        self._lock, self._log, self._pending_log, self._started = None, None, [], False
        self.started()

    def check_record(self, record: Any, source: Path) -> None:
        if record is not None and record != self.config:
            raise SpikeSearchError(f"{source} was trained under other settings ({_changes(record, self.config)}): "
                                   "resume with the settings it ran with, or start a new run")


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """A command's run folder before it is opened: ``check()`` early (read-only, before slow work), ``open()``
    once the inputs have been validated (``config.json`` is written then, never before). ``overridable``: the
    settings a resume of this command can re-plan (the rest are refused); ``resumable``: whether it has
    ``--resume`` at all."""

    name: str
    root: str | Path
    config: dict
    resume: bool = False
    overwrite: bool = False
    overrides: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    resumable: bool = True
    overridable: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, a, name: str, root: str | Path, inputs: Iterable[str | Path | None] = (),
                  overridable: Iterable[str] = (), resumable: bool | None = None, **extra: Any) -> "RunRequest":
        """From parsed arguments (after defaults are resolved): ``--resume``, ``--overwrite``, ``--override``;
        ``resumable`` defaults to whether the command has ``--resume``."""
        return cls(name, root, config_of(a, **extra), bool(getattr(a, "resume", False)), bool(getattr(a, "overwrite", False)),
                   tuple(getattr(a, "override", None) or ()), tuple(str(i) for i in inputs if i),
                   hasattr(a, "resume") if resumable is None else resumable, tuple(overridable))

    def _rules(self) -> dict:
        return dict(resumable=self.resumable, overridable=self.overridable)

    def check(self) -> Path:
        path = run_path(self.name, self.root)
        if distributed.is_main():  # only rank 0 writes the folder; the others would see its run appear
            check_run(path, self.config, self.resume, self.overwrite, self.overrides, self.inputs, **self._rules())
        return path

    def open(self, quiet: bool = False) -> Run:
        return Run(self.name, self.root, quiet, config=self.config, resume=self.resume, overwrite=self.overwrite,
                   overrides=self.overrides, inputs=self.inputs, **self._rules())


def check_output(path: str | Path, flag: str, overwrite: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """An output file a command writes outside its run folder (``export -o``, ``convert --results-file``),
    checked before any work: its folder exists; it is not a directory or a symlink (the file behind it would
    be replaced), not a file the command reads or one inside a folder it reads, and not inside any run folder
    (those files are the run's record), whatever ``overwrite`` says; an existing file is replaced only with
    ``overwrite``. Write it with ``atomic_write_bytes``: a failed write leaves no partial file."""
    path = Path(path)
    if not str(path):
        raise SpikeSearchError(f"{flag} is empty: give the file to write")
    if path.is_symlink():
        raise SpikeSearchError(f"{flag} {path} is a symbolic link: refused (the file it points to would be replaced)")
    if path.exists() and not path.is_file():
        raise SpikeSearchError(f"{flag} {path} is not a file")
    if not path.parent.is_dir():
        raise SpikeSearchError(f"{flag} {path}: folder {path.parent} does not exist")
    real = path.resolve()
    run = next((d for d in real.parents if is_run_folder(d)), None)
    if run is not None:
        raise SpikeSearchError(f"{flag} {path} is inside the run folder {run}, whose files record what ran: "
                               "write it elsewhere")
    for item in filter(None, inputs):
        source = Path(item).resolve()
        if real == source or source in real.parents:
            how = "would replace" if real == source else "is inside"
            raise SpikeSearchError(f"{flag} {path} {how} {item}, which this command reads: write it elsewhere")
    if path.exists() and not overwrite:
        raise SpikeSearchError(f"{flag} {path} exists: --overwrite replaces it")
    return path


def _alive() -> list[Run]:
    return [r for r in (ref() for ref in _OPEN) if r is not None]


def close_all() -> None:
    """Close every run this process still has open (the CLI calls it as a command ends)."""
    for r in _alive():
        r.close()


def opened() -> list[Path]:
    """The run folders this process has opened, oldest first."""
    return list(_OPENED)


def resumable(path: Path) -> bool:
    """Whether the run this process opened at ``path`` can be continued with ``--resume`` (its command's rule)."""
    return _RESUMABLE.get(path, False)


class CsvLog:
    """An append-only CSV that survives torn writes: each row is one ``write`` of a whole line followed by
    fsync; a write that fails is cut back to the previous row; on open a torn last line (a crash mid-write)
    is dropped and reported in ``dropped``, a zero-byte file gets its header, and a wrong header or a
    malformed row is one clear error. ``check(row)`` may raise ``ValueError`` for a row it cannot parse."""

    def __init__(self, path: Path, header: list[str], check: Callable[[dict], Any] | None = None) -> None:
        self.path, self.header = Path(path), list(header)
        self.rows: list[dict] = []
        self.dropped = ""
        self._fd: int | None = None
        if self.path.exists() and not self.path.is_file():
            raise SpikeSearchError(f"cannot use {self.path}: it is not a regular file")
        raw = self.path.read_bytes() if self.path.is_file() else b""
        end = raw.rfind(b"\n") + 1
        if end < len(raw):
            self.dropped = raw[end:].decode(errors="replace")
            raw = raw[:end]
        text = raw.decode(errors="replace")
        lines = list(csv.reader(io.StringIO(text)))
        if lines and lines[0] != self.header:
            raise SpikeSearchError(f"{self.path}: header {','.join(lines[0])!r} is not {','.join(self.header)!r}; "
                                   "it was not written by this command (use another name)")
        for n, values in enumerate(lines[1:], 2):
            row = dict(zip(self.header, values))
            try:
                if len(values) != len(self.header):
                    raise ValueError(f"{len(values)} fields, expected {len(self.header)}")
                if check is not None:
                    check(row)
            except ValueError as e:
                raise SpikeSearchError(f"{self.path} line {n} is malformed ({e}): {','.join(values)[:80]!r}; "
                                       "delete that line (and the ones after it) to resume from the rows before") from None
            self.rows.append(row)
        try:
            self._fd = _open_no_follow(self.path, os.O_WRONLY | os.O_CREAT)
            self._size = len(raw)
            os.ftruncate(self._fd, self._size)  # drops the torn tail for good
            if not lines:
                self._write(self._line(self.header))
        except OSError as e:
            raise SpikeSearchError(f"cannot write {self.path}: {_why(e)}") from None

    @staticmethod
    def _line(values: Sequence) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        return buf.getvalue().encode()

    def _write(self, data: bytes) -> None:
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(self._fd, data[done:], self._size + done)
            os.fsync(self._fd)
        except OSError as e:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass  # a torn tail is dropped on the next open
            raise SpikeSearchError(f"cannot append to {self.path}: {_why(e)}; the {len(self.rows)} rows before "
                                   "are kept (rerun with --resume once it can be written)") from None
        self._size += len(data)

    def append(self, values: Sequence) -> None:
        self._write(self._line(values))
        self.rows.append(dict(zip(self.header, (str(v) for v in values))))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
