"""The built-in data sets: the 12-bit task's rule, the fixed splits, the variants, and loading
every torchvision data set from small files written here in its real on-disk format."""

from __future__ import annotations

import bz2
import inspect
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from harness.api import DataBundle, DatasetContext, Split, UserError
from plugins.datasets import offline, torchvision_sets
from plugins.datasets.variants import apply_variants


def _factories(module) -> dict:
    found = {}

    def reg(name, obj, description=None):
        assert name not in found
        assert description, f"{name} registered without a description"
        found[name] = obj

    module.harness_register_datasets(register=reg)
    return found


OFFLINE = _factories(offline)
TV = _factories(torchvision_sets)


@pytest.fixture
def ctx(tmp_path):
    return DatasetContext(root=tmp_path, download=False)


def test_registered_names_and_options():
    assert set(OFFLINE) == {"ib12", "ib12_flipped", "digits", "mnist5k", "mnist5k_blur"}
    assert set(TV) == {"mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "usps", "stl10"}
    # the core refuses unknown options by signature: blur and rotate make no sense on bit vectors
    assert set(inspect.signature(OFFLINE["ib12"]).parameters) == {
        "ctx", "split", "split_seed", "invert_labels"}
    assert set(inspect.signature(OFFLINE["ib12_flipped"]).parameters) == {"ctx", "split", "split_seed"}
    for name in ("digits", "mnist5k", "mnist5k_blur"):
        assert {"motion_blur", "rotate", "invert_labels", "test_fraction"} <= set(
            inspect.signature(OFFLINE[name]).parameters)
    for factory in TV.values():
        params = inspect.signature(factory).parameters
        assert set(params) == {"ctx", "limit", "motion_blur", "rotate", "invert_labels"}
        assert all(p.kind is p.KEYWORD_ONLY for n, p in params.items() if n != "ctx")


# ---------------------------------------------------------------------------------------------
# ib12
# ---------------------------------------------------------------------------------------------
def test_icosahedron_tables_are_consistent():
    nb = offline.ICOSAHEDRON_NEIGHBOURS
    assert all(len(set(v)) == 5 and i not in v for i, v in nb.items())
    assert all(i in nb[j] for i, v in nb.items() for j in v)  # symmetric
    assert sorted(v for pair in offline.ANTIPODAL_PAIRS for v in pair) == list(range(12))
    assert all(b not in nb[a] for a, b in offline.ANTIPODAL_PAIRS)
    # a vertex is adjacent to every vertex except itself and its antipode
    for a, b in offline.ANTIPODAL_PAIRS:
        assert set(nb[a]) | set(nb[b]) | {a, b} == set(range(12))


def test_ib12_rule_and_paper_split(ctx):
    b = OFFLINE["ib12"](ctx)
    assert isinstance(b, DataBundle) and b.name == "ib12" and b.description
    assert (len(b.train), len(b.test)) == (3277, 819)
    assert b.num_classes == 2 and b.input_shape == (12,)
    x = torch.cat([b.train.x, b.test.x])
    y = torch.cat([b.train.y, b.test.y])
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert int(y.sum()) == 2118
    assert b.test.y.float().mean().item() == pytest.approx(0.836, abs=0.005)  # "84% ones"
    # unshuffled: row i is i in binary, most significant bit first
    weights = 2 ** torch.arange(11, -1, -1)
    assert torch.equal((x * weights).sum(1).long(), torch.arange(4096))
    assert b.train.x[5].tolist() == [0] * 9 + [1, 0, 1]


@pytest.mark.parametrize("index, label", [
    # vertex 0 and its five neighbours: k=6, a=5+5=10, c=0 -> 684-396+240 = 528 > 429.5
    (2048 + 1024 + 256 + 64 + 2 + 1, 1),
    # the three antipodal pairs (0,9) (1,7) (2,5): k=6, a=6 (0-1 0-5 1-2 2-9 5-7 7-9), c=3
    # -> 288+144-36 = 396
    (2048 + 1024 + 512 + 64 + 16 + 4, 0),
    (4095, 1),  # all ones: k=12, a=30, c=6 -> 1368-1584+720-72 = 432
    (0, 0),
    (2048 + 1024 + 256, 0),  # triangle 0-1-3: k=3, a=3 -> 342-99+72 = 315
])
def test_ib12_hand_checked_patterns(ctx, index, label):
    x, y = offline.ib12_arrays()
    assert int(y[index]) == label
    assert int(offline.ib12_label(x[index:index + 1])[0]) == label


def test_ib12_flipped_is_exact_inversion(ctx):
    a, b = OFFLINE["ib12"](ctx), OFFLINE["ib12_flipped"](ctx)
    assert b.name == "ib12_flipped" and "invert" in b.description
    for sa, sb in ((a.train, b.train), (a.test, b.test)):
        assert torch.equal(sa.x, sb.x)
        assert torch.equal(sb.y, 1 - sa.y)
    assert torch.equal(OFFLINE["ib12"](ctx, invert_labels=True).train.y, b.train.y)
    s = OFFLINE["ib12_flipped"](ctx, split="shuffled", split_seed=3)
    t = OFFLINE["ib12"](ctx, split="shuffled", split_seed=3)
    assert torch.equal(s.test.x, t.test.x) and torch.equal(s.test.y, 1 - t.test.y)


def test_ib12_shuffled_split(ctx):
    b = OFFLINE["ib12"](ctx, split="shuffled")
    assert b.name == "ib12+shuffled0"
    assert (len(b.train), len(b.test)) == (3277, 819)
    weights = 2 ** torch.arange(11, -1, -1)
    rows = torch.cat([(b.train.x * weights).sum(1), (b.test.x * weights).sum(1)]).long()
    assert torch.equal(rows.sort().values, torch.arange(4096))  # a partition of all patterns
    assert b.test.y.float().mean().item() == pytest.approx(2118 / 4096, abs=1e-3)  # stratified
    again = OFFLINE["ib12"](ctx, split="shuffled", split_seed=0)
    other = OFFLINE["ib12"](ctx, split="shuffled", split_seed=1)
    assert again.fingerprint() == b.fingerprint() != other.fingerprint()
    with pytest.raises(UserError) as err:
        OFFLINE["ib12"](ctx, split="random")
    assert err.value.key == "split" and "shuffled" in err.value.hint


def test_determinism_and_fresh_tensors(ctx):
    for name in ("ib12", "ib12_flipped", "digits", "mnist5k"):
        a, b = OFFLINE[name](ctx), OFFLINE[name](ctx)
        assert a.fingerprint() == b.fingerprint()
        assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
        a.train.x.add_(1.0)  # callers may modify or move what they get ...
        a.test.y.zero_()
        c = OFFLINE[name](ctx)  # ... without touching the next caller's data
        assert c.fingerprint() == b.fingerprint()


def test_stratified_split_exact_sizes():
    y = np.array([0] * 7 + [1] * 3 + [2] * 5)
    train, test = offline.stratified_split(y, 6, seed=0)
    assert len(test) == 6 and len(train) == 9
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(15))
    assert np.bincount(y[test], minlength=3).tolist() in ([3, 1, 2], [2, 2, 2], [3, 2, 1])


# ---------------------------------------------------------------------------------------------
# digits, mnist5k
# ---------------------------------------------------------------------------------------------
def _check_images(b: DataBundle, shape, n_total):
    assert b.input_shape == shape and b.num_classes == 10
    assert len(b.train) + len(b.test) == n_total
    for s in (b.train, b.test):
        assert s.x.dtype == torch.float32 and s.y.dtype == torch.int64
        assert s.x.min() >= 0 and s.x.max() <= 1
        assert set(s.y.unique().tolist()) == set(range(10))


def test_digits(ctx):
    b = OFFLINE["digits"](ctx)
    _check_images(b, (1, 8, 8), 1797)
    assert len(b.test) == round(1797 * 0.2)
    assert b.train.x.max() == 1.0  # scaled from 0..16
    full = np.bincount(torch.cat([b.train.y, b.test.y]).numpy())
    test = np.bincount(b.test.y.numpy())
    assert np.all(np.abs(test - 0.2 * full) <= 1)  # stratified
    small = OFFLINE["digits"](ctx, test_fraction=0.5)
    assert len(small.test) == round(1797 * 0.5)
    with pytest.raises(UserError) as err:
        OFFLINE["digits"](ctx, test_fraction=1.5)
    assert err.value.key == "test_fraction"


def test_mnist5k(ctx):
    b = OFFLINE["mnist5k"](ctx)
    _check_images(b, (1, 28, 28), 5000)
    assert (len(b.train), len(b.test)) == (4000, 1000)
    assert np.bincount(b.test.y.numpy()).tolist() == [100] * 10
    assert np.bincount(b.train.y.numpy()).tolist() == [400] * 10
    assert b.train.x.max() == 1.0 and (b.train.x == 0).float().mean() > 0.5  # dark background


def test_mnist5k_blur(ctx):
    plain, blurred = OFFLINE["mnist5k"](ctx), OFFLINE["mnist5k_blur"](ctx)
    assert blurred.name == "mnist5k+blur5" and "blur" in blurred.description
    assert torch.equal(plain.train.y, blurred.train.y)
    assert not torch.equal(plain.train.x, blurred.train.x)
    # a horizontal blur of 5 keeps the total ink of every image with none in its outer 2 columns
    inner = plain.train.x[..., [0, 1, -2, -1]].sum((1, 2, 3)) == 0
    assert inner.float().mean() > 0.9
    assert torch.allclose(plain.train.x[inner].sum((1, 2, 3)), blurred.train.x[inner].sum((1, 2, 3)),
                          rtol=1e-4)
    # and smooths along rows only: horizontal differences shrink much more than vertical ones
    dx = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean().item()
    dy = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean().item()
    assert dx(blurred.train.x) / dx(plain.train.x) < dy(blurred.train.x) / dy(plain.train.x) - 0.1
    assert OFFLINE["mnist5k_blur"](ctx, motion_blur=3).name == "mnist5k+blur3"
    assert OFFLINE["mnist5k_blur"](ctx, motion_blur=0).fingerprint() == plain.fingerprint()


# ---------------------------------------------------------------------------------------------
# variants
# ---------------------------------------------------------------------------------------------
def _bundle(x, y, num_classes=10):
    return DataBundle(train=Split(x, y), test=Split(x.clone(), y.clone()), num_classes=num_classes,
                      name="toy", description="toy data")


def test_motion_blur_kernel():
    x = torch.zeros(1, 2, 9, 12)
    x[0, 0, 4, 6] = 1.0
    x[0, 1, 2, 3] = 3.0
    b = apply_variants(_bundle(x, torch.tensor([1])), motion_blur=3)
    out = b.train.x
    assert b.name == "toy+blur3" and "motion blur of 3 px" in b.description
    assert torch.allclose(out[0, 0, 4, 5:8], torch.full((3,), 1 / 3))  # a horizontal streak
    assert out[0, 0].count_nonzero() == 3
    assert torch.allclose(out[0, 1, 2, 2:5], torch.ones(3))  # per channel, no mixing
    assert out[0, 1].count_nonzero() == 3
    assert out.shape == x.shape


@pytest.mark.parametrize("k", [2, 4, 5])
def test_motion_blur_preserves_intensity_away_from_borders(k):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g)
    x[..., :k] = 0
    x[..., -k:] = 0
    out = apply_variants(_bundle(x, torch.zeros(6, dtype=torch.long)), motion_blur=k).train.x
    assert torch.allclose(out.sum((2, 3)), x.sum((2, 3)), rtol=1e-5)
    const = apply_variants(_bundle(torch.full((1, 1, 8, 20), 0.7), torch.zeros(1, dtype=torch.long)),
                           motion_blur=k).train.x
    assert torch.allclose(const[..., k:-k], torch.full_like(const[..., k:-k], 0.7))
    assert const.sum() < x.new_tensor(0.7 * 8 * 20)  # intensity leaves at the borders (zero padding)
    assert (const[..., -1] < 0.7).all()


def test_rotate():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 2, 10, 10, generator=g)
    y = torch.arange(4)
    once = apply_variants(_bundle(x, y), rotate=90)
    assert once.name == "toy+rot90"
    twice = apply_variants(once, rotate=90)
    half = apply_variants(_bundle(x, y), rotate=180.0)
    assert torch.allclose(twice.train.x, half.train.x, atol=1e-5)
    assert torch.allclose(half.train.x, torch.flip(x, dims=(-2, -1)), atol=1e-5)
    assert torch.equal(half.train.y, y)
    tilted = apply_variants(_bundle(x, y), rotate=15)
    assert not torch.allclose(tilted.train.x, x) and tilted.train.x.shape == x.shape


def test_invert_labels_and_noop():
    x, y = torch.rand(5, 1, 4, 4), torch.tensor([0, 1, 2, 9, 4])
    b = apply_variants(_bundle(x, y), invert_labels=True)
    assert b.train.y.tolist() == [9, 8, 7, 0, 5] and torch.equal(b.train.x, x)
    assert b.name == "toy+inverted"
    binary = apply_variants(_bundle(x, torch.tensor([0, 1, 1, 0, 1]), num_classes=2), invert_labels=True)
    assert binary.test.y.tolist() == [1, 0, 0, 1, 0]
    plain = _bundle(x, y)
    assert apply_variants(plain) is plain


def test_variant_options_through_factories(ctx):
    plain = OFFLINE["digits"](ctx)
    inv = OFFLINE["digits"](ctx, invert_labels=True)
    assert torch.equal(inv.test.y, 9 - plain.test.y) and inv.name == "digits+inverted"
    rot = OFFLINE["digits"](ctx, rotate=90, motion_blur=2)
    assert rot.name == "digits+blur2+rot90" and rot.input_shape == (1, 8, 8)


@pytest.mark.parametrize("options, key", [
    ({"motion_blur": -1}, "motion_blur"),
    ({"motion_blur": 2.5}, "motion_blur"),
    ({"motion_blur": True}, "motion_blur"),
    ({"rotate": "left"}, "rotate"),
    ({"rotate": float("nan")}, "rotate"),
    ({"invert_labels": "yes"}, "invert_labels"),
])
def test_variant_validation(options, key):
    with pytest.raises(UserError) as err:
        apply_variants(_bundle(torch.rand(2, 1, 4, 4), torch.tensor([0, 1])), **options)
    assert err.value.key == key and err.value.hint


def test_image_variants_refuse_feature_vectors(ctx):
    with pytest.raises(UserError) as err:
        apply_variants(OFFLINE["ib12"](ctx), motion_blur=3)
    assert err.value.key == "motion_blur" and "(12,)" in err.value.message


# ---------------------------------------------------------------------------------------------
# torchvision data sets, from files of the real format
# ---------------------------------------------------------------------------------------------
RNG = np.random.default_rng(0)


def _images(n, c, h, w):
    return RNG.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)


def _labels(n, num_classes):
    return RNG.integers(0, num_classes, size=n).astype(np.int64)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """The idx-ubyte format of MNIST: magic (0, 0, 0x08 = ubyte, ndim), big-endian dims, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">i4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes())


def _write_mnist_like(folder: Path):
    xtr, xte = _images(7, 1, 28, 28), _images(3, 1, 28, 28)
    ytr, yte = _labels(7, 10), _labels(3, 10)
    _write_idx(folder / "train-images-idx3-ubyte", xtr[:, 0])
    _write_idx(folder / "train-labels-idx1-ubyte", ytr)
    _write_idx(folder / "t10k-images-idx3-ubyte", xte[:, 0])
    _write_idx(folder / "t10k-labels-idx1-ubyte", yte)
    return xtr, ytr, xte, yte


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar10(folder: Path):
    """Python-pickle batches: ``data`` is N x 3072 uint8 (the R, G, B planes row by row)."""
    xtr, xte = _images(10, 3, 32, 32), _images(3, 3, 32, 32)
    ytr, yte = _labels(10, 10), _labels(3, 10)
    for i in range(5):
        part = slice(2 * i, 2 * i + 2)
        _pickle(folder / f"data_batch_{i + 1}", {"batch_label": f"training batch {i + 1} of 5",
                                                  "data": xtr[part].reshape(2, -1),
                                                  "labels": ytr[part].tolist()})
    _pickle(folder / "test_batch", {"batch_label": "testing batch 1 of 1",
                                    "data": xte.reshape(3, -1), "labels": yte.tolist()})
    _pickle(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)],
                                      "num_cases_per_batch": 2, "num_vis": 3072})
    return xtr, ytr, xte, yte


def _write_cifar100(folder: Path):
    xtr, xte = _images(6, 3, 32, 32), _images(3, 3, 32, 32)
    ytr, yte = _labels(6, 100), _labels(3, 100)
    for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        _pickle(folder / name, {"data": x.reshape(len(x), -1), "fine_labels": y.tolist(),
                                "coarse_labels": (y // 5).tolist()})
    _pickle(folder / "meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                              "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return xtr, ytr, xte, yte


def _write_svhn(folder: Path):
    """MATLAB files: X is H x W x C x N uint8, y is N x 1 with the digit 0 labelled 10."""
    folder.mkdir(parents=True, exist_ok=True)
    xtr, xte = _images(6, 3, 32, 32), _images(3, 3, 32, 32)
    ytr, yte = np.array([0, 1, 2, 9, 0, 5]), np.array([0, 7, 3])
    for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        scipy.io.savemat(folder / f"{name}_32x32.mat",
                         {"X": x.transpose(2, 3, 1, 0), "y": np.where(y == 0, 10, y)[:, None].astype(np.uint8)})
    return xtr, ytr, xte, yte


_USPS_LEVELS = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])  # exact in float32, so the round trip is exact


def _write_usps(folder: Path):
    """bz2-compressed libsvm lines: label 1..10, then index:value for all 256 pixels in [-1, 1]."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, n in (("usps.bz2", 6), ("usps.t.bz2", 3)):
        levels = RNG.integers(0, 5, size=(n, 256))
        y = _labels(n, 10)
        lines = [" ".join([str(label + 1)] + [f"{j + 1}:{_USPS_LEVELS[v]:.6f}" for j, v in enumerate(row)])
                 for label, row in zip(y, levels)]
        with bz2.open(folder / name, "wb") as f:
            f.write(("\n".join(lines) + "\n").encode())
        # torchvision maps v to uint8((v + 1) / 2 * 255), truncating: 0, 63, 127, 191, 255
        pixels = ((_USPS_LEVELS[levels].astype(np.float32) + 1) / 2 * 255).astype(np.uint8)
        out += [pixels.reshape(n, 1, 16, 16), y]
    return tuple(out)


def _write_stl10(folder: Path):
    """Raw uint8 binaries: images N x 3 x 96 x 96 stored column-major, labels 1..10."""
    folder.mkdir(parents=True, exist_ok=True)
    xtr, xte = _images(5, 3, 96, 96), _images(3, 3, 96, 96)
    ytr, yte = _labels(5, 10), _labels(3, 10)
    for name, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        (folder / f"{name}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        (folder / f"{name}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
    # part of torchvision's integrity check though only the labelled splits are read
    (folder / "unlabeled_X.bin").write_bytes(_images(1, 3, 96, 96).tobytes())
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    return xtr, ytr, xte, yte


WRITERS = {
    "mnist": ("mnist/MNIST/raw", _write_mnist_like, (1, 28, 28), 10),
    "fashion_mnist": ("fashion_mnist/FashionMNIST/raw", _write_mnist_like, (1, 28, 28), 10),
    "cifar10": ("cifar10/cifar-10-batches-py", _write_cifar10, (3, 32, 32), 10),
    "cifar100": ("cifar100/cifar-100-python", _write_cifar100, (3, 32, 32), 100),
    "svhn": ("svhn", _write_svhn, (3, 32, 32), 10),
    "usps": ("usps", _write_usps, (1, 16, 16), 10),
    "stl10": ("stl10/stl10_binary", _write_stl10, (3, 96, 96), 10),
}


@pytest.fixture
def md5_skipped(monkeypatch):
    """Accept generated files in place of the originals.

    CIFAR, SVHN and STL-10 compare every file with the md5 of the official release, which no
    generated file can match. Only that comparison is replaced (by "the file exists", which is
    what torchvision's ``check_integrity`` does when given no md5); the classes, their file
    parsing and the plugin's code all run as they do on real files. MNIST and USPS check
    presence only and need nothing.
    """
    import torchvision.datasets.cifar as cifar
    import torchvision.datasets.stl10 as stl10
    import torchvision.datasets.svhn as svhn

    def exists(fpath, md5=None):
        return os.path.isfile(fpath)

    for module in (cifar, svhn, stl10):
        monkeypatch.setattr(module, "check_integrity", exists)


def test_writers_cover_every_dataset():
    assert set(WRITERS) == set(TV) == set(torchvision_sets.SPECS)
    for name, (where, *_rest) in WRITERS.items():
        spec = torchvision_sets.SPECS[name]
        assert where == str(Path(spec.folder) / spec.subdir)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_torchvision_dataset_round_trip(name, tmp_path, md5_skipped):
    where, write, shape, num_classes = WRITERS[name]
    xtr, ytr, xte, yte = write(tmp_path / where)
    b = TV[name](DatasetContext(root=tmp_path, download=False))
    assert b.name == name and b.num_classes == num_classes and b.input_shape == shape
    assert b.description
    for split, x, y in ((b.train, xtr, ytr), (b.test, xte, yte)):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape == (len(x), *shape)
        assert torch.equal(split.x, torch.from_numpy(x).float() / 255)
        assert split.y.tolist() == y.tolist()
    # fresh tensors per call, identical data
    again = TV[name](DatasetContext(root=tmp_path, download=False))
    b.train.x.zero_()
    assert again.fingerprint() == TV[name](DatasetContext(root=tmp_path)).fingerprint()


def test_torchvision_limit_and_variants(tmp_path, md5_skipped):
    xtr, ytr, xte, yte = _write_cifar10(tmp_path / "cifar10/cifar-10-batches-py")
    ctx = DatasetContext(root=tmp_path)
    b = TV["cifar10"](ctx, limit=5)
    assert (len(b.train), len(b.test)) == (5, 1) and b.name == "cifar10+first5"
    assert b.train.y.tolist() == ytr[:5].tolist()
    v = TV["cifar10"](ctx, invert_labels=True, motion_blur=3)
    assert v.name == "cifar10+blur3+inverted" and v.test.y.tolist() == (9 - yte).tolist()
    with pytest.raises(UserError) as err:
        TV["cifar10"](ctx, limit=0)
    assert err.value.key == "limit"


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_missing_files_name_the_folder(name, tmp_path):
    where = tmp_path / "data" / WRITERS[name][0]
    with pytest.raises(UserError) as err:
        TV[name](DatasetContext(root=tmp_path / "data", download=False))
    e = err.value
    assert e.key == "dataset"
    assert f"dataset {name!r}: files not found under {str(where).rstrip('/')}" in e.message
    assert "download: true" in e.hint
    assert torchvision_sets.SPECS[name].files[0] in e.hint
    assert not (tmp_path / "data").exists()  # nothing created while download is off


def test_partly_missing_files_are_listed(tmp_path):
    folder = tmp_path / "usps"
    _write_usps(folder)
    (folder / "usps.t.bz2").unlink()
    with pytest.raises(UserError) as err:
        TV["usps"](DatasetContext(root=tmp_path))
    assert "missing: usps.t.bz2" in err.value.message and str(folder) in err.value.message


def test_real_md5_check_refuses_generated_files(tmp_path):
    """Without the test's patch torchvision's own md5 check stands, and the user is told."""
    _write_svhn(tmp_path / "svhn")
    with pytest.raises(UserError) as err:
        TV["svhn"](DatasetContext(root=tmp_path))
    assert "refused by torchvision" in err.value.message and "md5" in err.value.hint
    assert str(tmp_path / "svhn") in err.value.message
