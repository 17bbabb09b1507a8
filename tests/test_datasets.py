import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from spikesearch import Augment, BatchLoader, SpikeSearchError, load_dataset
from spikesearch.data.datasets import read_idx


def test_bundled_subset_is_stratified_uint8():
    train, test, info = load_dataset("fmnist-small")
    assert train.images.shape == (5000, 1, 28, 28) and test.images.shape == (1000, 1, 28, 28)
    assert train.images.dtype == torch.uint8
    assert torch.bincount(train.labels).tolist() == [500] * 10
    assert torch.bincount(test.labels).tolist() == [100] * 10
    assert info.num_classes == 10 and train.classes[0] == "T-shirt/top"


def write_idx(path, arr, gz=True):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_fashion_mnist_idx_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz=False)
    train, test, _ = load_dataset("fashion-mnist", tmp_path)
    assert train.images.shape == (12, 1, 28, 28) and test.labels.tolist() == [0, 1, 2, 3, 4]
    raw = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert torch.equal(train.images[:, 0], torch.tensor(raw.copy()))


def test_truncated_idx_is_clear_error(tmp_path):
    p = tmp_path / "x.idx"
    write_idx(p, np.zeros((4, 28, 28)), gz=False)
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(SpikeSearchError, match="truncated"):
        read_idx(p)


def _cifar_pickle(path, n, label_key, seed):
    data = np.zeros((n, 3072), np.uint8)
    data[:, :1024], data[:, 1024:2048], data[:, 2048:] = 10, 20, 30  # R, G, B planes
    data[:, 0] = np.arange(n)  # pixel (0,0) of R carries the sample index
    d = {"data": data, label_key: list((np.arange(n) + seed) % 10), "batch_label": "x", "filenames": ["f"] * n}
    if label_key == "fine_labels":
        d["coarse_labels"] = [0] * n
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def test_cifar10_pickles(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        _cifar_pickle(root / f"data_batch_{i}", 4, "labels", i)
    _cifar_pickle(root / "test_batch", 3, "labels", 0)
    pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, open(root / "batches.meta", "wb"), protocol=2)
    train, test, info = load_dataset("cifar10", tmp_path)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    assert train.images[1, :, 5, 5].tolist() == [10, 20, 30]  # CHW planes in R, G, B order
    assert train.images[:4, 0, 0, 0].tolist() == [0, 1, 2, 3]
    assert train.labels[:4].tolist() == [1, 2, 3, 4] and train.classes[9] == "c9"


def test_cifar100_uses_fine_labels(tmp_path):
    _cifar_pickle(tmp_path / "train", 6, "fine_labels", 3)
    _cifar_pickle(tmp_path / "test", 2, "fine_labels", 0)
    train, test, info = load_dataset("cifar100", tmp_path)
    assert info.num_classes == 100 and train.labels.tolist() == [3, 4, 5, 6, 7, 8]


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_cifar_pickle_refused(tmp_path):
    with open(tmp_path / "train", "wb") as f:
        pickle.dump({"data": Evil(), "fine_labels": [0]}, f)
    _cifar_pickle(tmp_path / "test", 2, "fine_labels", 0)
    with pytest.raises(SpikeSearchError, match="refusing to load builtins.print"):
        load_dataset("cifar100", tmp_path)


def _jpeg(path, mode="RGB", size=64, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode == "L" else (value, 0, 0)).save(path)


def test_tiny_imagenet_layout_with_grayscale(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        for k in range(2):
            _jpeg(root / "train" / w / "images" / f"{w}_{k}.JPEG")
    _jpeg(root / "val" / "images" / "val_0.JPEG", mode="L")
    _jpeg(root / "val" / "images" / "val_1.JPEG")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn02\t0\t0\t10\t10\nval_1.JPEG\tn01\t1\t1\t5\t5\n")
    train, val, info = load_dataset("tinyimagenet", tmp_path)
    assert train.classes == ["n01", "n02"] and train.labels.tolist() == [0, 0, 1, 1]
    x, y = val[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.uint8 and y == 1
    assert x[:, 0, 0].tolist() == [100, 100, 100]  # grayscale expanded to RGB


def test_imagenet_class_folders(tmp_path):
    for split in ("train", "val"):
        for c in ("b_cls", "a_cls"):
            _jpeg(tmp_path / split / c / "img0.png", size=40)
    train, val, info = load_dataset("imagenet", tmp_path)
    assert train.classes == ["a_cls", "b_cls"] and len(val) == 2
    assert train[0][0].shape == (3, 224, 224)


@pytest.mark.parametrize("name", ["fashion-mnist", "cifar10", "cifar100", "tinyimagenet", "imagenet"])
def test_missing_dataset_names_layout(tmp_path, name):
    with pytest.raises(SpikeSearchError, match="Expected layout"):
        load_dataset(name, tmp_path / "nowhere")
    with pytest.raises(SpikeSearchError, match="Expected layout"):
        load_dataset(name, tmp_path)  # exists but empty


def test_unknown_dataset():
    with pytest.raises(SpikeSearchError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_augment_crop_flip_normalise():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    aug = Augment((0.0,), (1.0,), crop_padding=1, flip=True)
    g = torch.Generator().manual_seed(0)
    out = aug(x, True, g)
    assert out.shape == x.shape
    assert not torch.equal(out, out[:1].expand_as(out))  # samples got different crops/flips
    assert set((out * 255).round().unique().tolist()) <= set(range(16))  # only original pixels or black border
    assert torch.equal(aug(x, False), x.float() / 255)  # eval: normalise only
    again = aug(x, True, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_batch_loader_is_seeded_and_complete():
    train, _, info = load_dataset("fmnist-small")
    small = train.subset(130)
    labels = [torch.cat([y for _, y in BatchLoader(small, 32, Augment.for_dataset(info), True, seed=s)]) for s in (1, 1, 2)]
    assert torch.equal(labels[0], labels[1]) and not torch.equal(labels[0], labels[2])
    assert sorted(labels[0].tolist()) == sorted(small.labels.tolist())
    with pytest.raises(SpikeSearchError):
        BatchLoader(small, 0, Augment.for_dataset(info), True)
