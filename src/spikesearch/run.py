"""The run folder: every command writes ``runs/<name>/`` with its config, log, metrics, checkpoints and plots."""
from __future__ import annotations

import atexit
import csv
import dataclasses
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import distributed
from .errors import SpikeSearchError


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Run:
    """``path`` is the run folder every process reads from (checkpoints to resume). Under torchrun only
    rank 0 writes it: the other ranks' ``file()`` points into a private temporary folder, deleted at exit,
    so the commands need no rank checks of their own."""

    def __init__(self, name: str, root: str | Path = "runs", quiet: bool = False) -> None:
        self.path = Path(root) / name
        self.main = distributed.is_main()
        self.quiet = quiet or not self.main
        self._out = self.path
        if not self.main:
            self._out = Path(tempfile.mkdtemp(prefix=f"spikesearch-rank{distributed.rank_world()[0]}-"))
            atexit.register(shutil.rmtree, self._out, ignore_errors=True)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self._out / f".write_test{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            raise SpikeSearchError(f"cannot write the run folder {self.path}: {e.strerror or e}") from None
        self._log = open(self._out / "log.txt", "a", buffering=1)

    def file(self, name: str) -> Path:
        return self._out / name

    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        self._log.write(line + "\n")
        if not self.quiet:
            print(msg, file=sys.stdout, flush=True)

    def save_json(self, name: str, obj: Any) -> Path:
        path = self.file(name)
        atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=2) + "\n").encode())
        return path

    def save_args(self, args, **extra: Any) -> Path:
        """``config.json``: the resolved command-line arguments (the handler function left out)."""
        return self.save_json("config.json", {**extra, **{k: v for k, v in vars(args).items() if k != "func"}})

    def save_csv(self, name: str, header: list[str], rows) -> bytes:
        """Write a CSV atomically; returns its bytes for callers that also copy it elsewhere."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(rows)
        data = buf.getvalue().encode()
        atomic_write_bytes(self.file(name), data)
        return data

    def close(self) -> None:
        self._log.close()
