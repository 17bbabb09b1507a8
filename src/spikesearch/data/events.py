"""Event-camera datasets read with numpy alone (spec/datasets.md §4) and binned into frames ``[T, 2, H, W]``.

Formats:
- N-MNIST ``.bin`` (ATIS): 5 bytes per event: x, y, polarity in bit 7 of byte 2 and a 23-bit µs timestamp
  in the rest; an event with y == 240 marks a timestamp overflow (+2^13 µs for all later events, as tonic).
- DVS128 Gesture, original release: AEDAT 3.1 recordings ``userNN_<lighting>.aedat`` (ASCII header up to
  ``#!END-HEADER``, then packets of a 28-byte header and events; polarity events are 8 bytes: address word
  with x in bits 17.., y in bits 2.., polarity in bit 1, then a µs timestamp extended by the packet's
  overflow count), one ``..._labels.csv`` per recording (class 1..11, start µs, end µs) and the split lists
  ``trials_to_train.txt`` / ``trials_to_test.txt``. One sample per labelled interval.
- CIFAR10-DVS, original per-class folders of legacy AEDAT 2 files: ``#`` header lines, then big-endian
  uint32 (address, timestamp) pairs, x = (a & 0xFE) >> 1, y = (a & 0x7F00) >> 8, polarity = a & 1. Like
  spikingjelly we turn the sensor's frame upright (x' = 127 - y, y' = 127 - x) and flip the polarity.
  There is no official split: the first 10 % of each class (natural file order) is the test set.

Frames: ``split_by='number'`` gives every frame the same number of events, ``'time'`` the same duration;
each frame counts the events per polarity and pixel.
"""
from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..core.errors import SpikeSearchError

SPLITS = ("number", "time")


@dataclass
class Events:
    """Events in time order: timestamps (µs), pixel coordinates and polarity (0 = off, 1 = on)."""

    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    p: np.ndarray

    def __len__(self) -> int:
        return len(self.t)

    def between(self, start: int, end: int) -> "Events":
        keep = (self.t >= start) & (self.t < end)
        return Events(self.t[keep], self.x[keep], self.y[keep], self.p[keep])


def check_nmnist_bin(path: Path) -> None:
    size = path.stat().st_size
    if size % 5:
        raise SpikeSearchError(f"{path}: truncated N-MNIST file ({size} bytes, not a multiple of 5)")


def read_nmnist_bin(path: str | Path) -> Events:
    check_nmnist_bin(Path(path))
    raw = np.fromfile(path, dtype=np.uint8)
    raw = raw.reshape(-1, 5).astype(np.int64)
    x, y = raw[:, 0], raw[:, 1]
    p = raw[:, 2] >> 7
    t = ((raw[:, 2] & 127) << 16) | (raw[:, 3] << 8) | raw[:, 4]
    overflow = y == 240
    t = t + (np.cumsum(overflow) << 13)
    keep = ~overflow
    return Events(t[keep], x[keep], y[keep], p[keep])


def _skip_header(data: bytes, end_marker: bytes | None = None) -> int:
    """Offset of the first byte after the ASCII header lines that start with '#'."""
    pos = 0
    while pos < len(data) and data[pos:pos + 1] == b"#":
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise SpikeSearchError("header never ends (no newline after a '#' line)")
        line, pos = data[pos:nl + 1], nl + 1
        if end_marker is not None and line.rstrip(b"\r\n") == end_marker:
            break
    return pos


def _aedat2_body(path: Path, data: bytes, size: int) -> int:
    """Offset of the events; checks that the file holds whole (address, timestamp) pairs."""
    try:
        start = _skip_header(data)
    except SpikeSearchError as e:
        raise SpikeSearchError(f"{path}: {e}") from None
    if (size - start) % 8:
        raise SpikeSearchError(f"{path}: truncated AEDAT 2 file ({size - start} bytes of events, not a multiple of 8)")
    return start


def check_aedat2(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(1 << 16)  # the '#' header lines are a few hundred bytes
    _aedat2_body(path, head, path.stat().st_size)


def read_aedat2(path: str | Path) -> Events:
    """CIFAR10-DVS legacy AEDAT (big-endian address/timestamp pairs)."""
    data = Path(path).read_bytes()
    body = data[_aedat2_body(Path(path), data, len(data)):]
    words = np.frombuffer(body, dtype=">u4").astype(np.int64).reshape(-1, 2)
    addr, t = words[:, 0], words[:, 1]
    x, y, p = (addr & 0xFE) >> 1, (addr & 0x7F00) >> 8, addr & 1
    return Events(t, 127 - y, 127 - x, 1 - p)


POLARITY_EVENT = 1


AEDAT3_PACKET = np.dtype("<u2,<u2,<u4,<u4,<u4,<u4,<u4,<u4")  # type, source, size, ts offset, overflow, capacity, number, valid


def _aedat3_packets(path: Path, read: Callable[[int, int], bytes], size: int):
    """Yield (offset of the events, type, event size, count, overflow) per packet; ``read(offset, n)``."""
    try:
        pos = _skip_header(read(0, 1 << 16), b"#!END-HEADER")
    except SpikeSearchError as e:
        raise SpikeSearchError(f"{path}: {e}") from None
    while pos < size:
        if pos + 28 > size:
            raise SpikeSearchError(f"{path}: truncated AEDAT 3 packet header at byte {pos}")
        e_type, _src, e_size, _off, overflow, capacity, _num, _valid = np.frombuffer(read(pos, 28), AEDAT3_PACKET)[0]
        end = pos + 28 + int(capacity) * int(e_size)
        if end > size or e_size == 0:
            raise SpikeSearchError(f"{path}: truncated AEDAT 3 packet at byte {pos} ({capacity} x {e_size} bytes announced)")
        if e_type == POLARITY_EVENT and (e_size < 8 or e_size % 4):
            raise SpikeSearchError(f"{path}: the polarity packet at byte {pos} has {e_size}-byte events "
                                   "(AEDAT 3.1 polarity events are 8 bytes: address word, timestamp)")
        yield pos + 28, int(e_type), int(e_size), int(capacity), int(overflow)
        pos = end


def check_aedat3(path: Path) -> None:
    with open(path, "rb") as f:
        def read(offset: int, n: int) -> bytes:
            f.seek(offset)
            return f.read(n)
        for _ in _aedat3_packets(path, read, path.stat().st_size):
            pass


def read_aedat3(path: str | Path) -> Events:
    """AEDAT 3.1 (DVS128 Gesture): polarity-event packets; other packet types are skipped."""
    data = Path(path).read_bytes()
    parts: list[np.ndarray] = []
    for start, e_type, e_size, count, overflow in _aedat3_packets(Path(path), lambda o, n: data[o:o + n], len(data)):
        if e_type == POLARITY_EVENT:
            ev = np.frombuffer(data, dtype="<u4", count=count * e_size // 4, offset=start)
            ev = ev.reshape(count, e_size // 4)[:, :2].astype(np.int64)
            ev[:, 1] |= overflow << 31
            parts.append(ev)
    ev = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
    word, t = ev[:, 0], ev[:, 1]
    return Events(t, (word >> 17) & 0x7FFF, (word >> 2) & 0x7FFF, (word >> 1) & 1)


def _check_split(split_by: str) -> None:
    if split_by not in SPLITS:
        raise SpikeSearchError(f"event binning must be one of {SPLITS}, got {split_by!r}")


def to_frames(ev: Events, frames: int, size: int, split_by: str = "number") -> np.ndarray:
    """Bin events into ``[frames, 2, size, size]`` float32 counts."""
    _check_split(split_by)
    out = np.zeros(frames * 2 * size * size, np.float32)
    n = len(ev)
    if n:
        if np.any(np.diff(ev.t) < 0):
            order = np.argsort(ev.t, kind="stable")
            ev = Events(ev.t[order], ev.x[order], ev.y[order], ev.p[order])
        if split_by == "number":
            frame = np.arange(n) * frames // n
        else:
            span = int(ev.t[-1] - ev.t[0]) + 1
            frame = (ev.t - ev.t[0]) * frames // span
        inside = (ev.x >= 0) & (ev.x < size) & (ev.y >= 0) & (ev.y < size)
        idx = ((frame * 2 + ev.p) * size + ev.y) * size + ev.x
        out += np.bincount(idx[inside].astype(np.int64), minlength=out.size).astype(np.float32)
    return out.reshape(frames, 2, size, size)


CHECKS: dict[Callable, Callable[[Path], None]] = {
    read_nmnist_bin: check_nmnist_bin, read_aedat2: check_aedat2, read_aedat3: check_aedat3}


class EventSet(torch.utils.data.Dataset):
    """Samples read and binned on access: ``(frames [T, 2, H, W] float32, label)``. A sample is a
    (file, start, end) interval; recordings with many samples are parsed once per worker (cached).
    Every file's framing is checked up front (sizes and headers, not the events), so a truncated file
    stops the command before it writes anything."""

    def __init__(self, samples: list[tuple[Path, int, int]], labels: list[int], classes: list[str],
                 reader: Callable[[Path], Events], size: int, frames: int, split_by: str, check: bool = True) -> None:
        if check:
            for path in dict.fromkeys(p for p, _, _ in samples):
                CHECKS[reader](path)
        if frames <= 0:
            raise SpikeSearchError(f"event frames (T) must be positive, got {frames}")
        _check_split(split_by)
        self.samples, self.labels, self.classes = samples, torch.as_tensor(labels, dtype=torch.long), classes
        self.reader, self.size, self.frames, self.split_by = reader, size, frames, split_by
        self._read = functools.lru_cache(maxsize=2)(reader)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        path, start, end = self.samples[i]
        ev = self._read(path)
        if end >= 0:  # end = -1: the whole file is one sample
            ev = ev.between(start, end)
        return torch.from_numpy(to_frames(ev, self.frames, self.size, self.split_by)), int(self.labels[i])

    def __getstate__(self) -> dict:  # the lru_cache wrapper does not pickle into DataLoader workers
        return {k: v for k, v in self.__dict__.items() if k != "_read"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._read = functools.lru_cache(maxsize=2)(self.reader)

    def subset(self, n: int | None) -> "EventSet":
        return self if n is None or n >= len(self) else self.select(range(n))

    def select(self, index: Sequence[int]) -> "EventSet":
        index = list(index)
        return EventSet([self.samples[i] for i in index], self.labels[index].tolist(), self.classes, self.reader,
                        self.size, self.frames, self.split_by, check=False)


def _natural(p: Path) -> tuple:
    return tuple(int(s) if s.isdigit() else s for s in re.split(r"(\d+)", p.name))


def nmnist(root: Path, size: int, frames: int, split_by: str) -> tuple[EventSet, EventSet]:
    out = []
    for split in ("Train", "Test"):
        base = root / split
        files = sorted(base.glob("*/*.bin"), key=lambda p: (p.parent.name, _natural(p))) if base.is_dir() else []
        if not files:
            raise FileNotFoundError(f"no {split}/<digit>/*.bin")
        bad = sorted({p.parent.name for p in files if not p.parent.name[-1:].isdigit()})
        if bad:
            raise SpikeSearchError(f"{base}: class folder {bad[0]!r} does not end in a digit (N-MNIST folders are 0..9)")
        labels = [int(p.parent.name[-1]) for p in files]  # tonic: the last character of the folder name
        out.append(EventSet([(p, 0, -1) for p in files], labels, [str(i) for i in range(10)],
                            read_nmnist_bin, size, frames, split_by))
    return out[0], out[1]


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10dvs(root: Path, size: int, frames: int, split_by: str) -> tuple[EventSet, EventSet]:
    train, test = ([], []), ([], [])
    for label, name in enumerate(CIFAR10_CLASSES):
        files = sorted((root / name).glob("*.aedat"), key=_natural) if (root / name).is_dir() else []
        if not files:
            raise FileNotFoundError(f"no {name}/*.aedat")
        n_test = max(1, len(files) // 10)
        for i, p in enumerate(files):
            dest = test if i < n_test else train
            dest[0].append((p, 0, -1))
            dest[1].append(label)
    return tuple(EventSet(s, lab, CIFAR10_CLASSES, read_aedat2, size, frames, split_by) for s, lab in (train, test))


GESTURES = ["hand clap", "right hand wave", "left hand wave", "right arm clockwise", "right arm counter clockwise",
            "left arm clockwise", "left arm counter clockwise", "arm roll", "air drums", "air guitar", "other gestures"]


def _gesture_intervals(csv_path: Path) -> list[tuple[int, int, int]]:
    rows = []
    with open(csv_path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if n == 1 or not row or not row[0].strip():
                continue  # header: class,startTime_usec,endTime_usec
            try:
                label, start, end = (int(v) for v in row[:3])
            except ValueError:
                raise SpikeSearchError(f"{csv_path}:{n}: expected 'class,startTime_usec,endTime_usec' integers") from None
            if not 1 <= label <= len(GESTURES):
                raise SpikeSearchError(f"{csv_path}:{n}: class {label} is not in 1..{len(GESTURES)}")
            rows.append((label - 1, start, end))
    return rows


def dvsgesture(root: Path, size: int, frames: int, split_by: str) -> tuple[EventSet, EventSet]:
    if (root / "DvsGesture").is_dir():
        root = root / "DvsGesture"
    out = []
    for split in ("train", "test"):
        listing = root / f"trials_to_{split}.txt"
        if not listing.is_file():
            raise FileNotFoundError(f"no trials_to_{split}.txt")
        samples, labels = [], []
        for name in (line.strip() for line in listing.read_text().splitlines()):
            if not name:
                continue
            aedat = root / name
            labels_csv = aedat.with_name(aedat.stem + "_labels.csv")
            if not aedat.is_file() or not labels_csv.is_file():
                raise FileNotFoundError(f"{name} or its _labels.csv, listed in {listing.name}")
            for label, start, end in _gesture_intervals(labels_csv):
                samples.append((aedat, start, end))
                labels.append(label)
        out.append(EventSet(samples, labels, GESTURES, read_aedat3, size, frames, split_by))
    return out[0], out[1]
