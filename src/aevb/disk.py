"""Data larger than memory: the rows of ``.npy`` files, left on disk and read one batch at a time.

``--dataset FILE.npy`` larger than ``DISK_ABOVE_BYTES``, or ``--dataset DIR`` (a folder of ``.npy`` shards, read in
name order as one array), is not loaded. Each file is opened with ``np.load(..., mmap_mode="r")``, which reads and
checks its header (shape, dtype, C order) without reading the data, and then:

* it is validated in chunks of ``CHUNK_BYTES`` (finite real numbers; pixel levels of integer data);
* a seeded random ``min(N / 6, MAX_HELD_OUT)`` rows are held out as the test set, read into memory; the training
  rows stay on disk, and ``DiskRows`` reads each batch's rows when the trainer indexes it.

Rows are read from the file into arrays of their own (``readinto``, one read per run of consecutive rows), not
through the mapping: the pages a mapped read touches count in the process's resident memory, and the kernel maps
more than the rows read around each fault (a first version that gave the pages back with
``madvise(MADV_DONTNEED)`` after every 256 MiB read still held 3.6 GB of a 4 GB file). Read this way, a fit
holds only the rows it is using (a batch, or a chunk while validating); the operating system's page cache keeps
what memory it can spare, which is not the process's.

For data under ``MAX_HELD_OUT * 6`` rows, the held-out split is the in-memory path's (``aevb.data.split``): both
paths fit the same float data to the same numbers.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from aevb.errors import DataError

DISK_ABOVE_BYTES = 1 << 30  # a .npy file larger than this is left on disk, not loaded
CHUNK_BYTES = 64 << 20  # validation reads this much at a time
MAX_HELD_OUT = 10_000  # the test set held out of data on disk is read into memory: at most this many rows


class DiskArray:
    """``.npy`` shards on disk read as one array of rows: ``read(rows)`` gathers rows by global index."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        headers = [open_shard(path) for path in paths]
        first = headers[0]
        for path, shard in zip(paths[1:], headers[1:]):
            if shard.dtype != first.dtype or shard.shape[1:] != first.shape[1:]:
                raise DataError(f"{path}: its rows are {shard.dtype} of shape {shard.shape[1:]}, those of {paths[0]} "
                                f"{first.dtype} of shape {first.shape[1:]}; every shard must hold rows alike")
        self.offsets = [shard.offset for shard in headers]  # where each file's data begin
        self.starts = np.cumsum([0] + [len(s) for s in headers])  # shard k holds rows starts[k]:starts[k + 1]
        self.dtype, self.row_shape = first.dtype, first.shape[1:]
        self.row_bytes = first.dtype.itemsize * int(np.prod(self.row_shape))
        self.files = [open(path, "rb", buffering=0) for path in paths]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __del__(self) -> None:
        for file in getattr(self, "files", ()):
            file.close()

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The rows (global indices, any order) as one in-memory array (len(rows), *row_shape); none is an empty
        array (a rank's slice of a last batch smaller than the number of processes)."""
        if len(rows) == 0:
            return np.empty((0, *self.row_shape), self.dtype)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        ordered_out = out if (order == np.arange(len(rows))).all() else np.empty_like(out)
        shard_of = np.searchsorted(self.starts, ordered, side="right") - 1
        # a run: consecutive rows of one shard, read by one call
        breaks = np.flatnonzero((np.diff(ordered) != 1) | (np.diff(shard_of) != 0)) + 1
        for first, end in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(rows)]])):
            k = shard_of[first]
            offset = self.offsets[k] + int(ordered[first] - self.starts[k]) * self.row_bytes
            wanted = int(end - first) * self.row_bytes
            self.files[k].seek(offset)
            if self.files[k].readinto(memoryview(ordered_out[first:end]).cast("B")) != wanted:
                raise DataError(f"{self.paths[k]}: shorter than its header says; the file was truncated or replaced")
        if ordered_out is not out:
            out[order] = ordered_out
        return out.astype(self.dtype.newbyteorder("="), copy=False)  # big-endian files: native values for torch

    @property
    def chunk_rows(self) -> int:
        """Rows of ``CHUNK_BYTES``: what validation and statistics read at a time."""
        return max(1, CHUNK_BYTES // self.row_bytes)

    def chunks(self) -> Iterator[np.ndarray]:
        """All rows in order, ``chunk_rows`` at a time (each chunk a copy in memory)."""
        for start in range(0, len(self), self.chunk_rows):
            yield self.read(np.arange(start, min(start + self.chunk_rows, len(self))))

    @functools.cached_property
    def value_range(self) -> tuple[float, float]:
        """(min, max) over every value, checking in chunks that all are finite (DataError naming the shard if not);
        read once."""
        low, high, start = np.inf, -np.inf, 0
        for chunk in self.chunks():
            finite = np.isfinite(chunk).reshape(len(chunk), -1).all(1)
            if not finite.all():
                row = start + int(np.argmin(finite))
                shard = int(np.searchsorted(self.starts, row, side="right")) - 1
                raise DataError(f"{self.paths[shard]}: row {row - self.starts[shard]} contains NaN or infinite values; "
                                "remove or impute them first")
            low, high, start = min(low, float(chunk.min())), max(high, float(chunk.max())), start + len(chunk)
        return low, high


def open_shard(path: Path) -> np.memmap:
    """One ``.npy`` file's header, read by mapping the file (not its data), checked for shape and type."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read it as .npy ({e})") from None
    if not isinstance(array, np.memmap):  # e.g. an empty file's zero-size array
        raise DataError(f"{path}: holds no examples")
    if array.ndim not in (2, 3):
        raise DataError(f"{path}: x must have shape (N, D), (N, H, W) or (N, T, D), got {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise DataError(f"{path}: the data must be real numbers, got dtype {array.dtype}")
    if len(array) == 0 or array[0].size == 0:
        raise DataError(f"{path}: holds no examples")
    if not array.flags.c_contiguous:
        raise DataError(f"{path}: the array is in Fortran order, so a row is scattered over the file; save it with "
                        "numpy.save(path, numpy.ascontiguousarray(x))")
    return array


class DiskRows:
    """Training rows of a ``DiskArray`` that stay on disk: indexing (a tensor or array of positions, a slice or an
    int) reads those rows and gives them as a float32 tensor, after ``transform`` (which may change the dtype: a
    float64 model's rows are cast), on ``output_device``.

    It stands in for a training tensor where a fit only indexes its rows (``aevb.trainer.Batches``): ``len``,
    ``device`` (where an index into it belongs: the CPU) and ``to(device)`` (where the rows it gives go).
    """

    def __init__(self, array: DiskArray, positions: np.ndarray, transform: Callable[[Tensor], Tensor] | None = None,
                 output_device: torch.device = torch.device("cpu")) -> None:
        self.array, self.positions, self.transform, self.output_device = array, positions, transform, output_device
        self.device = torch.device("cpu")

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key: Tensor | np.ndarray | slice | int) -> Tensor:
        if isinstance(key, Tensor):
            key = key.cpu().numpy()
        rows = self.positions[key]
        x = torch.from_numpy(self.array.read(np.atleast_1d(rows))).to(torch.float32)
        x = self.transform(x) if self.transform else x
        x = x.to(self.output_device)
        return x[0] if np.ndim(rows) == 0 else x

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self[:1].shape[1:])

    def map(self, transform: Callable[[Tensor], Tensor]) -> "DiskRows":
        """The same rows with ``transform`` applied after this one's."""
        before = self.transform
        return DiskRows(self.array, self.positions, transform if before is None else lambda x: transform(before(x)),
                        self.output_device)

    def to(self, device: torch.device | str) -> "DiskRows":
        return DiskRows(self.array, self.positions, self.transform, torch.device(device))

    def chunks(self) -> Iterator[Tensor]:
        """All its rows in order, ``DiskArray.chunk_rows`` at a time."""
        for start in range(0, len(self), self.array.chunk_rows):
            yield self[start:start + self.array.chunk_rows]


def chunks(x: Tensor | DiskRows) -> Iterator[Tensor]:
    """A tensor whole, or rows on disk a chunk at a time: for reductions over every row of either."""
    if isinstance(x, DiskRows):
        yield from x.chunks()
    else:
        yield x


def left_on_disk(path: Path) -> bool:
    """Whether ``--dataset path`` is left on disk: a folder of shards, or a .npy file over ``DISK_ABOVE_BYTES``."""
    return path.is_dir() or (path.suffix == ".npy" and path.is_file() and path.stat().st_size > DISK_ABOVE_BYTES)


def shard_paths(path: Path) -> list[Path]:
    """The .npy files that make up ``--dataset path``: the file itself, or a folder's .npy files in name order."""
    if not path.is_dir():
        return [path]
    paths = sorted(p for p in path.iterdir() if p.suffix == ".npy" and p.is_file())
    if not paths:
        raise DataError(f"{path}: a folder of shards holds .npy files, and this one holds none")
    return paths
