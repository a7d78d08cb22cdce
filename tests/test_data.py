"""Datasets: splits, the real CIFAR-10 subset, and clear errors for missing or corrupt files."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from search.data import Loader, dataset_info, load_dataset
from search.errors import SearchError


def test_digits_splits_are_disjoint_fixed_and_stratified() -> None:
    a, b = load_dataset("digits"), load_dataset("digits")
    assert (len(a.train), len(a.val), len(a.test)) == (1004, 434, 359)  # validation: 30% of the 1,438 training images
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.test.labels, b.test.labels)
    rows = lambda s: {tuple(img.flatten().tolist()) for img in s.images}  # noqa: E731
    assert not rows(a.val) & rows(a.test)
    assert set(a.val.labels.tolist()) == set(range(10))
    assert a.train.images.shape[1:] == (1, 8, 8) and float(a.train.images.max()) <= 1.0


def test_cifar10_subset_loads_with_validation_carved_from_train(cifar_dir: Path) -> None:
    data = load_dataset("cifar10", cifar_dir)
    assert (len(data.train), len(data.val), len(data.test)) == (9000, 1000, 2000)
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (3, 32, 32)
    assert torch.bincount(data.val.labels).tolist() == [100] * 10
    assert torch.bincount(data.test.labels).tolist() == [200] * 10


def test_cifar10_folder_itself_is_accepted(cifar_dir: Path) -> None:
    assert len(load_dataset("cifar10", cifar_dir / "cifar-10-batches-py").test) == 2000


def test_loader_normalises_augments_and_repeats(cifar_dir: Path) -> None:
    data = load_dataset("cifar10", cifar_dir)
    info = dataset_info("cifar10")
    first = next(iter(Loader(data.train, info, 64, torch.device("cpu"), shuffle=True, augment=True, seed=3)))
    again = next(iter(Loader(data.train, info, 64, torch.device("cpu"), shuffle=True, augment=True, seed=3)))
    plain = next(iter(Loader(data.test, info, 256, torch.device("cpu"))))
    assert torch.equal(first[0], again[0]) and first[0].shape == (64, 3, 32, 32)
    assert abs(float(plain[0].mean())) < 0.3 and 0.7 < float(plain[0].std()) < 1.3


def test_crop_and_flip_moves_pixels_but_keeps_content() -> None:
    from search.data import _crop_and_flip

    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    out = _crop_and_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    for i in range(2):
        kept = out[i][out[i] > 0]
        assert set(kept.tolist()) <= set(x[i].flatten().tolist())  # only original pixels or zero padding


def test_missing_cifar_dir_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SearchError, match=r"cifar10 not found: expected .*cifar-10-batches-py holding data_batch_1..5"):
        load_dataset("cifar10", tmp_path)


def test_truncated_cifar_batch_is_a_corrupt_file_error(tmp_path: Path, cifar_dir: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copytree(cifar_dir / "cifar-10-batches-py", folder)
    (folder / "data_batch_3").chmod(0o644)
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(SearchError, match="corrupt data file .*data_batch_3"):
        load_dataset("cifar10", tmp_path)


def test_cifar_loader_refuses_arbitrary_pickled_objects(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": Path("/"), b"labels": [0]}))
    with pytest.raises(SearchError, match="refusing to load"):
        load_dataset("cifar10", tmp_path)


def test_missing_data_dir_through_the_cli_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "search.linearize", "--strategy", "tests.strategies_core:KeepAll", "--dataset", "cifar10",
         "--data-dir", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "cifar10 not found" in proc.stderr, proc.stderr


def test_unknown_dataset_lists_the_accepted_ones() -> None:
    with pytest.raises(SearchError, match="accepted: digits, cifar10, cifar100, tinyimagenet"):
        load_dataset("imagenet")


def test_cifar100_layout_loads_fine_labels(tmp_path: Path) -> None:
    import numpy as np

    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, count in (("train", 400), ("test", 100)):
        batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8), b"fine_labels": [i % 100 for i in range(count)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    data = load_dataset("cifar100", tmp_path)
    assert (len(data.train) + len(data.val), len(data.test)) == (400, 100)
    assert data.info.num_classes == 100 and int(data.train.labels.max()) <= 99


def test_tinyimagenet_folder_layout_loads(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    annotations = []
    for c, wnid in enumerate(wnids):
        images = root / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (64, 64), (40 * c, 10 * i, 100)).save(images / f"{wnid}_{i}.JPEG")
        Image.new("RGB", (64, 64), (40 * c, 0, 100)).save(root / "val" / "images" / f"val_{c}.JPEG")
        annotations.append(f"val_{c}.JPEG\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    data = load_dataset("tinyimagenet", tmp_path)
    assert data.train.images.shape[1:] == (3, 64, 64)
    assert len(data.train) + len(data.val) == 20 and data.test.labels.tolist() == [0, 1]


def test_missing_tinyimagenet_names_the_expected_layout(tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="tinyimagenet not found: expected .*wnids.txt"):
        load_dataset("tinyimagenet", tmp_path)
