"""``make bench``: run every benchmark and rewrite docs/BENCHMARKS.md with their tables, the machine,
the date and the exact commands. Never part of ``make test``.

    python benchmarks/bench.py [--quick] [--only training_step]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("runs/bench")  # relative to ROOT, so the printed commands run from any checkout
TITLES = {"search_throughput": "P1: search throughput", "training_step": "P2: training step",
          "conversion": "P3/P4: conversion accuracy and time per timestep",
          "precision": "P5: reduced-precision convolutions on this CPU (issue 19's premise)"}


def benchmarks(quick: bool) -> dict[str, list[list[str]]]:
    out = OUT / "quick" if quick else OUT  # kept apart: conversion.py reuses what its --out already holds
    steps = "5" if quick else "20"
    candidates = "6" if quick else "30"
    conversion = ["benchmarks/conversion.py"] + (["--epochs", "1", "--timesteps", "16", "--eval_size", "200", "--norm", "200"]
                                                 if quick else [])
    runs = {"search_throughput": [["benchmarks/search_throughput.py", "--candidates", candidates, "--batch", "256",
                                   "--out", str(out / "search_throughput")]],
            "training_step": [["benchmarks/training_step.py", "--steps", steps, "--out", str(out / "training_step_cpu")]],
            "conversion": [conversion + ["--out", str(out / "conversion")]],
            "precision": [["benchmarks/precision_conv.py", "--out", str(out / "precision_conv")]]}
    if torch.cuda.is_available():
        runs["search_throughput"].append(["benchmarks/search_throughput.py", "--candidates", candidates, "--batch", "256",
                                          "--device", "cuda", "--out", str(out / "search_throughput_cuda")])
        runs["training_step"].append(["benchmarks/training_step.py", "--steps", steps, "--device", "cuda", "--batch", "256",
                                      "--out", str(out / "training_step_cuda")])
        runs["conversion"].append(conversion + ["--device", "cuda", "--out", str(out / "conversion_cuda")])
    return runs


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        cpu = model
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores{gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps/epochs: checks the suite runs, not for figures")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    a = ap.parse_args()
    notes = (ROOT / "benchmarks" / "NOTES.md").read_text()
    kept = previous_sections(a.doc, notes)  # --only re-runs some benchmarks; the others keep their last section
    stamp = datetime.date.today().isoformat()
    sections = {}
    for name, commands in benchmarks(a.quick).items():
        if a.only and name not in a.only:
            if TITLES[name] in kept:
                sections[name] = kept[TITLES[name]]
            continue
        parts = []
        for cmd in commands:
            line = " ".join(["python", *map(shlex.quote, cmd)])
            print(f"== {line}", flush=True)
            subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True)
            table = (ROOT / cmd[cmd.index("--out") + 1] / "table.md").read_text()
            parts.append(f"Command: `{line}` ({stamp}, {machine()})\n\n{table}")
        sections[name] = f"### {TITLES[name]}\n\n" + "\n".join(parts)
    args = "".join(f" {shlex.quote(v)}" for v in sys.argv[1:])
    header = (f"# Benchmarks\n\nWritten by `python benchmarks/bench.py{args}` (`make bench` runs it with no arguments); "
              f"every section names its command, date and machine.\n\nRatios compare rows of one table, measured in "
              f"one process; absolute times on a shared machine are noise.\n\n")
    a.doc.write_text(header + "\n".join(sections[n] for n in TITLES if n in sections) + notes)
    print(f"wrote {a.doc}")


def previous_sections(doc: Path, notes: str) -> dict[str, str]:
    """The sections of the current BENCHMARKS.md by title (the notes at its end left out)."""
    if not doc.is_file():
        return {}
    text = doc.read_text()
    text = text[:text.index(notes)] if notes in text else text
    out = {}
    for chunk in text.split("\n### ")[1:]:
        title = chunk.split("\n", 1)[0].strip()
        out[title] = "### " + chunk.rstrip() + "\n"
    return out


if __name__ == "__main__":
    main()
