"""File-backed image data sets, read through torchvision's own dataset classes.

Using torchvision's classes (not our own parsers) means the files users already have from any
torchvision project work as they are, with torchvision's integrity checks, and ``download: true``
fetches exactly what those classes expect.

Where the files go. Each data set has its own folder under the data root
(``DatasetContext.root``: ``harness run --data-root``, by default ``data/`` in the harness home),
so that data sets whose files sit loose in torchvision's root (SVHN, USPS) cannot collide.
Inside it, torchvision's layout::

    <data root>/mnist/MNIST/raw/          train-images-idx3-ubyte  train-labels-idx1-ubyte
                                          t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte
    <data root>/fashion_mnist/FashionMNIST/raw/   the same four file names
    <data root>/cifar10/cifar-10-batches-py/      data_batch_1 .. data_batch_5  test_batch
                                                  batches.meta
    <data root>/cifar100/cifar-100-python/        train  test  meta
    <data root>/svhn/                             train_32x32.mat  test_32x32.mat
    <data root>/usps/                             usps.bz2  usps.t.bz2
    <data root>/stl10/stl10_binary/               train_X.bin  train_y.bin  test_X.bin
                                                  test_y.bin  unlabeled_X.bin

(the unpacked contents of the official archives). CIFAR, SVHN and STL-10 files are checked
against torchvision's md5 sums; STL-10's check includes ``unlabeled_X.bin`` although only the
labelled ``train``/``test`` splits are used. With ``download: true`` torchvision fetches what is
missing into these folders.

The images are held in memory as float32 N x C x H x W in [0, 1], converted from the arrays the
dataset objects hold (not by iterating PIL images, which takes minutes for 50k images). The
``limit`` option keeps the first N training and N // 5 test images, for quick runs.
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness.api import DataBundle, DatasetContext, Split, UserError, hookimpl

from .variants import apply_variants

__all__ = ["harness_register_datasets", "SPECS", "dataset_root"]

Arrays = tuple[np.ndarray, np.ndarray]  # uint8 images N x C x H x W, int64 labels N


@dataclass(frozen=True)
class Spec:
    """One file-backed data set: where its files live and how to read them."""

    name: str
    title: str
    folder: str  # under the data root: torchvision's ``root`` for this data set
    subdir: str  # where torchvision looks for the files inside ``root`` ("" for root itself)
    files: tuple[str, ...]  # what torchvision needs there
    archive: str  # what the files come from, for the hint
    num_classes: int
    load: Callable[[str, bool], tuple[Arrays, Arrays]]


def _mnist_like(class_name: str):
    def load(root: str, download: bool) -> tuple[Arrays, Arrays]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        out = []
        for train in (True, False):
            ds = cls(root, train=train, download=download)
            out.append((ds.data.numpy()[:, None], ds.targets.numpy()))
        return out[0], out[1]
    return load


def _cifar(class_name: str):
    def load(root: str, download: bool) -> tuple[Arrays, Arrays]:
        import torchvision.datasets as tvd

        cls = getattr(tvd, class_name)
        out = []
        for train in (True, False):
            ds = cls(root, train=train, download=download)
            out.append((ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets)))  # HWC -> CHW
        return out[0], out[1]
    return load


def _load_svhn(root: str, download: bool) -> tuple[Arrays, Arrays]:
    from torchvision.datasets import SVHN

    out = []
    for split in ("train", "test"):
        ds = SVHN(root, split=split, download=download)  # labels already 0..9 (10 -> 0)
        out.append((ds.data, ds.labels))
    return out[0], out[1]


def _load_usps(root: str, download: bool) -> tuple[Arrays, Arrays]:
    from torchvision.datasets import USPS

    out = []
    for train in (True, False):
        ds = USPS(root, train=train, download=download)
        out.append((ds.data[:, None], np.asarray(ds.targets)))
    return out[0], out[1]


def _load_stl10(root: str, download: bool) -> tuple[Arrays, Arrays]:
    from torchvision.datasets import STL10

    out = []
    for split in ("train", "test"):
        ds = STL10(root, split=split, download=download)
        out.append((ds.data, ds.labels))
    return out[0], out[1]


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")

SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("mnist", "MNIST", "mnist", "MNIST/raw", _MNIST_FILES,
         "the four .gz files of yann.lecun.com/exdb/mnist, unpacked", 10, _mnist_like("MNIST")),
    Spec("fashion_mnist", "Fashion-MNIST", "fashion_mnist", "FashionMNIST/raw", _MNIST_FILES,
         "the four .gz files of Fashion-MNIST, unpacked", 10, _mnist_like("FashionMNIST")),
    Spec("cifar10", "CIFAR-10", "cifar10", "cifar-10-batches-py",
         tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
         "cifar-10-python.tar.gz, unpacked", 10, _cifar("CIFAR10")),
    Spec("cifar100", "CIFAR-100", "cifar100", "cifar-100-python", ("train", "test", "meta"),
         "cifar-100-python.tar.gz, unpacked", 100, _cifar("CIFAR100")),
    Spec("svhn", "SVHN", "svhn", "", ("train_32x32.mat", "test_32x32.mat"),
         "the cropped-digits .mat files of ufldl.stanford.edu/housenumbers", 10, _load_svhn),
    Spec("usps", "USPS", "usps", "", ("usps.bz2", "usps.t.bz2"),
         "the libsvm multiclass files, still bz2-compressed", 10, _load_usps),
    Spec("stl10", "STL-10", "stl10", "stl10_binary",
         ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin"),
         "stl10_binary.tar.gz, unpacked", 10, _load_stl10),
)}


def dataset_root(data_root: Path | str, name: str) -> Path:
    """The folder handed to torchvision as ``root`` for data set ``name``."""
    return Path(data_root) / SPECS[name].folder


def _file_error(spec: Spec, root: Path, download: bool, exc: Exception) -> UserError:
    where = root / spec.subdir if spec.subdir else root
    layout = f"{', '.join(spec.files)} from {spec.archive}"
    missing = [f for f in spec.files if not (where / f).is_file()]
    if download:
        return UserError(f"dataset {spec.name!r}: could not download into {where}: "
                         f"{type(exc).__name__}: {exc}", key="dataset",
                         hint=f"check the network, or put the files there by hand ({layout})")
    if missing:
        partly = f" (missing: {', '.join(missing)})" if len(missing) < len(spec.files) else ""
        return UserError(f"dataset {spec.name!r}: files not found under {where}{partly}", key="dataset",
                         hint=f"put the files there (torchvision layout: {layout}) or set "
                              "`download: true` in the suite's defaults / pass --download")
    return UserError(f"dataset {spec.name!r}: the files under {where} were refused by torchvision: "
                     f"{exc}", key="dataset",
                     hint=f"they are probably incomplete or not the originals (md5 check); replace "
                          f"them ({layout}) or set `download: true` to fetch them again")


# A few hundred MB for CIFAR: keep only the last two data sets a process used.
@functools.lru_cache(maxsize=2)
def _arrays(name: str, root: str, download: bool) -> tuple[Arrays, Arrays]:
    spec = SPECS[name]
    try:
        (xtr, ytr), (xte, yte) = spec.load(root, download)
    except (RuntimeError, OSError) as exc:  # torchvision's "not found or corrupted", I/O, network
        raise _file_error(spec, Path(root), download, exc) from None
    return ((np.ascontiguousarray(xtr, dtype=np.uint8), np.asarray(ytr, dtype=np.int64)),
            (np.ascontiguousarray(xte, dtype=np.uint8), np.asarray(yte, dtype=np.int64)))


def _split(x: np.ndarray, y: np.ndarray, n: int | None) -> Split:
    # .to(float32) and torch.tensor copy: the cached arrays are never handed out
    x, y = x[:n], y[:n]
    return Split(torch.from_numpy(x).to(torch.float32).div_(255.0), torch.tensor(y, dtype=torch.int64))


def _build(spec: Spec, ctx: DatasetContext, *, limit, motion_blur, rotate, invert_labels) -> DataBundle:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral)
                              or limit < 1):
        raise UserError(f"limit must be a positive whole number or null, got {limit!r}", key="limit",
                        hint="e.g. limit: 1000 keeps the first 1000 training and 200 test images")
    root = dataset_root(ctx.root, spec.name)
    (xtr, ytr), (xte, yte) = _arrays(spec.name, str(root), bool(ctx.download))
    n_train, n_test = (None, None) if limit is None else (int(limit), max(1, int(limit) // 5))
    train, test = _split(xtr, ytr, n_train), _split(xte, yte, n_test)
    name = spec.name if limit is None else f"{spec.name}+first{int(limit)}"
    c, h, w = train.x.shape[1:]
    bundle = DataBundle(train=train, test=test, num_classes=spec.num_classes, name=name,
                        description=f"{spec.title} via torchvision, {len(train)} train / {len(test)} "
                                    f"test images of {c}x{h}x{w}, {spec.num_classes} classes")
    return apply_variants(bundle, motion_blur=motion_blur, rotate=rotate, invert_labels=invert_labels)


def _factory(spec: Spec):
    def factory(ctx: DatasetContext, *, limit: int | None = None, motion_blur: int = 0,
                rotate: float = 0.0, invert_labels: bool = False) -> DataBundle:
        return _build(spec, ctx, limit=limit, motion_blur=motion_blur, rotate=rotate,
                      invert_labels=invert_labels)

    where = f"{spec.folder}/{spec.subdir}" if spec.subdir else spec.folder
    factory.__name__ = factory.__qualname__ = spec.name
    factory.__doc__ = (f"{spec.title} through torchvision, files under <data root>/{where}.\n\n"
                       "``limit`` keeps the first N training and N // 5 test images.")
    return factory


@hookimpl
def harness_register_datasets(register):
    for spec in SPECS.values():
        where = f"{spec.folder}/{spec.subdir}" if spec.subdir else spec.folder
        register(spec.name, _factory(spec),
                 f"{spec.title} via torchvision (files under <data root>/{where}; download: true fetches)")
