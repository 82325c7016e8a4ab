"""Data layer: IDX reading, checksum-verified atomic download, digits, user arrays, transforms."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import math
import os
import signal
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from aevb import cli, disk, download, fitting
from aevb.data import (
    DataError,
    as_sequences,
    binarize,
    dequantize,
    dynamic_binarize,
    load_array,
    load_dataset,
    prepare,
    standardize,
    validate_support,
)
from aevb.models.fa import FactorAnalysis, FAConfig
from aevb.runs import UsageError
from aevb.trainer import Batches, Trainer


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000080N, N big-endian uint32 sizes, the data."""
    header = (0x800 + array.ndim).to_bytes(4, "big") + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def fake_dataset(seed: int = 0) -> dict[str, np.ndarray]:
    """Small random data in the MNIST layout: 5x4 images, labels 0..2."""
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 5, 4)),
        "train-labels-idx1-ubyte": rng.integers(0, 3, 20),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (6, 5, 4)),
        "t10k-labels-idx1-ubyte": np.arange(6) % 3,
    }


def write_dataset(directory: Path, arrays: dict[str, np.ndarray], compress: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        content = idx_bytes(array)
        (directory / f"{name}.gz" if compress else directory / name).write_bytes(
            gzip.compress(content) if compress else content
        )
    return directory


def assert_one_line_error(excinfo: pytest.ExceptionInfo, *phrases: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message


# ---- IDX files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    arrays = fake_dataset()
    data = load_dataset(f"idx:{write_dataset(tmp_path, arrays, compress)}")
    assert torch.equal(data.x_train, torch.from_numpy(arrays["train-images-idx3-ubyte"]).to(torch.uint8))
    assert torch.equal(data.y_train, torch.from_numpy(arrays["train-labels-idx1-ubyte"]))
    assert torch.equal(data.x_test, torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).to(torch.uint8))
    assert torch.equal(data.y_test, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]))
    assert (data.shape, data.levels, data.num_classes) == ((5, 4), 256, 3)
    assert data.y_train.dtype == torch.int64


def test_mnist_reads_data_dir_then_environment(tmp_path, monkeypatch):
    write_dataset(tmp_path / "a", fake_dataset(0), compress=True)
    write_dataset(tmp_path / "b", fake_dataset(1), compress=False)
    monkeypatch.setenv("AEVB_DATA_DIR", str(tmp_path / "b"))
    from_flag, from_env = load_dataset("mnist", data_dir=str(tmp_path / "a")), load_dataset("mnist")
    assert torch.equal(from_flag.x_train, torch.from_numpy(fake_dataset(0)["train-images-idx3-ubyte"]).to(torch.uint8))
    assert torch.equal(from_env.x_train, torch.from_numpy(fake_dataset(1)["train-images-idx3-ubyte"]).to(torch.uint8))


def test_a_run_records_the_mnist_folder_of_the_environment_as_its_data_dir(tmp_path, monkeypatch):
    """So that aevb eval, later, from elsewhere and without the variable, reads the same files."""
    from aevb import fitting
    from aevb.models.vae import VAE

    write_dataset(tmp_path / "idx", fake_dataset(0), compress=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AEVB_DATA_DIR", "idx")  # relative, as a user may set it
    args = fitting.parse_fit_args(VAE, ["--dataset", "mnist"])
    assert args.data_dir == str(tmp_path / "idx")
    monkeypatch.delenv("AEVB_DATA_DIR")
    assert fitting.parse_fit_args(VAE, ["--dataset", "mnist"]).data_dir is None


def corrupt(directory: Path, how: str) -> tuple[str, ...]:
    """Damage one file of a raw dataset in ``directory``; return phrases the error must contain."""
    images, labels = directory / "train-images-idx3-ubyte", directory / "train-labels-idx1-ubyte"
    if how == "truncated":
        images.write_bytes(images.read_bytes()[:-7])
        return ("train-images-idx3-ubyte", "truncated")
    if how == "truncated-gz":
        compressed = gzip.compress(images.read_bytes())
        images.unlink()
        (directory / "train-images-idx3-ubyte.gz").write_bytes(compressed[: len(compressed) // 2])
        return ("train-images-idx3-ubyte.gz", "gzip")
    if how == "wrong-magic":  # a labels file (0x801) where images (0x803) belong
        images.write_bytes(labels.read_bytes())
        return ("magic number 0x00000801, expected 0x00000803",)
    if how == "count-mismatch":
        labels.write_bytes(idx_bytes(np.zeros(19)))
        return ("20 train images but 19 labels",)
    if how == "missing":
        labels.unlink()
        return ("no train-labels-idx1-ubyte",)
    raise ValueError(how)


@pytest.mark.parametrize("how", ["truncated", "truncated-gz", "wrong-magic", "count-mismatch", "missing"])
def test_idx_rejects_damaged_files(tmp_path, how):
    directory = write_dataset(tmp_path, fake_dataset(), compress=False)
    phrases = corrupt(directory, how)
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", data_dir=str(directory))
    assert_one_line_error(excinfo, *phrases, "--data-dir")


# ---- download --------------------------------------------------------------------------------


@pytest.fixture
def mirror(tmp_path):
    """A local HTTP server of gzip-compressed fake IDX files: (base URL, {name: SHA-256 of the content})."""
    served = tmp_path / "served"
    write_dataset(served, fake_dataset(), compress=True)
    checksums = {name: hashlib.sha256(idx_bytes(a)).hexdigest() for name, a in fake_dataset().items()}

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=served))
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", checksums
    server.shutdown()
    server.server_close()


@pytest.fixture
def unreachable_url():
    """The URL of a local port nobody listens on: connections are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_download_is_verified_and_complete(tmp_path, mirror, unreachable_url):
    url, checksums = mirror
    cache = tmp_path / "cache"
    download.download_mnist(cache, mirrors=(unreachable_url, url), sha256=checksums, timeout=5)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{name}.gz" for name in checksums)
    umask = os.umask(0o022)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in cache.iterdir()} == {0o666 & ~umask}  # as any file made, not private
    data = load_dataset(f"idx:{cache}")
    assert torch.equal(data.x_test, torch.from_numpy(fake_dataset()["t10k-images-idx3-ubyte"]).to(torch.uint8))
    # files already there are not fetched again: no mirror is needed now
    download.download_mnist(cache, mirrors=(unreachable_url,), sha256=checksums, timeout=5)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, mirror):
    url, checksums = mirror
    cache = tmp_path / "cache"
    wrong = dict(checksums, **{"train-labels-idx1-ubyte": "0" * 64})
    with pytest.raises(DataError) as excinfo:
        download.download_mnist(cache, mirrors=(url,), sha256={"train-labels-idx1-ubyte": wrong["train-labels-idx1-ubyte"]})
    assert_one_line_error(excinfo, "train-labels-idx1-ubyte.gz", "SHA-256", "not saved")
    assert not cache.exists() or not any(cache.iterdir())


def test_download_interrupted_while_writing_leaves_nothing(tmp_path, mirror, monkeypatch):
    url, checksums = mirror
    cache = tmp_path / "cache"

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(download.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download.download_mnist(cache, mirrors=(url,), sha256=checksums)
    assert not any(cache.iterdir())


def test_offline_without_files_gives_one_clear_error(tmp_path, monkeypatch, unreachable_url):
    monkeypatch.delenv("AEVB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(download, "MIRRORS", (unreachable_url,))
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist")
    assert_one_line_error(excinfo, "could not download MNIST (no network?", "--data-dir DIR", "AEVB_DATA_DIR")
    assert not any(tmp_path.iterdir())


# ---- digits and user arrays ----------------------------------------------------------------------


def test_digits_split_is_deterministic_and_keeps_pairs():
    data = load_dataset("digits", seed=3)
    assert data.x_train.shape == (1497, 8, 8) and data.x_test.shape == (300, 8, 8)
    assert (data.shape, data.levels, data.num_classes) == ((8, 8), 17, 10)
    assert data.x_train.dtype == torch.uint8 and int(data.x_train.max()) == 16
    assert torch.equal(load_dataset("digits", seed=3).x_test, data.x_test)
    assert not torch.equal(load_dataset("digits", seed=4).x_test, data.x_test)
    digits = load_digits()
    pairs = lambda x, y: sorted(zip(map(bytes, np.asarray(x).reshape(len(x), -1).astype(np.uint8)), np.asarray(y)))
    ours = pairs(torch.cat([data.x_train, data.x_test]), torch.cat([data.y_train, data.y_test]))
    assert ours == pairs(digits.images, digits.target)


def test_user_arrays(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "vectors.npy", rng.random((60, 7)))
    vectors = load_dataset(str(tmp_path / "vectors.npy"), seed=1)
    assert (len(vectors.x_train), len(vectors.x_test), vectors.shape) == (50, 10, (7,))
    assert vectors.levels is None and vectors.y_train is None and vectors.x_train.dtype == torch.float32

    x, y = rng.integers(0, 256, (30, 4, 4)).astype(np.uint8), np.arange(30) % 5
    np.savez(tmp_path / "images.npz", x=x, y=y)
    images = load_dataset(str(tmp_path / "images.npz"))
    assert (images.levels, images.num_classes, images.shape) == (256, 5, (4, 4))
    for xs, ys in ((images.x_train, images.y_train), (images.x_test, images.y_test)):  # labels stay paired
        assert all(int(label) == y[(x == image.numpy()).all(axis=(1, 2)).argmax()] for image, label in zip(xs, ys))

    small = (x % 3).astype(np.int64)
    np.savez(tmp_path / "both.npz", x=small[:20], y=y[:20], x_test=small[20:], y_test=y[20:])
    both = load_dataset(str(tmp_path / "both.npz"))
    assert (len(both.x_train), len(both.x_test), both.levels) == (20, 10, 3)  # uint8 -> 256; int64 -> max + 1
    assert torch.equal(both.y_test, torch.from_numpy(y[20:]))

    np.save(tmp_path / "big-endian.npy", rng.random((60, 7)).astype(">f4"))  # saved on another machine, say
    other_order = load_dataset(str(tmp_path / "big-endian.npy"), seed=1)
    assert torch.equal(other_order.x_test, torch.from_numpy(np.load(tmp_path / "big-endian.npy").astype("<f4"))[
        torch.randperm(60, generator=torch.Generator().manual_seed(1))[:10]])


def test_csv_reads_numbers_after_an_optional_header_and_names_the_line_it_cannot_read(tmp_path):
    values = np.random.default_rng(0).normal(size=(5, 3))
    np.savetxt(tmp_path / "plain.csv", values, delimiter=",")
    np.savetxt(tmp_path / "header.csv", values, delimiter=",", header="a,b,c", comments="")  # as pandas writes it
    assert np.array_equal(load_array(tmp_path / "plain.csv")["x"], values)
    assert np.array_equal(load_array(tmp_path / "header.csv")["x"], values)

    (tmp_path / "excel.csv").write_text("\ufeffa,b\r\n1,2\r\n", encoding="utf-8")  # a byte-order mark, CRLF
    (tmp_path / "excel-no-header.csv").write_text("\ufeff1,2\n", encoding="utf-8")
    assert load_array(tmp_path / "excel.csv")["x"].tolist() == [[1.0, 2.0]]
    assert load_array(tmp_path / "excel-no-header.csv")["x"].tolist() == [[1.0, 2.0]]

    for text, phrase in (("a,b\n1,2\n3,x\n", "line 3, column 2 holds 'x', not a number"),
                         ("1,2\n3,4\n  \n", "line 3, column 1 is empty"),  # numpy reads spaces as a row
                         ("1_000,2\n", "line 1, column 1 holds '1_000', not a number"),  # Python's float reads it
                         ("1,2\n\n# a comment\n3\n", "line 4 has 1 value but line 1 has 2"),
                         ("1;2\n3;4\n", "line 1, column 1 holds '1;2', not a number"),
                         ("1,2,\n", "line 1, column 3 is empty")):
        (tmp_path / "bad.csv").write_text(text)
        with pytest.raises(DataError) as excinfo:
            load_array(tmp_path / "bad.csv")
        assert_one_line_error(excinfo, "bad.csv", phrase)


@pytest.mark.parametrize(
    "arrays, phrase",
    [
        ({"x": np.zeros(10)}, "x must have shape (N, D)"),
        ({"x": np.zeros((4, 2, 2, 2))}, "x must have shape (N, D)"),
        ({"x": np.array([[0.0, np.nan], [1.0, 2.0]])}, "NaN"),
        ({"x": np.zeros((10, 3)), "y": np.zeros(9, int)}, "one label per example, shape (10,)"),
        ({"x": np.zeros((10, 3)), "y": np.full(10, 0.5)}, "integer class labels"),
        ({"x": np.zeros((10, 3)), "y_test": np.zeros(2, int)}, "y_test without x_test"),
        ({"x": np.zeros((10, 3)), "x_test": np.zeros((2, 4))}, "x_test must be like x"),
        ({"x": np.zeros((10, 3)), "x_test": np.zeros((2, 3)), "y": np.zeros(10, int)}, "both sets"),
        ({"x": -np.ones((10, 3), int)}, "must be >= 0"),
        ({"x": np.zeros((10, 3)), "labels": np.zeros(10)}, "unexpected arrays labels"),
    ],
)
def test_user_arrays_rejected(tmp_path, arrays, phrase):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as excinfo:
        load_dataset(str(tmp_path / "bad.npz"))
    assert_one_line_error(excinfo, "bad.npz", phrase)


def test_bad_dataset_names():
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="--data-dir is for --dataset mnist"):
        load_dataset("digits", data_dir="somewhere")
    with pytest.raises(DataError, match="no such folder"):
        load_dataset("idx:/nonexistent/folder")
    assert issubclass(DataError, UsageError)  # the CLI reports it as one line, exit code 2


# ---- transforms --------------------------------------------------------------------------------


def test_dequantize_on_floats_is_refused_by_a_new_fit_and_read_back_as_none_in_a_run_from_before(tmp_path, capsys):
    x = np.random.default_rng(0).uniform(size=(200, 6)).astype(np.float32)
    np.save(tmp_path / "floats.npy", x)
    flags = ["fit", "vae", "--dataset", tmp_path / "floats.npy", "--hidden", "4", "--latent-dim", "2", "--epochs", "1",
             "--iwae", "0", "--no-progress"]
    assert cli.main([*map(str, flags), "--transform", "dequantize", "--out", str(tmp_path / "new")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "aevb: error: --transform dequantize spreads integer pixels over their bins, and these data are floats; use "
        "--transform none (or store the pixels as integers)"]
    assert not (tmp_path / "new").exists()
    assert cli.main([*map(str, flags), "--transform", "none", "--out", str(tmp_path / "old")]) == 0
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    config["args"]["transform"] = "dequantize"  # as an earlier aevb, which left floats as they were, recorded it
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    assert cli.main(["eval", str(tmp_path / "old"), "--iwae", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["test_elbo"] == json.loads(
        (tmp_path / "old" / "summary.json").read_text())["test_elbo"]


def test_dequantize_spreads_each_integer_over_its_own_bin():
    x = torch.randint(0, 17, (500, 8, 8), generator=torch.Generator().manual_seed(0))
    u = dequantize(x, 17, torch.Generator().manual_seed(1))
    assert u.shape == (500, 64) and u.dtype == torch.float32
    assert (u >= 0).all() and (u < 1).all()
    assert torch.equal(torch.floor(u * 17).long(), x.flatten(1))
    assert abs((u * 17 - x.flatten(1)).mean().item() - 0.5) < 0.01  # U(0, 1) within the bin
    # float32 rounding of 255 + u, u near 1, would give exactly 1.0; the top bin stays below it
    top = dequantize(torch.full((2000, 784), 255, dtype=torch.uint8), 256, torch.Generator().manual_seed(2))
    assert top.max() < 1 and top.min() >= 255 / 256


def test_static_binarization_is_deterministic_given_the_seed():
    data = load_dataset("digits")
    x_train, _, x_test, _ = prepare(data, "binarize", seed=5)
    assert torch.equal(prepare(data, "binarize", seed=5)[0], x_train)
    assert not torch.equal(prepare(data, "binarize", seed=6)[0], x_train)  # pixels of value 8 straddle 0.5
    assert set(x_train.unique().tolist()) == {0.0, 1.0} and x_test.shape == (300, 64)
    pixels = data.x_train.flatten(1)
    assert (x_train[pixels >= 9] == 1).all() and (x_train[pixels <= 7] == 0).all()  # (x + u) / 17 > 0.5
    assert torch.equal(binarize(torch.tensor([0.2, 0.5, 0.7])), torch.tensor([0.0, 0.0, 1.0]))


def test_prepare_dequantize_and_none():
    data = load_dataset("digits")
    x_train, y_train, x_test, y_test = prepare(data, "dequantize", seed=0)
    assert torch.equal(torch.floor(x_train * 17).long(), data.x_train.flatten(1).long())
    assert torch.equal(y_train, data.y_train) and x_test.shape == (300, 64)
    assert torch.equal(prepare(data, "none", seed=0)[0], data.x_train.flatten(1).float())
    with pytest.raises(ValueError, match="unknown transform"):
        prepare(data, "normalize", seed=0)


def test_dynamic_binarization_draws_afresh_every_epoch():
    data = load_dataset("digits")
    probs, _, x_test, _ = prepare(data, "dynamic-binarize", seed=0)
    assert torch.equal(probs, data.x_train.flatten(1).float() / 16)
    assert set(x_test.unique().tolist()) == {0.0, 1.0}  # the test set is binarized once
    assert torch.equal(prepare(data, "dynamic-binarize", seed=0)[2], x_test)

    torch.manual_seed(0)
    batches = Batches((probs, torch.arange(len(probs))), batch_size=len(probs), transform=dynamic_binarize)
    (first, order1), = batches
    (second, order2), = batches
    first, second = first[order1.argsort()], second[order2.argsort()]
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)
    assert torch.equal(first[probs == 0], probs[probs == 0]) and torch.equal(first[probs == 1], probs[probs == 1])
    assert abs((first + second).mean().item() / 2 - probs.mean().item()) < 0.01


def test_trainer_applies_the_transform_to_every_batch():
    probs = torch.rand(40, 3, generator=torch.Generator().manual_seed(0))
    seen = []

    def record(batch):
        seen.append(dynamic_binarize(batch)[0])
        return (seen[-1],)

    def fit(seed: int | None):
        if seed is not None:
            torch.manual_seed(seed)
        model = FactorAnalysis(FAConfig(data_dim=3, latent_dim=2))
        Trainer(model, batch_size=10, progress=False).fit((probs,), epochs=2, transform=record)
        runs.append(list(seen))
        seen.clear()

    runs = []
    fit(0), fit(0), fit(None)
    assert len(runs[0]) == 8 and all(set(b.unique().tolist()) <= {0.0, 1.0} for b in runs[0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))  # reproducible from the global seed
    assert not all(torch.equal(a, b) for a, b in zip(runs[1], runs[2]))  # and fit does not reseed it itself


def test_as_sequences_gives_image_rows():
    x = torch.arange(2 * 12.0).reshape(2, 12)
    sequences = as_sequences(x, (3, 4))
    assert sequences.shape == (2, 3, 4) and torch.equal(sequences[1, 2], x[1, 8:12])
    with pytest.raises(DataError, match="shape \\(T, D\\)"):
        as_sequences(x, (12,))


@pytest.mark.parametrize(
    "likelihood, values, phrase",
    [
        ("cb", [0.0, 0.5, 1.2], "must lie in [0, 1] for the continuous Bernoulli likelihood; found values in [0, 1.2]"),
        ("cb", [-0.1, 0.5], "must lie in [0, 1]"),
        ("bernoulli", [0.0, 1.0, 0.5], "exactly 0 or 1 for the Bernoulli likelihood; 1 of 3"),
        ("gaussian", [0.0, float("inf")], "NaN or infinite"),
        ("cb", [0.5, float("nan")], "NaN or infinite"),
    ],
)
def test_validate_support_rejects(likelihood, values, phrase):
    with pytest.raises(DataError) as excinfo:
        validate_support(torch.tensor(values), likelihood, "digits")
    assert_one_line_error(excinfo, "digits: ", phrase)


def test_validate_support_accepts():
    validate_support(torch.tensor([0.0, 0.3, 1.0]), "cb", "digits")
    validate_support(torch.tensor([0.0, 1.0, 1.0]), "bernoulli", "digits")
    validate_support(torch.tensor([-3.0, 1e6]), "gaussian", "digits")


# Data larger than memory (aevb.disk) --------------------------------------------------------------------------
def test_rows_on_disk_are_the_rows_asked_for_in_any_order_across_shards(tmp_path):
    x = np.arange(30 * 4, dtype=np.float32).reshape(30, 4)
    for name, rows in (("a", slice(0, 7)), ("b", slice(7, 8)), ("c", slice(8, 30))):  # one shard of a single row
        np.save(tmp_path / f"{name}.npy", x[rows])
    array = disk.DiskArray(disk.shard_paths(tmp_path))
    positions = np.random.default_rng(0).permutation(30)
    rows = disk.DiskRows(array, positions, transform=lambda t: 2 * t)
    assert len(rows) == 30 and rows.shape == (30, 4)
    asked = torch.tensor([29, 0, 7, 7, 8, 6])  # repeated, unordered, across shards
    torch.testing.assert_close(rows[asked], torch.from_numpy(2 * x[positions[asked.numpy()]]))
    torch.testing.assert_close(rows[3:5], torch.from_numpy(2 * x[positions[3:5]]))
    torch.testing.assert_close(rows[4], torch.from_numpy(2 * x[positions[4]]))
    torch.testing.assert_close(torch.cat(list(rows.chunks())), torch.from_numpy(2 * x[positions]))
    np.testing.assert_array_equal(array.read(np.arange(5, 12)), x[5:12])  # one run per shard: a, b, c
    assert rows[torch.tensor([], dtype=torch.long)].shape == (0, 4)  # none: a rank's slice of a short last batch
    np.save(tmp_path / "big-endian.npy", x.astype(">f4"))
    torch.testing.assert_close(disk.DiskRows(disk.DiskArray([tmp_path / "big-endian.npy"]), np.arange(30))[[3, 1]],
                               torch.from_numpy(x[[3, 1]]))
    (tmp_path / "c.npy").write_bytes((tmp_path / "c.npy").read_bytes()[:-100])  # truncated after it was opened
    with pytest.raises(DataError, match="c.npy: shorter than its header says"):
        array.read(np.array([29]))


@pytest.mark.parametrize("layout", ["shards", "one file over the size"])
def test_data_left_on_disk_fit_to_the_numbers_of_the_same_data_in_memory(tmp_path, monkeypatch, capsys, layout):
    """The same split, batches and draws as the in-memory path: the same fit, evaluation included."""
    x = np.random.default_rng(1).uniform(size=(90, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    if layout == "shards":
        (tmp_path / "shards").mkdir()
        np.save(tmp_path / "shards" / "1.npy", x[:40])
        np.save(tmp_path / "shards" / "2.npy", x[40:])
    flags = ["--epochs", "2", "--batch-size", "20", "--hidden", "8", "--latent-dim", "2", "--iwae", "4", "--json",
             "--no-progress"]
    summaries = []
    for on_disk in (False, True):
        dataset = tmp_path / ("shards" if on_disk and layout == "shards" else "x.npy")
        monkeypatch.setattr(disk, "DISK_ABOVE_BYTES", 0 if on_disk else 1 << 30)
        assert disk.left_on_disk(dataset) == on_disk
        out = tmp_path / f"run-{on_disk}"
        assert cli.main(["fit", "vae", "--dataset", str(dataset), *flags, "--out", str(out)]) == 0
        assert cli.main(["eval", str(out), "--iwae", "4", "--json"]) == 0
        summary, evaluated = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
        summaries.append({k: summary[k] for k in ("train_elbo", "test_elbo", "iwae_log_likelihood")} | {
            "eval": evaluated["test_elbo"]})
    assert summaries[0] == summaries[1]


def test_pixels_left_on_disk_are_dequantized_per_batch_and_read_as_sequences(tmp_path, capsys):
    pixels = np.random.default_rng(2).integers(0, 256, (80, 4, 5)).astype(np.uint8)
    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "a.npy", pixels[:50])
    np.save(tmp_path / "shards" / "b.npy", pixels[50:])
    data = load_dataset(str(tmp_path / "shards"), seed=0)
    assert data.levels == 256 and data.x_test.dtype == torch.uint8 and len(data.x_test) == round(80 / 6)
    x_train, _, x_test, _ = prepare(data, "dequantize", seed=0)
    first = x_train[torch.arange(5)]
    assert first.shape == (5, 20) and ((first >= 0) & (first < 1)).all()
    assert not torch.equal(first, x_train[torch.arange(5)])  # fresh noise for every read, each value in its own bin
    torch.testing.assert_close((first * 256).floor(), (x_train[torch.arange(5)] * 256).floor())
    sequences = as_sequences(x_train, (4, 5))
    assert sequences[torch.arange(3)].shape == (3, 4, 5)
    out = tmp_path / "run"
    assert cli.main(["fit", "vrnn", "--dataset", str(tmp_path / "shards"), "--epochs", "1", "--batch-size", "20",
                     "--hidden", "8", "--latent-dim", "2", "--iwae", "2", "--no-progress", "--json", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and math.isfinite(summary["test_elbo"])  # 67 training rows in batches of 20


# --transform standardize: real values far from unit scale ----------------------------------------------------------
def test_standardize_centres_and_scales_each_value_and_its_offset_is_the_log_jacobian():
    """u = (x - m) / s per value, from the training rows; for any density p of u, x's density (torch's affine
    transform of p) is log p(u) + offset."""
    generator = torch.Generator().manual_seed(0)
    scale, shift = torch.tensor([1e-3, 1.0, 50.0, 2e4]), torch.tensor([0.0, -3.0, 300.0, 1e5])
    x_train = torch.randn(400, 4, generator=generator) * scale + shift
    x_test = torch.randn(50, 4, generator=generator) * scale + shift
    u_train, u_test, offset, (m, s) = standardize(x_train, x_test, None, "x.npy")
    assert torch.allclose(u_train.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(u_train.std(0), torch.ones(4), atol=1e-5)
    mean, std = x_train.double().mean(0), x_train.double().std(0)
    assert torch.allclose(u_test.double(), (x_test.double() - mean) / std, atol=1e-4)
    assert offset == pytest.approx(-std.log().sum().item(), abs=1e-6)  # of s in float32, as applied
    assert torch.equal(u_test * s + m, ((x_test - m) / s) * s + m) and torch.allclose(s.double(), std, rtol=1e-6)
    p_u = torch.distributions.Independent(
        torch.distributions.Normal(torch.full((4,), 0.3, dtype=torch.float64), 1.7), 1)
    p_x = torch.distributions.TransformedDistribution(p_u, torch.distributions.AffineTransform(mean, std, event_dim=1))
    assert torch.allclose(p_x.log_prob(x_test.double()), p_u.log_prob(u_test.double()) + offset, atol=1e-3)


def test_standardize_refuses_integer_pixels_one_example_and_values_without_variation_it_can_hold():
    x = torch.randn(30, 3)
    with pytest.raises(DataError, match="digits: --transform standardize is for real-valued data, and these are "
                                        "integer pixels; use --transform dequantize"):
        standardize(x, x, 17, "digits")
    with pytest.raises(DataError, match="needs at least 2 training examples for a standard deviation, and there is 1$"):
        standardize(x[:1], x, None, "x.npy")
    constant = x.clone()
    constant[:, 1] = 7.0
    with pytest.raises(DataError, match=r"^x.npy: value 1 of each example is constant over the training examples "
                                        r"\(as read, in float32\), so --transform standardize would divide by 0; "
                                        "drop constant values$"):
        standardize(constant, x, None, "x.npy")
    sequences = torch.randn(30, 4, 3)
    sequences[:, 2, 1] = sequences[:, 3, 0] = 1.0
    with pytest.raises(DataError, match=r"^s.npy: values \[2, 1\], \[3, 0\] of each example are constant"):
        standardize(sequences.flatten(1), sequences.flatten(1), None, "s.npy", shape=(4, 3))
    blurred = x.double()
    blurred[:, 2] = 1e5 + 0.03 * blurred[:, 2]  # float32 holds 1e5 to within 0.008: a few distinct values
    with pytest.raises(DataError, match=r"value 2 of each example vary too little for their size \(the first: mean "
                                        r"100000, standard deviation 0.0\d+\) to be read as float32"):
        standardize(blurred.float(), x, None, "x.npy")


def test_standardized_rows_left_on_disk_are_the_rows_standardized_in_memory(tmp_path, monkeypatch):
    x = (np.random.default_rng(3).normal(size=(90, 5)) * [1, 10, 100, 1e3, 1e4]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    prepared = {}
    for on_disk in (False, True):
        monkeypatch.setattr(disk, "DISK_ABOVE_BYTES", 0 if on_disk else 1 << 30)
        data = load_dataset(str(tmp_path / "x.npy"), seed=0)
        x_train, _, x_test, _ = prepare(data, "standardize", seed=0)
        prepared[on_disk] = standardize(x_train, x_test, data.levels, "x.npy")
    (memory_train, memory_test, memory_offset, _), (disk_train, disk_test, disk_offset, _) = prepared.values()
    assert isinstance(disk_train, disk.DiskRows) and disk_offset == pytest.approx(memory_offset, rel=1e-12)
    assert torch.allclose(disk_train[torch.arange(len(memory_train))], memory_train, atol=1e-6)
    assert torch.allclose(disk_test, memory_test, atol=1e-6)


def test_a_fit_of_standardized_data_reports_the_offset_to_the_datas_units(tmp_path, capsys):
    x = (np.random.default_rng(4).normal(size=(240, 6)) * 40 + 500).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x[:200], x_test=x[200:])
    flags = ["fit", "vae", "--dataset", str(tmp_path / "x.npz"), "--likelihood", "gaussian", "--epochs", "2",
             "--hidden", "8", "--latent-dim", "2", "--iwae", "4", "--no-progress", "--json"]
    assert cli.main([*flags, "--out", str(tmp_path / "raw")]) == 2  # unscaled: a non-finite first ELBO
    assert "standardize them (--transform standardize)" in capsys.readouterr().err
    assert cli.main([*flags, "--transform", "standardize", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    expected = -np.log(x[:200].astype(np.float64).std(0, ddof=1)).sum()
    assert summary["transform"] == "standardize" and summary["log_evidence_offset"] == pytest.approx(expected, rel=1e-6)
    assert math.isfinite(summary["iwae_log_likelihood"]) and "standardized data" in summary["preprocessing"]
    assert summary["evidence"] == "log p(u)"  # the bounds are of the standardized data u, not of x
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["data"]["standardization"]
    mean, std = (torch.tensor(recorded[k]) for k in ("mean", "std"))
    assert torch.allclose(mean, torch.from_numpy(x[:200]).mean(0), rtol=1e-5)
    assert -std.double().log().sum().item() == pytest.approx(summary["log_evidence_offset"], rel=1e-12)
    assert cli.main(["sample", str(tmp_path / "run"), "--n", "7", "--seed", "3", "--out", str(tmp_path / "s.npy")]) == 0
    torch.manual_seed(3)
    u = fitting.load_run(tmp_path / "run").model.sample(7)
    assert np.allclose(np.load(tmp_path / "s.npy"), (u * std + mean).numpy(), rtol=1e-5)  # x = m + s u: data units
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    del config["data"]["standardization"]  # as an aevb that did not record them wrote it
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert cli.main(["sample", str(tmp_path / "run"), "--n", "7", "--seed", "3", "--out", str(tmp_path / "u.npy")]) == 0
    assert "these samples are of the standardized data u, not in the data's units" in capsys.readouterr().err
    assert np.allclose(np.load(tmp_path / "u.npy"), u.numpy())
    config["data"]["standardization"] = recorded
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    assert cli.main(["eval", str(tmp_path / "run"), "--iwae", "4", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert evaluated["log_evidence_offset"] == summary["log_evidence_offset"] and evaluated["evidence"] == "log p(u)"
    assert evaluated["iwae_log_likelihood"] == summary["iwae_log_likelihood"]  # the same standardized test set
    assert cli.main(["diagnose", str(tmp_path / "run"), "--examples", "5", "--steps", "2", "--iwae", "4",
                     "--no-progress"]) == 0
    diagnosis = json.loads((tmp_path / "run" / "diagnostics.json").read_text())
    assert diagnosis["evidence"] == "log p(u)" and diagnosis["log_evidence_offset"] == summary["log_evidence_offset"]
    capsys.readouterr()
    refused = [(["--model", "vae"], "outside a cb likelihood's support; use --likelihood gaussian"),
               (["--model", "gmvae"], "gmvae has no Gaussian likelihood: leave out --transform standardize")]
    for model, message in refused:
        assert cli.main(["fit", model[1], "--dataset", str(tmp_path / "x.npz"), "--transform", "standardize",
                         "--out", str(tmp_path / "refused")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "refused").exists()


def test_a_run_read_back_on_a_changed_test_set_says_its_numbers_are_of_other_data(tmp_path, capsys, monkeypatch):
    x = np.random.default_rng(5).uniform(size=(120, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run = tmp_path / "run"
    flags = ["fit", "vae", "--dataset", str(tmp_path / "x.npy"), "--epochs", "2", "--batch-size", "20", "--hidden", "8",
             "--iwae", "2", "--no-progress", "--json"]
    assert cli.main([*flags, "--out", str(run)]) == 0
    assert len(json.loads((run / "config.json").read_text())["data"]["test_sha256"]) == 64
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--iwae", "2", "--json"]) == 0
    assert "warning" not in capsys.readouterr().err  # the same file: the same test set
    step = Trainer.step

    def stop_at_3(self, batch, phase):  # as SIGINT stops a fit
        if self.step_count + 1 == 3:
            self.request_stop(signal.SIGINT)
        return step(self, batch, phase)

    monkeypatch.setattr(Trainer, "step", stop_at_3)
    assert cli.main([*flags, "--out", str(tmp_path / "resumed")]) == 130
    monkeypatch.setattr(Trainer, "step", step)
    np.save(tmp_path / "x.npy", x[::-1].copy())  # the same shape and values, other rows held out
    for command in (["eval", str(run), "--iwae", "2", "--json"],
                    ["diagnose", str(run), "--examples", "4", "--steps", "1", "--iwae", "2", "--json"]):
        capsys.readouterr()
        assert cli.main(command) == 0
        out, err = capsys.readouterr()
        assert err.startswith(f"aevb: warning: the test set of --dataset {tmp_path / 'x.npy'} is not the one this run "
                              "was fitted with"), command
        warning = json.loads(out.splitlines()[-1])["warnings"][0]
        assert warning.endswith("these numbers are of other data than the fit's")
    assert json.loads((run / "diagnostics.json").read_text())["warnings"] == [warning]
    assert cli.main(["report", str(run)]) == 0 and warning in (run / "report.md").read_text()
    checkpoint = (tmp_path / "resumed" / "checkpoint.pt").read_bytes()
    assert cli.main(["resume", str(tmp_path / "resumed"), "--no-progress"]) == 2  # its training would go on elsewhere
    assert capsys.readouterr().err == (
        f"aevb: error: --dataset {tmp_path / 'x.npy'} no longer gives the test set the run {tmp_path / 'resumed'} "
        "began with (the data changed since, or this software splits or transforms them otherwise); resume it on the "
        "data it began with, or fit afresh\n")
    assert (tmp_path / "resumed" / "checkpoint.pt").read_bytes() == checkpoint
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["resume", str(tmp_path / "resumed"), "--no-progress"]) == 0  # on the data it began with
