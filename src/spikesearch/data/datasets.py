"""Image datasets read from files the user owns; nothing is ever downloaded.

Every reader returns uint8 images ``[N, C, H, W]`` and int64 labels: in memory (``ImageSet``) where the
set fits, or decoded on access (``FileImageSet``) for image folders. A missing or malformed dataset
raises ``SpikeSearchError`` naming the expected layout. torchvision is not used (its PyPI wheel does
not import beside the CPU torch wheel).
"""
from __future__ import annotations

import gzip
import io
import pickle
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..core.errors import SpikeSearchError
from ..core.registry import Registry
from . import events

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class ImageSet:
    """An in-memory labelled image set: ``images`` uint8 ``[N, C, H, W]``, ``labels`` int64 ``[N]``."""

    images: Tensor
    labels: Tensor
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])

    def subset(self, n: int | None) -> "ImageSet":
        return self if n is None or n >= len(self) else self.select(range(n))

    def select(self, index: Sequence[int]) -> "ImageSet":
        index = torch.as_tensor(list(index), dtype=torch.long)
        return ImageSet(self.images[index], self.labels[index], self.classes)


class FileImageSet(torch.utils.data.Dataset):
    """Images decoded on access (ImageNet-size folders do not fit in memory). Grayscale and RGBA
    files are converted to RGB; every image is resized to ``size`` x ``size``."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], classes: list[str], size: int) -> None:
        self.files, self.labels, self.classes, self.size = list(files), torch.as_tensor(labels, dtype=torch.long), classes, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                im = im.convert("RGB")
                if im.size != (self.size, self.size):
                    im = im.resize((self.size, self.size), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except OSError as e:
            raise SpikeSearchError(f"cannot decode image {self.files[i]}: {e}") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), int(self.labels[i])

    def subset(self, n: int | None) -> "FileImageSet":
        return self if n is None or n >= len(self) else self.select(range(n))

    def select(self, index: Sequence[int]) -> "FileImageSet":
        index = list(index)
        return FileImageSet([self.files[i] for i in index], self.labels[index].tolist(), self.classes, self.size)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool
    layout: str  # shown in every "dataset not found" error
    reader: Callable[..., tuple]  # (root, info) -> (train, test); event sets also take (frames, split_by)
    default_root: str | None = None
    events: bool = False  # samples are event frames [T, 2, H, W] (counts), not uint8 images


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def _missing(info: DatasetInfo, root: Path | None, what: str) -> SpikeSearchError:
    where = f" under {root}" if root is not None else ""
    return SpikeSearchError(f"{info.name}: {what}{where}. Expected layout: {info.layout} (pass --data_dir PATH)")


# --- Fashion-MNIST ---------------------------------------------------------------------------------

def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped or plain): big-endian magic ``0x0000 08 nd``, nd uint32 dims, uint8 data."""
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise SpikeSearchError(f"cannot read {path}: {getattr(e, 'strerror', None) or str(e) or type(e).__name__}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SpikeSearchError(f"{path}: not a uint8 IDX file (bad magic number)")
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(nd)]
    offset = 4 + 4 * nd
    if len(raw) - offset != int(np.prod(dims)):
        raise SpikeSearchError(f"{path}: truncated IDX file ({len(raw) - offset} bytes of data, header says {int(np.prod(dims))})")
    return np.frombuffer(raw, np.uint8, offset=offset).reshape(dims)


FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _images(x: np.ndarray, y: np.ndarray, classes: list[str]) -> ImageSet:
    x = x[:, None] if x.ndim == 3 else x
    return ImageSet(torch.from_numpy(np.array(x, copy=True)), torch.from_numpy(y.astype(np.int64)), classes)


def _read_fashion_mnist(root: Path | None, info: DatasetInfo):
    out = []
    for prefix in ("train", "t10k"):
        pair = []
        for kind in ("images-idx3", "labels-idx1"):
            cands = [root / f"{prefix}-{kind}-ubyte{ext}" for ext in (".gz", "")]
            path = next((p for p in cands if p.is_file()), None)
            if path is None:
                raise _missing(info, root, f"no {prefix}-{kind}-ubyte[.gz]")
            pair.append(read_idx(path))
        if pair[0].ndim != 3 or len(pair[0]) != len(pair[1]):
            raise _missing(info, root, f"{prefix} images {pair[0].shape} do not match labels {pair[1].shape}")
        out.append(_images(pair[0], pair[1], FMNIST_CLASSES))
    return tuple(out)


def _read_bundled(root: Path | None, info: DatasetInfo):
    with resources.files("spikesearch.data").joinpath("bundled", "fashion_mnist_small.npz").open("rb") as f:
        z = np.load(io.BytesIO(f.read()))
        return _images(z["x_train"], z["y_train"], FMNIST_CLASSES), _images(z["x_test"], z["y_test"], FMNIST_CLASSES)


# --- CIFAR (python pickles) ------------------------------------------------------------------------

class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches hold only dicts, lists, str/bytes and numpy arrays; anything else is refused, so a
    crafted pickle cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: CIFAR pickles hold only numpy arrays")


def load_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, TypeError, IndexError, KeyError,
            UnicodeDecodeError, OverflowError) as e:
        raise SpikeSearchError(f"{path}: not a CIFAR python batch ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(d, dict):
        raise SpikeSearchError(f"{path}: not a CIFAR python batch (top level is {type(d).__name__}, not dict)")
    # pickled by Python 3 from bytes (b'data', b'labels'), as CIFAR's own Python 2 files read without latin1
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = load_cifar_pickle(path)
    if "data" not in d or label_key not in d:
        raise SpikeSearchError(f"{path}: CIFAR batch lacks 'data' or {label_key!r} (keys: {sorted(d)})")
    data, labels = np.asarray(d["data"]), np.asarray(d[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise SpikeSearchError(f"{path}: 'data' must be N x 3072 uint8 pixels, got {data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise SpikeSearchError(f"{path}: {label_key!r} must be a list of integer class indices, got {labels.dtype} {labels.shape}")
    if len(labels) != len(data):
        raise SpikeSearchError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_cifar(root: Path | None, info: DatasetInfo):
    if info.num_classes == 10:
        folder, label_key, meta, names_key = "cifar-10-batches-py", "labels", "batches.meta", "label_names"
        splits = ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"])
    else:
        folder, label_key, meta, names_key = "cifar-100-python", "fine_labels", "meta", "fine_label_names"
        splits = (["train"], ["test"])
    base = root / folder if root is not None and (root / folder).is_dir() else root
    if base is None or not all((base / f).is_file() for f in splits[0] + splits[1]):
        raise _missing(info, root, "CIFAR python batches not found")
    classes = load_cifar_pickle(base / meta).get(names_key, []) if (base / meta).is_file() else []
    if isinstance(classes, (list, tuple)):
        classes = [c.decode("latin1") if isinstance(c, bytes) else c for c in classes]
    if not isinstance(classes, list) or (classes and (len(classes) != info.num_classes
                                                      or not all(isinstance(c, str) for c in classes))):
        raise SpikeSearchError(f"{base / meta}: {names_key!r} must list {info.num_classes} class names, got "
                               f"{type(classes).__name__} {str(classes)[:60]}")
    out = []
    for files in splits:
        xs, ys = zip(*(_cifar_batch(base / f, label_key) for f in files))
        out.append(_images(np.concatenate(xs), np.concatenate(ys), classes))
    return tuple(out)


# --- image folders: Tiny-ImageNet-200 and ImageNet-style class folders -----------------------------

def _class_folder_files(split_dir: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for idx, c in enumerate(classes):
        for p in sorted((split_dir / c).rglob("*")):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(p)
                labels.append(idx)
    return files, labels


def _read_image_folders(root: Path | None, info: DatasetInfo):
    if root is None or not (root / "train").is_dir() or not (root / "val").is_dir():
        raise _missing(info, root, "no train/ and val/ folders")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise _missing(info, root, "train/ has no class folders")
    out = []
    for split in ("train", "val"):
        files, labels = _class_folder_files(root / split, classes)
        if not files:
            raise _missing(info, root, f"{split}/ holds no images in class folders")
        out.append(FileImageSet(files, labels, classes, info.size))
    return tuple(out)


def _read_tiny_imagenet(root: Path | None, info: DatasetInfo):
    if root is not None and (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    if root is None or not (root / "wnids.txt").is_file():
        raise _missing(info, root, "no wnids.txt")
    classes = sorted(line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip())
    index = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for c in classes:
        for p in sorted((root / "train" / c / "images").glob("*")):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(p)
                labels.append(index[c])
    if not files:
        raise _missing(info, root, "no train/<wnid>/images/*.JPEG")
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise _missing(info, root, "no val/val_annotations.txt")
    vfiles, vlabels = [], []
    for n, line in enumerate(ann.read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            raise SpikeSearchError(f"{ann}:{n}: expected 'val_k.JPEG<TAB>wnid<TAB>...' with a wnid from wnids.txt")
        vfiles.append(root / "val" / "images" / parts[0])
        vlabels.append(index[parts[1]])
    return FileImageSet(files, labels, classes, info.size), FileImageSet(vfiles, vlabels, classes, info.size)


CIFAR10_STATS = ((0.4913, 0.4821, 0.4465), (0.2470, 0.2434, 0.2615))
CIFAR100_STATS = ((0.5071, 0.4867, 0.4408), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FMNIST_STATS = ((0.2860,), (0.3530,))
EVENT_STATS = ((0.0, 0.0), (1.0, 1.0))


def _event_reader(read: Callable) -> Callable:
    def reader(root: Path | None, info: DatasetInfo, frames: int, split_by: str):
        if root is None:
            raise _missing(info, None, "no --data_dir given")
        try:
            return read(root, info.size, frames, split_by)
        except FileNotFoundError as e:
            raise _missing(info, root, str(e)) from None
    return reader

for _info in (
    DatasetInfo("fmnist-small", 10, 1, 28, *FMNIST_STATS, 2, True,
                "bundled inside the package (spikesearch/data/bundled/fashion_mnist_small.npz)", _read_bundled),
    DatasetInfo("fashion-mnist", 10, 1, 28, *FMNIST_STATS, 2, True,
                "DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (apt-get install dataset-fashion-mnist)",
                _read_fashion_mnist, "/usr/share/datasets/fashion-mnist"),
    DatasetInfo("cifar10", 10, 3, 32, *CIFAR10_STATS, 4, True,
                "DIR[/cifar-10-batches-py]/{data_batch_1..5,test_batch,batches.meta} (CIFAR-10 python version)",
                _read_cifar),
    DatasetInfo("cifar100", 100, 3, 32, *CIFAR100_STATS, 4, True,
                "DIR[/cifar-100-python]/{train,test,meta} (CIFAR-100 python version)", _read_cifar),
    DatasetInfo("tinyimagenet", 200, 3, 64, *IMAGENET_STATS, 8, True,
                "DIR[/tiny-imagenet-200]/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
                "val/val_annotations.txt}", _read_tiny_imagenet),
    DatasetInfo("imagenet", 1000, 3, 224, *IMAGENET_STATS, 0, True,
                "DIR/{train,val}/<class>/*.JPEG (ImageFolder layout; classes = sorted folder names)",
                _read_image_folders),
    # event cameras: counts per polarity, no normalisation, no crop or flip (a flip turns left-hand gestures right)
    DatasetInfo("nmnist", 10, 2, 34, *EVENT_STATS, 0, False, "DIR/{Train,Test}/<digit>/*.bin (N-MNIST, ATIS .bin)",
                _event_reader(events.nmnist), events=True),
    DatasetInfo("dvsgesture", 11, 2, 128, *EVENT_STATS, 0, False,
                "DIR[/DvsGesture]/{trials_to_train.txt, trials_to_test.txt, userNN_<lighting>.aedat, "
                "userNN_<lighting>_labels.csv} (original DVS128 Gesture release, AEDAT 3.1)",
                _event_reader(events.dvsgesture), events=True),
    DatasetInfo("cifar10dvs", 10, 2, 128, *EVENT_STATS, 0, False,
                "DIR/<class>/*.aedat for the 10 CIFAR-10 classes (original CIFAR10-DVS release, AEDAT 2)",
                _event_reader(events.cifar10dvs), events=True),
):
    DATASETS.add(_info.name, _info)


def dataset_info(name: str) -> DatasetInfo:
    return DATASETS.get(name)


def check_split(info: DatasetInfo, split: str, data) -> None:
    """What a reader returned is what the models expect: uint8 ``[N, C, H, W]`` images of the dataset's shape,
    one label per sample, every label a class index. Checked before any run folder opens."""
    labels = torch.as_tensor(data.labels)
    if isinstance(data, ImageSet):
        x = data.images
        expected = (info.channels, info.size, info.size)
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise SpikeSearchError(f"{info.name} {split}: images are {x.dtype} {tuple(x.shape)}, expected uint8 "
                                   f"N x {' x '.join(map(str, expected))}")
        if len(x) != len(labels):
            raise SpikeSearchError(f"{info.name} {split}: {len(x)} images but {len(labels)} labels")
    if len(labels) and (labels.dtype.is_floating_point or int(labels.min()) < 0 or int(labels.max()) >= info.num_classes):
        raise SpikeSearchError(f"{info.name} {split}: labels span {labels.min().item()}..{labels.max().item()}, "
                               f"but the {info.num_classes} classes are 0..{info.num_classes - 1}")


def load_dataset(name: str, root: str | Path | None = None, frames: int | None = None, split_by: str = "number"):
    """Return ``(train, test, info)``. ``root`` defaults to the dataset's standard path, if it has one.
    Event datasets are binned into ``frames`` frames per sample (see ``events.to_frames``)."""
    info = dataset_info(name)
    root = Path(root) if root else (Path(info.default_root) if info.default_root else None)
    if root is not None and not root.exists():
        raise _missing(info, None, f"{root} does not exist")
    if not info.events:
        train, test = info.reader(root, info)
    elif frames is None:
        raise SpikeSearchError(f"{name} is an event dataset: it needs the number of frames per sample")
    else:
        train, test = info.reader(root, info, frames, split_by)
    check_split(info, "train", train)
    check_split(info, "test", test)
    return train, test, info


def hold_out(data, fraction: float, seed: int):
    """Split a training set into ``(train, val)``: a seeded random ``fraction`` of it held out as the
    validation split that chooses a "best" checkpoint, so no reported figure is selected on the test set.
    ``fraction`` 0 holds nothing out (``val`` is None: the last epoch is the only checkpoint reported)."""
    if not 0 <= fraction < 1:
        raise SpikeSearchError(f"the validation fraction must be in [0, 1), got {fraction}")
    n_val = round(fraction * len(data))
    if fraction == 0:
        return data, None
    if not 0 < n_val < len(data):
        raise SpikeSearchError(f"a validation fraction of {fraction} of {len(data)} training images leaves "
                               f"{n_val} for validation and {len(data) - n_val} for training: both need at least one")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    # sorted: file- and event-backed sets then read in their natural order
    return data.select(sorted(order[n_val:])), data.select(sorted(order[:n_val]))
