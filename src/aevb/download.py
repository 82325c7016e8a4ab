"""MNIST download into a cache folder: checksum-verified, written atomically.

Each file is fetched (gzip-compressed) from the first mirror that answers, and kept only if the
SHA-256 of its *uncompressed* content matches the published one (mirrors recompress, so the .gz
bytes differ between them). A file is written to a temporary name and renamed into place, so the
cache never holds a half-written or unverified file.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import urllib.request
import zlib
from pathlib import Path
from typing import Mapping, Sequence

from aevb.errors import DataError
from aevb.runs import write_atomically

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

MNIST_SHA256 = {  # SHA-256 of the uncompressed IDX files
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

OFFLINE_HELP = "put the IDX files in a folder and pass --data-dir DIR or set AEVB_DATA_DIR"


def cache_directory() -> Path:
    """$XDG_CACHE_HOME/aevb/mnist, by default ~/.cache/aevb/mnist."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aevb" / "mnist"


def download_mnist(
    directory: str | os.PathLike,
    mirrors: Sequence[str] | None = None,
    sha256: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> None:
    """Fetch every file of ``sha256`` (name -> checksum; default MNIST's) not yet in ``directory``.

    Raises DataError when no mirror can be reached or a download does not match its checksum;
    files already fetched stay, nothing unverified is written.
    """
    directory = Path(directory)
    mirrors = MIRRORS if mirrors is None else mirrors
    sha256 = MNIST_SHA256 if sha256 is None else sha256
    for name, checksum in sha256.items():
        if not any((directory / n).exists() for n in (name, f"{name}.gz")):
            content = _fetch_verified(f"{name}.gz", checksum, mirrors, timeout)
            directory.mkdir(parents=True, exist_ok=True)
            write_atomically(directory / f"{name}.gz", lambda path: path.write_bytes(content))


def _fetch_verified(filename: str, checksum: str, mirrors: Sequence[str], timeout: float) -> bytes:
    """The bytes of ``filename`` from the first mirror whose copy matches ``checksum`` once decompressed."""
    corrupt, unreachable = [], []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "aevb"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                content = response.read()
        except (OSError, http.client.HTTPException) as e:  # unreachable, refused, timed out, HTTP error, cut off
            unreachable.append(str(getattr(e, "reason", e)))
            continue
        try:
            digest = hashlib.sha256(gzip.decompress(content)).hexdigest()
        except (OSError, EOFError, zlib.error):  # not gzip, or cut short
            digest = None
        if digest == checksum:
            return content
        corrupt.append(url)
    if corrupt:
        raise DataError(
            f"the copy of {filename} from {', '.join(corrupt)} does not match its published SHA-256 "
            f"(corrupt transfer or changed mirror) and was not saved; try again later or {OFFLINE_HELP}"
        )
    reason = unreachable[-1] if unreachable else "no mirror given"
    raise DataError(f"could not download MNIST (no network? {reason}); {OFFLINE_HELP}")
