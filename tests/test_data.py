"""The fetch stage: IDX files, the synthetic set, checksums, subsets, atomic output, the CLI."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from project import run_stage

from components.config import DataConfig
from components.data.dataset import load_split
from components.data.fetch import IDX_FILES, KNOWN_SOURCES, FetchError, balanced_subset, fetch
from components.data.idx import IdxError, idx_bytes, read_idx, write_idx
from components.data.synthetic import SYNTHETIC_CLASSES, make_synthetic

REPO = Path(__file__).resolve().parents[1]
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def tiny_splits(n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random 28x28 uint8 images with balanced labels 0..9: ``{split: (images (N,28,28), labels (N,))}``."""
    rng = np.random.default_rng(seed)
    return {
        split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), (np.arange(n) % 10).astype(np.uint8))
        for split, n in (("train", n_train), ("test", n_test))
    }


def write_idx_folder(folder: Path, splits: dict, gz: bool = True) -> dict[str, str]:
    """Write the four IDX files; return the sha256 of each decompressed file (a hash table to inject)."""
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        for name, array in ((images_name, splits[split][0]), (labels_name, splits[split][1])):
            write_idx(folder / (f"{name}.gz" if gz else name), array, gzip=gz)
            hashes[name] = hashlib.sha256(idx_bytes(array)).hexdigest()
    return hashes


@pytest.fixture
def fake_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """A mirror folder with tiny IDX files, and Fashion-MNIST's hash table patched to match them."""
    splits = tiny_splits()
    mirror = tmp_path / "mirror"
    hashes = write_idx_folder(mirror, splits)
    for name, digest in hashes.items():
        monkeypatch.setitem(KNOWN_SOURCES["fashion-mnist"].sha256, name, digest)
    return mirror, splits


# --------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_balanced_and_well_formed() -> None:
    images, labels = make_synthetic(200, seed=3)
    again, labels_again = make_synthetic(200, seed=3)
    other, _ = make_synthetic(200, seed=4)
    assert images.shape == (200, 1, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and len(SYNTHETIC_CLASSES) == 10
    assert images.tobytes() == again.tobytes() and np.array_equal(labels, labels_again)
    assert images.tobytes() != other.tobytes()
    assert np.bincount(labels, minlength=10).tolist() == [20] * 10
    # every image has something drawn on a mostly black background
    assert (images.reshape(200, -1).max(1) > 100).all()
    assert np.median(images) == 0
    assert make_synthetic(30, seed=0, image_size=32)[0].shape == (30, 1, 32, 32)


def test_synthetic_classes_are_separable() -> None:
    """A linear model on translation-invariant features (|FFT|) must tell the classes apart."""
    (x, y), (xt, yt) = make_synthetic(2000, seed=0), make_synthetic(500, seed=1)

    def features(a: np.ndarray) -> np.ndarray:
        return np.abs(np.fft.fft2(a[:, 0] / 255.0)).reshape(len(a), -1)  # (N, 784)

    f, ft = features(x), features(xt)
    weights = np.linalg.solve(f.T @ f + np.eye(f.shape[1]), f.T @ np.eye(10)[y])
    accuracy = ((ft @ weights).argmax(1) == yt).mean()
    assert accuracy > 0.85, accuracy


# --------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-5, 0, 70000], dtype=np.int32),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2),
    ],
)
def test_idx_round_trip(tmp_path: Path, array: np.ndarray, gz: bool) -> None:
    path = write_idx(tmp_path / "x.idx", array, gzip=gz)
    assert path.read_bytes().startswith(b"\x1f\x8b") == gz
    for source in (path, path.read_bytes()):
        back = read_idx(source)
        assert back.dtype == array.dtype.newbyteorder("=") and back.shape == array.shape
        np.testing.assert_array_equal(back, array)
    assert idx_bytes(np.zeros((7, 28, 28), np.uint8))[:16] == bytes.fromhex("00000803 00000007 0000001c 0000001c")


def test_corrupt_idx_is_rejected(tmp_path: Path) -> None:
    good = idx_bytes(np.ones((5, 28, 28), np.uint8))
    with pytest.raises(IdxError, match="truncated"):
        read_idx(good[:-1])
    with pytest.raises(IdxError, match="trailing"):
        read_idx(good + b"\0")
    with pytest.raises(IdxError, match="magic"):
        read_idx(b"\x01\x02" + good[2:])
    with pytest.raises(IdxError, match="magic"):
        read_idx(good[:2] + b"\x07" + good[3:])  # unknown dtype code
    flipped = bytearray(gzip.compress(good))
    flipped[len(flipped) // 2] ^= 0xFF
    path = tmp_path / "bad.gz"
    path.write_bytes(bytes(flipped))
    with pytest.raises(IdxError, match="bad.gz.*gzip"):
        read_idx(path)


def test_corrupt_file_in_local_folder_is_a_fetch_error(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    write_idx_folder(folder, tiny_splits())
    target = folder / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-10])  # truncated gzip
    with pytest.raises(FetchError, match="t10k-labels-idx1-ubyte.gz.*corrupt"):
        fetch(DataConfig(source=str(folder)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- known sources, checksums
def test_known_source_from_local_mirror(tmp_path: Path, fake_fashion: tuple[Path, dict]) -> None:
    mirror, splits = fake_fashion
    cfg = DataConfig(source="fashion-mnist", mirrors=[str(tmp_path / "absent"), str(mirror)])
    meta = fetch(cfg, tmp_path / "out")
    assert meta["mirror"] == str(mirror)
    assert meta["counts"] == {"train": 40, "test": 20} and meta["shape"] == [1, 28, 28]
    assert meta["class_names"][0] == "T-shirt/top" and meta["class_counts"]["train"] == [4] * 10
    assert meta["raw_sha256"] == KNOWN_SOURCES["fashion-mnist"].sha256
    train = load_split(tmp_path / "out", "train")
    np.testing.assert_array_equal(train.images[:, 0], splits["train"][0])
    assert json.loads((tmp_path / "out" / "meta.json").read_text()) == meta
    assert sorted(meta["prepared_sha256"]) == ["test/part-00000.parquet", "train/part-00000.parquet"]
    for name, want in meta["prepared_sha256"].items():
        assert hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest() == want


def test_checksum_catches_a_flipped_byte(tmp_path: Path, fake_fashion: tuple[Path, dict]) -> None:
    mirror, splits = fake_fashion
    images = splits["train"][0].copy()
    images[3, 10, 10] ^= 1  # a valid IDX file, gzip intact, one pixel off
    write_idx(mirror / "train-images-idx3-ubyte.gz", images, gzip=True)
    with pytest.raises(FetchError) as info:
        fetch(DataConfig(source="fashion-mnist", mirrors=[str(mirror)]), tmp_path / "out")
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and "checksum mismatch" in message and "\n" not in message
    assert not (tmp_path / "out").exists()


def test_known_source_over_http(tmp_path: Path, fake_fashion: tuple[Path, dict]) -> None:
    """The download path (urllib, temp file, progress bar) against a local HTTP server."""
    mirror, splits = fake_fashion
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        cfg = DataConfig(source="fashion-mnist", mirrors=[f"{base}/absent/", f"{base}/{mirror.name}/"])
        meta = fetch(cfg, tmp_path / "out", progress=True)
    finally:
        server.shutdown()
        server.server_close()
    assert meta["mirror"] == f"{base}/{mirror.name}/"
    np.testing.assert_array_equal(load_split(tmp_path / "out", "test").labels, splits["test"][1])
    assert not list((tmp_path / "out").glob("*.download"))


def test_all_mirrors_failing_lists_what_was_tried(tmp_path: Path) -> None:
    mirrors = [str(tmp_path / "nowhere"), "http://127.0.0.1:9/"]  # port 9: nothing listens
    with pytest.raises(FetchError) as info:
        fetch(DataConfig(source="mnist", mirrors=mirrors), tmp_path / "out")
    message = str(info.value)
    assert message.startswith("train-images-idx3-ubyte: no good copy")
    assert f"{mirrors[0]} (not found)" in message and "http://127.0.0.1:9/ (unreachable" in message


def test_mnist_checks_upstream_gz_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mnist"
    write_idx_folder(mirror, tiny_splits())
    for path in mirror.iterdir():
        monkeypatch.setitem(KNOWN_SOURCES["mnist"].gz_md5, path.name, hashlib.md5(path.read_bytes()).hexdigest())
    meta = fetch(DataConfig(source="mnist", mirrors=[str(mirror)]), tmp_path / "out")
    assert meta["class_names"] == [str(d) for d in range(10)] and meta["counts"]["test"] == 20
    # a re-compressed copy of the same content has another .gz md5: refused, with the way out named
    target = mirror / "t10k-images-idx3-ubyte.gz"
    target.write_bytes(gzip.compress(gzip.decompress(target.read_bytes()), compresslevel=1, mtime=1))
    with pytest.raises(FetchError, match="t10k-images-idx3-ubyte.*md5 of the .gz.*data.source"):
        fetch(DataConfig(source="mnist", mirrors=[str(mirror)]), tmp_path / "out2")


# --------------------------------------------------------------------------- atomic output
def test_failed_fetch_leaves_nothing_and_keeps_a_good_output(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    bad = DataConfig(source=str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FetchError, match="empty: no images: lay it out as.*or the 4 IDX files"):
        fetch(bad, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no output, no temp folder

    fetch(DataConfig(source="synthetic", synthetic_train_size=50, synthetic_test_size=20), out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(FetchError):
        fetch(DataConfig(source="synthetic", synthetic_train_size=50, train_subset=60), out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "prepared"]


# --------------------------------------------------------------------------- subset, padding, local folders
def test_balanced_subset_is_balanced_and_deterministic() -> None:
    labels = np.repeat(np.arange(10), 30)
    idx = balanced_subset(labels, 25, seed=1, split="train")
    assert np.bincount(labels[idx], minlength=10).tolist() == [3] * 5 + [2] * 5
    assert len(np.unique(idx)) == 25 and (np.diff(idx) > 0).all()
    assert np.array_equal(idx, balanced_subset(labels, 25, seed=1, split="train"))
    assert not np.array_equal(idx, balanced_subset(labels, 25, seed=2, split="train"))
    assert not np.array_equal(idx, balanced_subset(labels, 25, seed=1, split="test"))
    with pytest.raises(FetchError, match="data.train_subset=301 is larger than the train split"):
        balanced_subset(labels, 301, seed=1, split="train")
    with pytest.raises(FetchError, match="class 9 has only 1"):
        balanced_subset(np.r_[np.repeat(np.arange(9), 10), 9], 20, seed=0, split="test")


def test_subset_and_padding_in_fetch(tmp_path: Path) -> None:
    base = {"source": "synthetic", "synthetic_train_size": 300, "synthetic_test_size": 100, "seed": 5}
    meta = fetch(DataConfig(**base, train_subset=50, test_subset=30), tmp_path / "a")
    assert meta["counts"] == {"train": 50, "test": 30}
    assert meta["class_counts"]["train"] == [5] * 10 and meta["class_counts"]["test"] == [3] * 10
    assert meta["class_names"] == SYNTHETIC_CLASSES and meta["raw_sha256"] == {}
    again = fetch(DataConfig(**base, train_subset=50, test_subset=30), tmp_path / "b")
    assert again["prepared_sha256"] == meta["prepared_sha256"]

    padded = fetch(DataConfig(**base, image_size=32), tmp_path / "c")
    plain = fetch(DataConfig(**base), tmp_path / "d")
    assert padded["shape"] == [1, 32, 32] and plain["shape"] == [1, 28, 28]
    big, small = load_split(tmp_path / "c", "train").images, load_split(tmp_path / "d", "train").images
    np.testing.assert_array_equal(big[:, :, 2:30, 2:30], small)
    assert big[:, :, :2].max() == 0 and big[:, :, :, 30:].max() == 0


def test_local_folder_with_npz_and_raw_idx(tmp_path: Path) -> None:
    splits = tiny_splits(seed=1)
    npz_dir = tmp_path / "npz_set"
    npz_dir.mkdir()
    for split, (images, labels) in splits.items():
        np.savez(npz_dir / f"{split}.npz", images=images, labels=labels.astype(np.int32))
    meta = fetch(DataConfig(source=str(npz_dir)), tmp_path / "out")
    assert meta["name"] == "local-npz_set" and meta["mirror"] == str(npz_dir)
    assert meta["class_names"] == [str(i) for i in range(10)] and set(meta["raw_sha256"]) == {"train.npz", "test.npz"}
    test = load_split(tmp_path / "out", "test")
    np.testing.assert_array_equal(test.images[:, 0], splits["test"][0])
    assert test.labels.dtype == np.int64

    idx_dir = tmp_path / "raw_idx"
    write_idx_folder(idx_dir, splits, gz=False)
    meta = fetch(DataConfig(source=str(idx_dir), image_size=32), tmp_path / "out")
    assert meta["shape"] == [1, 32, 32] and meta["counts"] == {"train": 40, "test": 20}


def test_unknown_source_is_a_fetch_error(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="not fashion-mnist, mnist, synthetic"):
        fetch(DataConfig(source=str(tmp_path / "no-such-folder")), tmp_path / "out")


# --------------------------------------------------------------------------- the real data
@pytest.mark.skipif(
    not DEBIAN_FASHION.is_dir(), reason=f"{DEBIAN_FASHION} absent (apt-get install dataset-fashion-mnist)"
)
def test_real_fashion_mnist_from_debian(tmp_path: Path) -> None:
    meta = fetch(DataConfig(source="fashion-mnist", mirrors=[str(DEBIAN_FASHION)]), tmp_path / "out")
    assert meta["counts"] == {"train": 60000, "test": 10000}
    assert meta["class_counts"] == {"train": [6000] * 10, "test": [1000] * 10}
    assert meta["raw_sha256"] == KNOWN_SOURCES["fashion-mnist"].sha256  # verified, not just recorded
    test = load_split(tmp_path / "out", "test")
    assert test.images.shape == (10000, 1, 28, 28) and 60 < test.images.mean() < 80  # Fashion-MNIST mean ~72.9


def test_default_mirrors_put_debian_first() -> None:
    assert KNOWN_SOURCES["fashion-mnist"].mirrors[0] == "/usr/share/datasets/fashion-mnist/"
    assert all(m.startswith("https://") for m in KNOWN_SOURCES["mnist"].mirrors)


# --------------------------------------------------------------------------- the stage entry point
def run_fetch(*args: str) -> subprocess.CompletedProcess:
    return run_stage(REPO, "fetch", *args, check=False, timeout=120, tracking="local")


def test_stage_cli(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        "train: {gan: {family: gan}}\n"
        "data: {source: synthetic, synthetic_train_size: 120, synthetic_test_size: 40}\n"
    )
    out = tmp_path / "prepared"
    done = run_fetch("--params", str(params), "--out", str(out), "--set", "data.train_subset=60")
    assert done.returncode == 0, done.stderr
    assert "train=60 test=40" in done.stdout and "synthetic" in done.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "meta.json", "test", "test/part-00000.parquet", "train", "train/part-00000.parquet"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train_subset"] == 60 and meta["class_counts"]["train"] == [6] * 10
    assert load_split(out, "train").images.shape == (60, 1, 28, 28)

    bad = run_fetch("--params", str(params), "--out", str(tmp_path / "x"), "--set", "data.image_size=30")
    assert bad.returncode == 2 and "data.image_size" in bad.stderr
    missing = run_fetch("--params", str(params), "--out", str(tmp_path / "x"), "--set", f"data.source={tmp_path}/nope")
    assert missing.returncode == 1 and missing.stderr.startswith("error: data.source=")
    assert not (tmp_path / "x").exists()
