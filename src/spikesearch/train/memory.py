"""Refuse work that cannot fit in memory before allocating it (one line instead of an OOM kill)."""
from __future__ import annotations

import os

from ..core.errors import SpikeSearchError


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory, else None (unknown: no check)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes: int, what: str, hint: str) -> None:
    avail = available_bytes()
    if avail is not None and nbytes > avail:
        raise SpikeSearchError(f"{what} needs about {nbytes / 2**30:.1f} GiB, more than the {avail / 2**30:.1f} GiB "
                               f"of memory available; {hint}")
