"""Data: image data sets and user arrays, validated at the boundary so models can trust what they get.

``load_dataset`` gives the raw data (``ImageData``): ``mnist`` (IDX files from a folder, else downloaded
into a cache), ``digits`` (scikit-learn's 8x8 digits, offline), ``idx:DIR`` (any folder in the MNIST
layout, e.g. Fashion-MNIST) or a user's ``.npy``/``.npz``/``.csv`` file; a ``.npy`` too large to load, or a
folder of ``.npy`` shards, has its training rows left on disk (``aevb.disk``). ``prepare`` applies the
tutorial's transforms and returns float32 (N, D) tensors:

* ``dequantize``: u = (x + U(0, 1)) / levels for integer pixels x in {0, ..., levels - 1}; any density
  p of u bounds the discrete data's, log P(x) >= E_u[log p(u)] - D log(levels);
* ``binarize``: u > 0.5, the dequantization drawn once from a seeded generator (tutorial §5.5; with
  256 levels this is x >= 128 whatever the seed);
* ``static-binarize``: b ~ Bernoulli(x / (levels - 1)), drawn once from a seeded generator for the
  training and test sets alike (the standard statically binarized MNIST of the literature, e.g. Larochelle &
  Murray 2011; unlike thresholding, grey pixels are sometimes on, sometimes off);
* ``dynamic-binarize``: b ~ Bernoulli(x / (levels - 1)) afresh for every batch, by passing
  ``dynamic_binarize`` as the trainer's ``transform``; the test set is binarized once, seeded;
* ``standardize``: u = (x - m) / s, each value of an example (each pixel, each step's each value) centred by its
  mean m over the training examples and divided by their standard deviation s, for real-valued data far from unit
  scale; a density p of u gives x's as log p(x) = log p(u) - sum log s (``standardize``'s offset);
* ``none``: the values as they are.

Continuous data (``levels`` None) need no dequantization: there u = x. A .csv file carries no type: its values are
floats (integer pixels go in an integer .npy), under at most one header line of names.
"""
from __future__ import annotations

import gzip
import math
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from aevb import download
from aevb.disk import MAX_HELD_OUT, DiskArray, DiskRows, chunks, left_on_disk, shard_paths
from aevb.errors import DataError
from aevb.likelihoods import LIKELIHOODS

ARRAY_SUFFIXES = (".npy", ".npz", ".csv")
USER_KEYS = ("x", "y", "x_test", "y_test")
TRANSFORMS = ("dequantize", "binarize", "static-binarize", "dynamic-binarize", "standardize", "none")
TEST_FRACTION = 1 / 6  # held out from the digits, and from user data that bring no test set
MAX_PIXEL_LEVELS = 2**16  # integer data with more levels than 16-bit pixels are not pixels: save them as floats
IDX_LAYOUT = {  # split -> (images, labels): IDX file names of the MNIST layout, each raw or .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_array(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays of a .npy, .npz or .csv file: {'x': data} plus, for .npz, its other arrays.

    An .npz holds its data under 'x' (or as its only array) and optional integer labels under 'y'
    (``load_user_data`` also reads a test set under 'x_test' and 'y_test').
    Raises DataError (one line, saying what to fix) for a missing or unreadable file or non-finite values.
    """
    path = Path(path)
    if path.suffix not in ARRAY_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(ARRAY_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix == ".npy":
            arrays = {"x": np.load(path, allow_pickle=False)}
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            if "x" not in arrays and len(arrays) == 1:
                arrays = {"x": next(iter(arrays.values()))}
        else:
            arrays = {"x": load_csv(path)}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read it as {path.suffix} ({e})") from None
    unread = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]  # an .npz member that is not .npy
    if unread:
        raise DataError(f"{path}: cannot read {unread[0]!r} as an array; save the file with numpy.savez")
    arrays = {k: v.astype(v.dtype.newbyteorder("="), copy=False) for k, v in arrays.items()}  # torch: native order
    if "x" not in arrays:
        raise DataError(f"{path}: an .npz needs its data under the key 'x' (found {', '.join(arrays)})")
    check_examples(arrays["x"], path, "the data")
    return arrays


def load_csv(path: Path) -> np.ndarray:
    """The (N, D) floats of a comma-separated file; a first line of names (no number, some letter) is skipped.

    Raises DataError naming the first line (counted from 1, as an editor does) and column that is not a number,
    or the first row whose length differs from the first row's.
    """
    # utf-8-sig: a byte-order mark at the start, as Excel writes one, is not read as text
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = f.readline()
    header = any(c.isalpha() for c in first) and not any(is_number(field) for field in first.split(","))
    try:
        with warnings.catch_warnings():  # an empty file: "holds no examples" later, not a warning as well
            warnings.simplefilter("ignore")
            return np.loadtxt(path, delimiter=",", ndmin=2, skiprows=int(header), encoding="utf-8-sig")
    except ValueError:
        csv_problem(path, skip=int(header))
        raise


def is_number(field: str) -> bool:
    """Whether numpy reads ``field`` as a float (Python's float also takes '1_000' and non-ASCII digits)."""
    try:
        float(field)
    except ValueError:
        return False
    return field.isascii() and "_" not in field


def csv_problem(path: Path, skip: int) -> None:
    """Raise DataError for the first line of a .csv that numpy cannot read as a row of numbers."""
    columns = None
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            line = line.split("#", 1)[0].rstrip("\r\n")  # numpy skips comments and empty lines, not spaces
            if number <= skip or not line:
                continue
            fields = line.split(",")
            for column, field in enumerate(fields, start=1):
                if not is_number(field):
                    what = "is empty" if not field.strip() else f"holds {field.strip()[:40]!r}, not a number"
                    raise DataError(f"{path}: line {number}, column {column} {what}; a .csv holds numbers only, "
                                    "separated by commas, under at most one header line of names (none of them a "
                                    "number)")
            if columns is None:
                columns, first = len(fields), number
            elif len(fields) != columns:
                values = f"{len(fields)} value{'s' * (len(fields) != 1)}"
                raise DataError(f"{path}: line {number} has {values} but line {first} has {columns}; every row "
                                f"needs the same number of comma-separated values")


def check_examples(x: np.ndarray, path: str | Path, name: str) -> None:
    """Raise DataError unless ``x`` holds at least one example of finite real numbers."""
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise DataError(f"{path}: {name} must be real numbers, got dtype {x.dtype}")
    if x.ndim == 0 or len(x) == 0:
        raise DataError(f"{path}: {name} holds no examples")
    if x[0].size == 0:
        raise DataError(f"{path}: the examples of {name} are empty, shape {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{path}: {name} contains NaN or infinite values; remove or impute them first")


def split(x: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Deterministic random train/test split of the rows of x."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    num_test = max(1, round(test_fraction * len(x)))
    return x[order[num_test:]], x[order[:num_test]]


@dataclass
class ImageData:
    """A data set before transforms: integer pixels in {0, ..., levels - 1}, or floats (levels None)."""

    x_train: Tensor  # (N, *shape)
    y_train: Tensor | None  # (N,) int64 labels in {0, ..., num_classes - 1}
    x_test: Tensor  # (M, *shape)
    y_test: Tensor | None  # (M,)
    shape: tuple[int, ...]  # one example's: (H, W) images, (D,) vectors or (T, D) sequences
    levels: int | None
    num_classes: int | None


def load_dataset(name: str, data_dir: str | None = None, seed: int = 0) -> ImageData:
    """``mnist``, ``digits``, ``idx:DIR`` or a .npy/.npz/.csv path; ``seed`` fixes splits made here."""
    if data_dir is not None and name != "mnist":
        raise DataError(f"--data-dir is for --dataset mnist, not {name}; for another IDX folder use --dataset idx:DIR")
    if name == "mnist":
        return load_mnist(data_dir)
    if name == "digits":
        return load_sklearn_digits(seed)
    if name.startswith("idx:"):
        return load_idx(name[4:], fix="a folder in the MNIST layout holds these four IDX files, raw or .gz")
    if left_on_disk(Path(name)):
        return load_from_disk(Path(name), seed)
    if Path(name).suffix in ARRAY_SUFFIXES:
        return load_user_data(name, seed)
    raise DataError(f"unknown dataset {name!r}: use mnist, digits, idx:DIR, a .npy, .npz or .csv file, or a folder of "
                    ".npy shards")


def load_mnist(data_dir: str | None = None) -> ImageData:
    """MNIST from ``data_dir``, else from $AEVB_DATA_DIR, else from the cache folder (downloaded if missing)."""
    directory = data_dir or os.environ.get("AEVB_DATA_DIR")
    if directory:
        return load_idx(directory, fix="put the MNIST IDX files there, or point --data-dir or AEVB_DATA_DIR at them")
    directory = download.cache_directory()
    download.download_mnist(directory)
    return load_idx(directory, fix="delete the cached file to download it again")


def load_sklearn_digits(seed: int = 0) -> ImageData:
    """scikit-learn's 1797 handwritten digits, 8x8 pixels with values 0..16, split at random (seeded)."""
    from sklearn.datasets import load_digits  # slow to import; only this data set needs it

    digits = load_digits()
    x = torch.from_numpy(digits.images).to(torch.uint8)  # (1797, 8, 8)
    y = torch.from_numpy(digits.target).long()
    # split draws one permutation from (length, seed), so images and labels stay paired
    (x_train, x_test), (y_train, y_test) = split(x, TEST_FRACTION, seed), split(y, TEST_FRACTION, seed)
    return ImageData(x_train, y_train, x_test, y_test, shape=(8, 8), levels=17, num_classes=10)


def load_idx(directory: str | Path, fix: str) -> ImageData:
    """A data set in the MNIST layout (``IDX_LAYOUT``): images (N, H, W) and labels (N,) per split.

    ``fix`` ends every error message: what the user should do about a missing or corrupt file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such folder; {fix}")
    names = [name for pair in IDX_LAYOUT.values() for name in pair]
    paths = {n: next((p for p in (directory / n, directory / f"{n}.gz") if p.is_file()), None) for n in names}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        raise DataError(f"{directory}: no {', '.join(missing)} (raw or .gz); {fix}")
    splits = {}
    for split_name, (images, labels) in IDX_LAYOUT.items():
        x, y = read_idx(paths[images], 3, fix), read_idx(paths[labels], 1, fix)
        if len(x) != len(y):
            raise DataError(f"{directory}: {len(x)} {split_name} images but {len(y)} labels; {fix}")
        splits[split_name] = torch.from_numpy(x), torch.from_numpy(y).long()
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    if x_train.shape[1:] != x_test.shape[1:]:
        shapes = f"train images are {tuple(x_train.shape[1:])}, test images {tuple(x_test.shape[1:])}"
        raise DataError(f"{directory}: {shapes}; {fix}")
    num_classes = class_count(y_train, y_test, directory)
    return ImageData(x_train, y_train, x_test, y_test, tuple(x_train.shape[1:]), levels=256, num_classes=num_classes)


def read_idx(path: Path, ndim: int, fix: str) -> np.ndarray:
    """The unsigned bytes of an IDX file (gzip-compressed or raw), checked against its header.

    IDX: magic number 0x0000080N (unsigned bytes, N dimensions), N big-endian uint32 sizes, the data.
    """
    content = path.read_bytes()
    if content[:2] == b"\x1f\x8b":  # gzip's magic number
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip file ({e}); {fix}") from None
    header = 4 + 4 * ndim
    magic = int.from_bytes(content[:4], "big")
    if len(content) < header or magic != 0x800 + ndim:
        raise DataError(f"{path}: not an IDX file of {ndim}-dimensional unsigned bytes (magic number "
                        f"{magic:#010x}, expected {0x800 + ndim:#010x}); {fix}")
    dims = tuple(int(d) for d in np.frombuffer(content, ">u4", ndim, offset=4))
    if 0 in dims or len(content) != header + int(np.prod(dims)):
        raise DataError(f"{path}: {len(content)} bytes where its header {dims} promises "
                        f"{header + int(np.prod(dims))}; the file is truncated or corrupt; {fix}")
    return np.frombuffer(bytearray(content), np.uint8, offset=header).reshape(dims)  # a writable copy


def load_user_data(path: str | Path, seed: int = 0) -> ImageData:
    """x (N, D), (N, H, W) or (N, T, D), optional labels y (N,) and test arrays x_test, y_test.

    Integer data are pixels: uint8 has 256 levels, other integer types ``max + 1``. Float data are
    continuous (levels None). Without x_test, a seeded random ``TEST_FRACTION`` is held out.
    """
    arrays = load_array(path)
    keys = set(arrays)
    if keys - set(USER_KEYS):
        raise DataError(f"{path}: unexpected arrays {', '.join(sorted(keys - set(USER_KEYS)))}; "
                        f"an .npz holds x and optionally y, x_test, y_test")
    if "y_test" in keys and "x_test" not in keys:
        raise DataError(f"{path}: y_test without x_test; an .npz holds x and optionally y, x_test, y_test")
    if "x_test" in keys and ("y" in keys) != ("y_test" in keys):
        raise DataError(f"{path}: with x_test, give labels for both sets (y and y_test) or for neither")
    x = arrays["x"]
    if x.ndim not in (2, 3):
        raise DataError(f"{path}: x must have shape (N, D), (N, H, W) or (N, T, D), got {x.shape}")
    x_test = arrays.get("x_test")
    if x_test is not None:
        check_examples(x_test, path, "x_test")
        if x_test.shape[1:] != x.shape[1:] or x_test.dtype != x.dtype:
            raise DataError(f"{path}: x_test must be like x, {x.dtype} examples of shape {x.shape[1:]}; "
                            f"got {x_test.dtype} of shape {x_test.shape[1:]}")
    elif len(x) < 2:
        raise DataError(f"{path}: need at least 2 examples to hold out a test set, got {len(x)}")
    values = x if x_test is None else np.concatenate([x.ravel(), x_test.ravel()])
    levels = pixel_levels(x.dtype, values.min(), values.max(), path)
    dtype = pixel_dtype(levels)
    x = torch.from_numpy(x).to(dtype)
    y = check_labels(arrays["y"], len(x), path, "y") if "y" in keys else None
    if x_test is None:  # split draws one permutation from (length, seed), so examples and labels stay paired
        x, x_test = split(x, TEST_FRACTION, seed)
        y, y_test = split(y, TEST_FRACTION, seed) if y is not None else (None, None)
    else:
        x_test = torch.from_numpy(x_test).to(dtype)
        y_test = check_labels(arrays["y_test"], len(x_test), path, "y_test") if y is not None else None
    num_classes = None if y is None else class_count(y, y_test, path)
    return ImageData(x, y, x_test, y_test, tuple(x.shape[1:]), levels, num_classes)


def load_from_disk(path: Path, seed: int = 0) -> ImageData:
    """A .npy file or a folder of .npy shards too large to load (``aevb.disk``): training rows left on disk as
    ``DiskRows`` of raw values, a seeded held-out test set of at most ``MAX_HELD_OUT`` rows in memory, no labels."""
    array = DiskArray(shard_paths(path))
    if len(array) < 2:
        raise DataError(f"{path}: need at least 2 examples to hold out a test set, got {len(array)}")
    low, high = array.value_range
    levels = pixel_levels(array.dtype, low, high, path)
    order = torch.randperm(len(array), generator=torch.Generator().manual_seed(seed)).numpy()
    num_test = min(max(1, round(TEST_FRACTION * len(array))), MAX_HELD_OUT)  # below the cap, the split of ``split``
    x_test = torch.from_numpy(array.read(order[:num_test])).to(pixel_dtype(levels))
    return ImageData(DiskRows(array, order[num_test:]), None, x_test, None, tuple(array.row_shape), levels, None)


def pixel_levels(dtype: np.dtype, low: float, high: float, path: str | Path) -> int | None:
    """Levels of integer pixels with values in [low, high]: 256 for uint8, else high + 1, at most
    ``MAX_PIXEL_LEVELS``; None for float data."""
    if not np.issubdtype(dtype, np.integer):
        return None
    if low < 0:
        raise DataError(f"{path}: integer pixel values must be >= 0, found {low:g}; save continuous data as floats")
    if high >= MAX_PIXEL_LEVELS:
        raise DataError(f"{path}: integer data are read as pixels, and {high:g} is above the {MAX_PIXEL_LEVELS - 1} of "
                        "16-bit pixels; save continuous data as floats")
    return 256 if dtype == np.uint8 else max(2, int(high) + 1)


def pixel_dtype(levels: int | None) -> torch.dtype:
    """The dtype that holds pixels of ``levels`` levels (``pixel_levels``): uint8 for 256, int64 for other
    integers, float32 for float data (None)."""
    return {None: torch.float32, 256: torch.uint8}.get(levels, torch.int64)


def check_labels(y: np.ndarray, n: int, path: str | Path, name: str) -> Tensor:
    """Class labels 0, 1, 2, ... as an int64 (n,) tensor, one per example."""
    if y.shape != (n,):
        raise DataError(f"{path}: {name} must hold one label per example, shape ({n},), got {y.shape}")
    if (not np.issubdtype(y.dtype, np.number) or not np.isfinite(y).all() or (y < 0).any() or (y != np.round(y)).any()
            or (y > np.iinfo(np.int64).max).any()):
        raise DataError(f"{path}: {name} must hold integer class labels 0, 1, 2, ...")
    return torch.from_numpy(y.astype(np.int64))


def class_count(y_train: Tensor, y_test: Tensor, path: str | Path) -> int:
    """C, for labels 0, ..., C - 1 that each occur in the training labels, and test labels among them. A class
    with no training example has nothing to learn from, and a stray large label would make C, and every one-hot
    of width C, as large."""
    present = torch.unique(y_train).tolist()  # sorted
    renumber = "number the classes 0, ..., C - 1 (np.unique(y, return_inverse=True)[1] does)"
    missing = next((k for k, label in enumerate(present) if k != label), None)
    if missing is not None:
        raise DataError(f"{path}: the training labels go up to {present[-1]} but have no class {missing} (they hold "
                        f"{len(present)} classes); {renumber}")
    if int(y_test.max()) >= len(present):
        raise DataError(f"{path}: the test labels hold class {int(y_test.max())}, which no training example has (the "
                        f"training labels are 0 to {len(present) - 1}); give every class training examples")
    return len(present)


def dequantize(x: Tensor, levels: int, generator: torch.Generator) -> Tensor:
    """u = (x + U(0, 1)) / levels as float32 (N, D): integer pixels x spread uniformly over their bins."""
    x = x.flatten(1).to(torch.float32, copy=True)  # (N, D), a copy: it is overwritten below
    u = torch.rand(x.shape, generator=generator).add_(x).div_(levels)
    # float32 rounding can carry x + U(0, 1) up to x + 1, the next bin's edge: keep each value in its own bin
    upper = x.add_(1).div_(levels).nextafter_(torch.zeros(()))  # in place: no third copy of a large data set
    return torch.minimum(u, upper, out=u)


def binarize(x_dequantized: Tensor) -> Tensor:
    """The tutorial's static binarization of dequantized pixels: u > 0.5, as 0.0 / 1.0."""
    return (x_dequantized > 0.5).float()


def dynamic_binarize(batch: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """A trainer ``transform``: a fresh draw x ~ Bernoulli(probs) for the batch's first tensor.

    It uses the global random generator, which ``Trainer.fit`` seeds, so runs are reproducible.
    """
    return (torch.bernoulli(batch[0]), *batch[1:])


def prepare(data: ImageData, transform: str, seed: int) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """(x_train, y_train, x_test, y_test): float32 (N, D) examples after ``transform`` (see the module doc).

    All randomness (dequantization noise, the test set's binarization) is drawn once from ``seed``.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; use one of {', '.join(TRANSFORMS)}")
    if isinstance(data.x_train, DiskRows):
        return prepare_from_disk(data, transform, seed)
    generator = torch.Generator().manual_seed(seed)
    x_train, x_test = data.x_train.flatten(1), data.x_test.flatten(1)  # (N, D), (M, D)
    if transform in ("static-binarize", "dynamic-binarize"):
        scale = data.levels - 1 if data.levels else 1
        x_train, x_test = x_train.float() / scale, x_test.float() / scale
        if min(x_train.min(), x_test.min()) < 0 or max(x_train.max(), x_test.max()) > 1:
            raise DataError(f"{transform} draws Bernoulli(x): values must lie in [0, 1]; rescale the data")
        if transform == "static-binarize":
            x_train = torch.bernoulli(x_train, generator=generator)
        x_test = torch.bernoulli(x_test, generator=generator)  # dynamic: x_train stays probabilities, drawn per batch
    elif transform in ("dequantize", "binarize") and data.levels:
        x_train, x_test = dequantize(x_train, data.levels, generator), dequantize(x_test, data.levels, generator)
    if transform == "binarize":
        x_train, x_test = binarize(x_train), binarize(x_test)
        if len(x_train) and x_train.min() == x_train.max():  # e.g. pixels 0 to 16 stored as uint8: 256 levels
            threshold = f"level {data.levels // 2} of {data.levels}" if data.levels else "0.5"
            raise DataError(f"--transform binarize thresholds the pixels at {threshold} and leaves every training "
                            f"pixel {int(x_train.max())}; store them with the levels they use (e.g. 0 to 16 as "
                            "int64, not uint8), or choose another --transform")
    return x_train.float(), data.y_train, x_test.float(), data.y_test


def prepare_from_disk(data: ImageData, transform: str, seed: int) -> tuple[DiskRows, None, Tensor, None]:
    """``prepare`` for training rows left on disk: each batch is transformed as it is read, so dequantization noise
    is drawn afresh for every batch (from the global generator, which the trainer seeds and checkpoints), not
    once; the in-memory test set is transformed once, seeded, as ``prepare`` does. No ``static-binarize``: its
    draw is fixed per example, which would need the whole set in memory."""
    if transform == "static-binarize":
        raise DataError("--transform static-binarize draws every training example once, in memory; for data left on "
                        "disk use --transform dynamic-binarize (a fresh draw per batch)")
    generator = torch.Generator().manual_seed(seed)
    x_train, x_test = data.x_train.map(lambda x: x.flatten(1)), data.x_test.flatten(1)
    if transform == "dynamic-binarize":
        scale = data.levels - 1 if data.levels else 1
        low, high = data.x_train.array.value_range  # the test rows' too: they are rows of the same array
        if low < 0 or high > scale:
            raise DataError(f"{transform} draws Bernoulli(x): values must lie in [0, 1]; rescale the data")
        x_train, x_test = x_train.map(lambda x: x / scale), torch.bernoulli(x_test.float() / scale, generator=generator)
    elif transform in ("dequantize", "binarize") and data.levels:
        levels = data.levels
        x_train, x_test = x_train.map(lambda x: dequantize(x, levels, None)), dequantize(x_test, levels, generator)
    if transform == "binarize":
        x_train, x_test = x_train.map(binarize), binarize(x_test)
    return x_train, None, x_test.float(), None


FLOAT32_DIGITS = 1e-5  # a value whose standard deviation is below this fraction of its mean lost its variation to
# float32's 24-bit significand (about 7 significant digits), in which aevb reads float data


def standardize(x_train: Tensor | DiskRows, x_test: Tensor, levels: int | None, source: str,
                shape: tuple[int, ...] | None = None) -> tuple[Tensor | DiskRows, Tensor, float, tuple[Tensor, Tensor]]:
    """(u_train, u_test, offset, (m, s)): flat (N, D) examples standardized, u = (x - m) / s, by the training
    examples' mean m and standard deviation s, (D,) each, of each of the D values of an example (of ``shape``, for
    naming them), and offset = -sum_d log s_d (of the s applied, in float32), so that log p(x) = log p(u) + offset
    (and x = m + s u maps draws of u back). The statistics are summed in float64, a chunk of rows at a time for rows
    left on disk, which are standardized as they are read. DataError for integer pixels (their density is the
    dequantized data's), fewer than 2 training examples, or a value that is constant, or whose variation float32
    cannot hold at its size."""
    if levels is not None:
        raise DataError(f"{source}: --transform standardize is for real-valued data, and these are integer pixels; "
                        "use --transform dequantize (or save them as floats)")
    count, mean, squares = 0, 0.0, 0.0  # squared deviations from the mean, chunk by chunk (Chan et al.'s update)
    for rows in chunks(x_train):
        rows = rows.double()
        rows_mean = rows.mean(0)
        delta, total = rows_mean - mean, count + len(rows)
        squares = squares + (rows - rows_mean).square().sum(0) + delta.square() * count * len(rows) / total
        count, mean = total, mean + delta * len(rows) / total
    if count < 2:
        raise DataError(f"{source}: --transform standardize needs at least 2 training examples for a standard "
                        f"deviation, and there {'is' if count == 1 else 'are'} {count}")
    std = (squares / (count - 1)).sqrt()

    def named(indices: list[int]) -> str:  # as positions in an example: 5, or [19, 2] in a (T, D) sequence
        shown = [str(i) if not shape or len(shape) < 2 else str(list(map(int, np.unravel_index(i, shape))))
                 for i in indices[:5]]
        return ", ".join(shown) + (f" and {len(indices) - 5} more" if len(indices) > 5 else "")

    constant = (std == 0).nonzero().flatten().tolist()
    if constant:
        raise DataError(f"{source}: value{'s' * (len(constant) > 1)} {named(constant)} of each example "
                        f"{'are' if len(constant) > 1 else 'is'} constant over the training examples (as read, in "
                        "float32), so --transform standardize would divide by 0; drop constant values")
    blurred = (std < FLOAT32_DIGITS * mean.abs()).nonzero().flatten().tolist()
    if blurred:
        i = blurred[0]
        raise DataError(f"{source}: value{'s' * (len(blurred) > 1)} {named(blurred)} of each example vary too little "
                        f"for their size (the first: mean {mean[i].item():.7g}, standard deviation "
                        f"{std[i].item():.3g}) to be read as float32, which holds about 7 significant digits; subtract "
                        "their mean before saving them, or drop them")
    mean, std = mean.float(), std.float()
    if isinstance(x_train, DiskRows):
        u_train = x_train.map(lambda rows: (rows - mean) / std)
    else:
        u_train = (x_train - mean) / std
    return u_train, (x_test - mean) / std, -std.double().log().sum().item(), (mean, std)


def as_sequences(x: Tensor | DiskRows, shape: tuple[int, ...]) -> Tensor | DiskRows:
    """(N, D) flat examples -> (N, T, D'): an image's rows as time steps (T = height, D' = width)."""
    if len(shape) != 2:
        raise DataError(f"a sequence model needs examples of shape (T, D), e.g. images (H, W); got {tuple(shape)}")
    if isinstance(x, DiskRows):
        return x.map(lambda rows: rows.reshape(len(rows), *shape))
    return x.reshape(len(x), *shape)


def validate_support(x: Tensor | DiskRows, likelihood: str, source: str, offered: Sequence[str] = LIKELIHOODS) -> None:
    """Raise DataError unless every value of ``x`` (a tensor, or rows on disk, read in chunks) lies in the support
    of the likelihood; its advice names only the likelihoods ``offered`` (by the model's --likelihood).

    ``cb`` and ``cb-clamped`` (continuous Bernoulli): [0, 1]; ``bernoulli``: {0, 1}; ``gaussian``: any finite value.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}; use {', '.join(LIKELIHOODS)}")
    low, high, other, total = math.inf, -math.inf, 0, 0
    for values in chunks(x):
        if not torch.isfinite(values).all():
            raise DataError(f"{source}: the data contains NaN or infinite values; remove or impute them first")
        if likelihood != "gaussian":
            low, high = min(low, values.min().item()), max(high, values.max().item())
        if likelihood == "bernoulli":
            other, total = other + int(((values != 0) & (values != 1)).sum()), total + values.numel()
    if low < 0 or high > 1:  # outside [0, 1], for the continuous Bernoulli's and the Bernoulli's
        gaussian = ", use --likelihood gaussian" if "gaussian" in offered else ""
        must = "lie in [0, 1] for the continuous" if likelihood != "bernoulli" else "be exactly 0 or 1 for the"
        raise DataError(f"{source}: values must {must} Bernoulli likelihood; found values in [{low:g}, {high:g}] "
                        f"(rescale the data{gaussian}, or save integer pixels as integers in a .npy, which a .csv "
                        "cannot say)")
    if likelihood == "bernoulli" and other:
        cb = ", or use --likelihood cb" if "cb" in offered else ""
        raise DataError(f"{source}: values must be exactly 0 or 1 for the Bernoulli likelihood; {other} of "
                        f"{total} are not (binarize them: --transform dynamic-binarize or static-binarize for values "
                        f"in [0, 1]{cb})")
