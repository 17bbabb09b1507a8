"""Event-camera readers on small files written here in the exact on-disk formats (spec/datasets.md §4)."""
import struct

import numpy as np
import pytest
import torch

from spikesearch import SpikeSearchError, load_dataset
from spikesearch.cli.main import main
from spikesearch.data.events import (
    Events,
    read_aedat2,
    read_aedat3,
    read_nmnist_bin,
    to_frames,
)


def nmnist_bytes(events, overflow_after=None):
    """events: (x, y, p, t) with t < 2^23; an overflow record (y = 240) after index ``overflow_after``."""
    out = bytearray()
    for i, (x, y, p, t) in enumerate(events):
        out += bytes([x, y, (p << 7) | ((t >> 16) & 127), (t >> 8) & 255, t & 255])
        if i == overflow_after:
            out += bytes([0, 240, 0, 0, 0])
    return bytes(out)


def aedat2_bytes(events):
    """CIFAR10-DVS legacy AEDAT: '#' header lines, big-endian (address, timestamp) words."""
    body = b"".join(struct.pack(">II", (y << 8) | (x << 1) | p, t) for x, y, p, t in events)
    return b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n" + body


def aedat3_bytes(events, overflow=0, extra_packet=True):
    """AEDAT 3.1: header to #!END-HEADER, then packets (28-byte header + 8-byte polarity events)."""
    out = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n"
    if extra_packet:  # a special-event packet (type 0) that the reader must skip
        out += struct.pack("<HHIIIIII", 0, 1, 8, 4, 0, 1, 1, 1) + struct.pack("<II", 12345, 7)
    data = b"".join(struct.pack("<II", (x << 17) | (y << 2) | (p << 1) | 1, t) for x, y, p, t in events)
    out += struct.pack("<HHIIIIII", 1, 1, 8, 4, overflow, len(events), len(events), len(events)) + data
    return out


def test_nmnist_bin_fields_and_overflow(tmp_path):
    ev = [(3, 5, 1, 10), (33, 0, 0, 2 ** 23 - 1), (0, 33, 1, 7)]
    path = tmp_path / "a.bin"
    path.write_bytes(nmnist_bytes(ev, overflow_after=1))
    got = read_nmnist_bin(path)
    assert got.x.tolist() == [3, 33, 0] and got.y.tolist() == [5, 0, 33] and got.p.tolist() == [1, 0, 1]
    assert got.t.tolist() == [10, 2 ** 23 - 1, 7 + 2 ** 13]  # the overflow record adds 2^13 to later events
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(SpikeSearchError, match="truncated N-MNIST"):
        read_nmnist_bin(path)


def test_aedat2_fields_orientation_and_truncation(tmp_path):
    path = tmp_path / "cifar10_cat_0.aedat"
    path.write_bytes(aedat2_bytes([(10, 20, 1, 100), (127, 0, 0, 250)]))
    got = read_aedat2(path)
    # upright like spikingjelly: x' = 127 - y, y' = 127 - x, polarity flipped
    assert got.x.tolist() == [107, 127] and got.y.tolist() == [117, 0] and got.p.tolist() == [0, 1]
    assert got.t.tolist() == [100, 250]
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(SpikeSearchError, match="truncated AEDAT 2"):
        read_aedat2(path)


def test_aedat3_polarity_packets_and_overflow(tmp_path):
    path = tmp_path / "user01_led.aedat"
    path.write_bytes(aedat3_bytes([(100, 2, 1, 5), (0, 127, 0, 9)], overflow=1))
    got = read_aedat3(path)
    assert got.x.tolist() == [100, 0] and got.y.tolist() == [2, 127] and got.p.tolist() == [1, 0]
    assert got.t.tolist() == [5 + 2 ** 31, 9 + 2 ** 31]
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(SpikeSearchError, match="truncated AEDAT 3"):
        read_aedat3(path)


def test_frames_by_count_and_by_time():
    t = np.array([0, 1, 2, 3, 90, 100])
    ev = Events(t, np.array([0, 1, 0, 1, 2, 3]), np.zeros(6, int), np.array([1, 1, 0, 0, 1, 1]))
    by_count = to_frames(ev, 3, 4, "number")
    assert by_count.shape == (3, 2, 4, 4) and by_count.dtype == np.float32
    assert by_count.reshape(3, -1).sum(1).tolist() == [2, 2, 2]
    assert by_count[0, 1, 0, 0] == 1 and by_count[0, 1, 0, 1] == 1  # events 0, 1: on, at x = 0 and 1
    by_time = to_frames(ev, 2, 4, "time")  # span 0..100: the first four events fall in the first half
    assert by_time.reshape(2, -1).sum(1).tolist() == [4, 2]
    assert to_frames(Events(*(np.zeros(0, int),) * 4), 2, 4).sum() == 0


def write_nmnist_tree(root, per_class=2):
    rng = np.random.default_rng(0)
    for split in ("Train", "Test"):
        for digit in range(10):
            d = root / split / str(digit)
            d.mkdir(parents=True)
            for k in range(per_class):
                n = 40
                ev = zip(rng.integers(0, 34, n), rng.integers(0, 34, n), rng.integers(0, 2, n), np.sort(rng.integers(0, 10 ** 5, n)))
                (d / f"{k:05d}.bin").write_bytes(nmnist_bytes([tuple(int(v) for v in e) for e in ev]))


def test_nmnist_dataset_and_snasnet_on_events(tmp_path, capsys):
    write_nmnist_tree(tmp_path / "nm")
    train, test, info = load_dataset("nmnist", tmp_path / "nm", frames=3)
    assert (len(train), len(test), info.channels, info.size) == (20, 20, 2, 34)
    x, y = train[0]
    assert x.shape == (3, 2, 34, 34) and x.sum() == 40 and y == 0
    assert train.labels.tolist() == [d for d in range(10) for _ in range(2)]
    # searched nets take the frames: score 2 candidates on them, then train the best for one epoch
    argv = ["snasnet", "--dataset", "nmnist", "--data_dir", str(tmp_path / "nm"), "--runs_dir", str(tmp_path / "runs"),
            "--exp_name", "ev", "--timestep", "3", "--num_search", "2", "--score_batch", "4", "--score_repeats", "1",
            "--epochs", "1", "--batch_size", "10", "--quiet"]
    assert main(argv) == 0
    assert 0 <= float(capsys.readouterr().out.split("test accuracy: ")[1].split("%")[0]) <= 100


def test_dvsgesture_layout_labels_and_split(tmp_path):
    root = tmp_path / "DvsGesture"
    root.mkdir()
    for name in ("user01_led", "user02_natural"):
        ev = [(x, x, x % 2, 1000 + 10 * x) for x in range(100)]
        (root / f"{name}.aedat").write_bytes(aedat3_bytes(ev))
        (root / f"{name}_labels.csv").write_text(
            "class,startTime_usec,endTime_usec\n3,1000,1500\n11,1500,2000\n")
    (root / "trials_to_train.txt").write_text("user01_led.aedat\n")
    (root / "trials_to_test.txt").write_text("user02_natural.aedat\n\n")
    train, test, info = load_dataset("dvsgesture", tmp_path, frames=2)
    assert train.labels.tolist() == [2, 10] and len(test) == 2 and info.num_classes == 11
    x, _ = train[0]  # events 0..49 lie in [1000, 1500)
    assert x.shape == (2, 2, 128, 128) and x.sum() == 50
    (root / "user02_natural_labels.csv").write_text("class,startTime_usec,endTime_usec\n12,0,1\n")
    with pytest.raises(SpikeSearchError, match="class 12 is not in 1..11"):
        load_dataset("dvsgesture", tmp_path, frames=2)


def test_cifar10dvs_split_and_converted_net_accepts_frames(tmp_path, capsys):
    from spikesearch.data.events import CIFAR10_CLASSES

    rng = np.random.default_rng(1)
    for name in CIFAR10_CLASSES:
        (tmp_path / "c" / name).mkdir(parents=True)
        for k in range(10):
            ev = [(int(rng.integers(128)), int(rng.integers(128)), int(rng.integers(2)), 10 * i) for i in range(30)]
            (tmp_path / "c" / name / f"cifar10_{name}_{k}.aedat").write_bytes(aedat2_bytes(ev))
    train, test, _ = load_dataset("cifar10dvs", tmp_path / "c", frames=4, split_by="time")
    assert (len(train), len(test)) == (90, 10)  # the first 10 % of each class (natural order) is the test set
    assert test.samples[0][0].name == "cifar10_airplane_0.aedat"
    runs = tmp_path / "runs"
    ann = ["--dataset", "cifar10dvs", "--data", str(tmp_path / "c"), "--width", "0.125", "--frames", "4"]
    assert main(["train-ann", "--job_dir", str(runs / "ann"), "--epochs", "1", "--batch_size", "30", "--quiet", *ann]) == 0
    assert main(["convert", "--job_dir", str(runs / "snn"), "--model", str(runs / "ann/model.pt"), "--time", "6",
                 "--norm", "30", "--batch_size", "10", "--quiet", *ann]) == 0
    acc = np.loadtxt(runs / "snn/accuracy_per_timestep.csv", delimiter=",", skiprows=1)
    assert acc.shape == (6, 2)


def test_event_dataset_errors(tmp_path):
    with pytest.raises(SpikeSearchError, match="Expected layout: DIR/{Train,Test}"):
        load_dataset("nmnist", tmp_path, frames=2)
    with pytest.raises(SpikeSearchError, match="needs the number of frames"):
        load_dataset("nmnist", tmp_path)
    with pytest.raises(SpikeSearchError, match="no --data_dir"):
        load_dataset("cifar10dvs", None, frames=2)
    write_nmnist_tree(tmp_path / "nm", per_class=1)
    with pytest.raises(SpikeSearchError, match="event binning"):
        load_dataset("nmnist", tmp_path / "nm", frames=2, split_by="space")


def test_time_major_batches_from_the_loader(tmp_path):
    from spikesearch.train.pipeline import make_loaders

    write_nmnist_tree(tmp_path / "nm", per_class=1)
    train, _, _, _ = make_loaders("nmnist", str(tmp_path / "nm"), 4, torch.device("cpu"), 0, frames=3)
    x, y = next(iter(train))
    assert x.shape == (3, 4, 2, 34, 34) and y.shape == (4,)
