"""Benchmarks that drive the CLI: one command per run folder, read back once it has finished."""
from __future__ import annotations

import json
from pathlib import Path

from spikesearch.cli.main import main as cli


def finished_run(args: list[str], folder: Path, name_flag: str = "--name") -> dict:
    """``spikesearch ARGS`` into ``folder`` unless it already finished there (its ``results.json``); a folder that
    holds an interrupted run is continued with ``--resume``. ``name_flag`` is the command's run-name flag
    (``--exp_name`` for ``snasnet``)."""
    done = folder / "results.json"
    if not done.is_file():
        extra = ["--resume"] if (folder / "config.json").is_file() else []
        if cli([*args, "--runs_dir", str(folder.parent), name_flag, folder.name, "--quiet", *extra]) != 0:
            raise SystemExit(f"failed: spikesearch {' '.join(args)}")
    return json.loads(done.read_text())
