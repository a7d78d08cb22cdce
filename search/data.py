"""Datasets held in memory as tensors, with train / validation / test splits and batch augmentation.

Every dataset here fits in memory, so images stay as one tensor and batches are cut, augmented
(random crop with padding, horizontal flip) and normalised on the training device in a few vectorised
ops. That is several times faster than per-image PIL transforms on a 2-core machine and the same code
runs on CUDA. The validation split is carved from the training set with a fixed split seed, so every
trial and strategy selects on the same images; the test set is only for reporting.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from search.errors import SearchError
from search.layout import to_format

SPLIT_SEED = 0


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset looks like to a model, before anything is loaded."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    default_model: str
    augment: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_fraction: float = 0.1  # of the training images, held out for every selection


DATASETS: dict[str, DatasetInfo] = {
    # digits: 30% of its 1,438 training images (431) for validation; 10% (144) could not tell trials apart.
    "digits": DatasetInfo("digits", (1, 8, 8), 10, "resnet_tiny", False, (0.3,), (0.4,), val_fraction=0.3),
    "cifar10": DatasetInfo("cifar10", (3, 32, 32), 10, "resnet18", True, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": DatasetInfo("cifar100", (3, 32, 32), 100, "resnet18", True, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": DatasetInfo("tinyimagenet", (3, 64, 64), 200, "resnet18", True, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise SearchError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}") from None


@dataclass(frozen=True)
class Split:
    """Images (N, C, H, W; uint8 0-255 or float 0-1) and integer labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    info: DatasetInfo
    train: Split
    val: Split
    test: Split


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
    val_fraction: float | None = None,
) -> Dataset:
    """Load ``name`` with its train / validation / test splits (validation carved from train, by
    default ``DatasetInfo.val_fraction`` of it)."""
    info = dataset_info(name)
    val_fraction = info.val_fraction if val_fraction is None else val_fraction
    if not 0 < val_fraction < 1:
        raise SearchError(f"bad value {val_fraction} for val_fraction: expected a number in (0, 1)")
    root = data_root(data_dir)
    if name == "digits":
        train, test = _load_digits()
    elif name in ("cifar10", "cifar100"):
        train, test = _load_cifar(name, root, download)
    else:
        train, test = _load_tinyimagenet(root)
    train, val = _carve(train, val_fraction)
    return Dataset(info, train, val, test)


def data_root(data_dir: str | os.PathLike[str] | None) -> Path:
    """The folder datasets are read from: ``data_dir``, else ``$SEARCH_DATA_DIR``, else ``./data``."""
    return Path(data_dir or os.environ.get("SEARCH_DATA_DIR", "data")).expanduser()


def download_target(name: str, data_dir: str | os.PathLike[str] | None, download: bool) -> Path | None:
    """The folder :func:`load_dataset` would download ``name`` into, or None when it would not download
    (so a dry run can say so instead of downloading)."""
    if not download or name not in ("cifar10", "cifar100"):
        return None
    folder = _cifar_folder(name, data_root(data_dir))
    return None if folder.is_dir() else folder.parent


def _carve(split: Split, fraction: float) -> tuple[Split, Split]:
    """Stratified, seeded split of ``split`` into (rest, held-out fraction)."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    held: list[torch.Tensor] = []
    for label in torch.unique(split.labels):
        members = torch.nonzero(split.labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        held.append(members[: max(1, int(round(len(members) * fraction)))])
    held_idx = torch.cat(held).sort().values
    keep = torch.ones(len(split), dtype=torch.bool)
    keep[held_idx] = False
    return Split(split.images[keep], split.labels[keep]), Split(split.images[held_idx], split.labels[held_idx])


def _load_digits() -> tuple[Split, Split]:
    """scikit-learn's digits, read from the file it ships: ``import sklearn`` pulls in scipy and takes
    1.5-2.5 s, paid by the driver and by every trial process of a study."""
    table = np.loadtxt(_digits_file(), delimiter=",", dtype=np.float32)
    images = torch.from_numpy(table[:, :64] / 16.0).reshape(-1, 1, 8, 8)
    full = Split(images, torch.from_numpy(table[:, 64].astype(np.int64)))
    return _carve(full, 0.2)


def _digits_file() -> Path:
    """``sklearn/datasets/data/digits.csv.gz``, located without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise SearchError("the digits dataset needs scikit-learn: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise SearchError(f"scikit-learn's digits file is missing: {path} (reinstall scikit-learn)")
    return path


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batch files that refuses anything but numpy arrays and plain containers."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise SearchError(f"missing data file {path}")
    try:
        with open(path, "rb") as fh:
            batch = _ArrayUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise ValueError(f"data of shape {data.shape} with {len(labels)} labels, expected N x 3072")
    except SearchError:
        raise
    except Exception as err:  # truncated or foreign files fail in many ways
        raise SearchError(f"corrupt data file {path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return data, labels


def _cifar_folder(name: str, root: Path) -> Path:
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    return root if root.name == folder else root / folder


def _load_cifar(name: str, root: Path, download: bool) -> tuple[Split, Split]:
    folder = _cifar_folder(name, root)
    if not folder.is_dir() and download:
        _download_cifar(name, folder.parent)
    if not folder.is_dir():
        expected = "data_batch_1..5 and test_batch" if name == "cifar10" else "train and test"
        raise SearchError(f"{name} not found: expected {folder} holding {expected} (set --data-dir, or --download)")
    if name == "cifar10":
        parts = [_read_batch(folder / f"data_batch_{i}", b"labels") for i in range(1, 6)]
        train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        test = _read_batch(folder / "test_batch", b"labels")
    else:
        train = _read_batch(folder / "train", b"fine_labels")
        test = _read_batch(folder / "test", b"fine_labels")
    return _to_split(*train), _to_split(*test)


def _to_split(data: np.ndarray, labels: np.ndarray) -> Split:
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return Split(images, torch.from_numpy(labels))


def _download_cifar(name: str, root: Path) -> None:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except Exception as err:  # no network, or a partial download
        raise SearchError(f"could not download {name} into {root}: {str(err).splitlines()[0]}") from None


def _load_tinyimagenet(root: Path) -> tuple[Split, Split]:
    from PIL import Image

    folder = root if root.name == "tiny-imagenet-200" else root / "tiny-imagenet-200"
    wnids_file = folder / "wnids.txt"
    annotations = folder / "val" / "val_annotations.txt"
    if not wnids_file.is_file() or not annotations.is_file():
        raise SearchError(
            f"tinyimagenet not found: expected {folder} holding wnids.txt, train/<wnid>/images/*.JPEG and "
            "val/val_annotations.txt (set --data-dir)"
        )
    wnids = wnids_file.read_text().split()
    index = {w: i for i, w in enumerate(wnids)}

    def read(paths: list[Path], labels: list[int]) -> Split:
        images = np.empty((len(paths), 64, 64, 3), dtype=np.uint8)
        for i, path in enumerate(paths):
            try:
                with Image.open(path) as img:
                    images[i] = np.asarray(img.convert("RGB").resize((64, 64)))
            except (OSError, ValueError) as err:
                raise SearchError(f"corrupt image {path}: {err}") from None
        return Split(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels))

    train_paths, train_labels = [], []
    for wnid in wnids:
        for path in sorted((folder / "train" / wnid / "images").glob("*.JPEG")):
            train_paths.append(path)
            train_labels.append(index[wnid])
    val_paths, val_labels = [], []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in index:
            val_paths.append(folder / "val" / "images" / fields[0])
            val_labels.append(index[fields[1]])
    if not train_paths:
        raise SearchError(f"tinyimagenet: no training images under {folder / 'train'}")
    # The official test split has no labels, so the labelled validation set serves as test.
    return read(train_paths, train_labels), read(val_paths, val_labels)


# -- batches ---------------------------------------------------------------------------------------


class Loader:
    """Batches of one split on ``device``: normalised, augmented when ``augment`` is set, in
    ``memory_format`` (:mod:`search.layout`: training asks for channels-last where that is faster).

    Iterating draws a new shuffle (and new crops) from a generator seeded with ``seed`` and the epoch,
    so runs are repeatable.
    """

    def __init__(
        self,
        split: Split,
        info: DatasetInfo,
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        augment: bool = False,
        seed: int = 0,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment and info.augment
        self.seed = seed
        self.epoch = 0
        scale = 255.0 if split.images.dtype == torch.uint8 else 1.0
        self.mean = torch.tensor(info.mean, device=device).view(1, -1, 1, 1) * scale
        self.std = torch.tensor(info.std, device=device).view(1, -1, 1, 1) * scale
        self.memory_format = memory_format

    def __len__(self) -> int:
        return (len(self.labels) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        count = len(self.labels)
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        order = order.to(self.labels.device)
        for start in range(0, count, self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.images[idx].float()
            if self.augment:
                x = _crop_and_flip(x, generator)
            yield (to_format(x, self.memory_format) - self.mean) / self.std, self.labels[idx]  # the result keeps x's format


def _crop_and_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding by ``pad``, and random horizontal flip, per image."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])[:, None, :, None]
    cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]
