"""The fetch stage's library: get a data set, check it, cut a class-balanced subset, write it.

Output (``out_dir``, replaced atomically): Parquet shards ``train/part-*.parquet`` and
``test/part-*.parquet`` (uint8 ``(C, H, W)`` pixels + int64 label per row, see ``shards.py``) and
``meta.json`` (source, checksums, counts, class names, shape). Sources, by ``DataConfig.source``:
``fashion-mnist`` / ``mnist`` (official IDX files from a mirror list, local folders first),
``synthetic`` (drawn, no I/O), or a local folder / ``s3://bucket/prefix`` holding either the four
IDX files (raw or ``.gz``) or ``train.npz`` / ``test.npz`` at its top level, or else class
subfolders of images (``images.py``)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.config import DataConfig
from components.data.idx import GZIP_MAGIC, IdxError, gunzip_if_needed, parse_idx
from components.data.images import ImageFolderError, decode_folder, folder_meta, plan_folder
from components.data.shards import FORMAT, write_split
from components.data.synthetic import SYNTHETIC_CLASSES, make_synthetic
from components.io import atomic_dir

# split -> (images file, labels file), names without ".gz"
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DOWNLOAD_TIMEOUT_S = 60

Splits = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images (N, 1, H, W) uint8, labels (N,) int64)


class FetchError(Exception):
    """The data could not be fetched or failed a check; the message is one line saying what to do."""


@dataclass(frozen=True)
class KnownSource:
    """A published data set: where to find its four IDX files and how to check them.

    ``sha256`` is of the decompressed files, so a re-compressed copy (Debian's) still checks.
    ``gz_md5`` (torchvision's table of the upstream ``.gz`` files) is used only where no
    ``sha256`` is known.
    """

    class_names: list[str]
    mirrors: list[str]
    hint: str  # what to do when no mirror has a good copy
    sha256: dict[str, str] = field(default_factory=dict)
    gz_md5: dict[str, str] = field(default_factory=dict)


KNOWN_SOURCES: dict[str, KnownSource] = {
    "fashion-mnist": KnownSource(
        class_names=[
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
        hint="Check the network or apt-get install dataset-fashion-mnist",
        mirrors=[
            "/usr/share/datasets/fashion-mnist/",  # Debian's dataset-fashion-mnist package
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ],
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    ),
    "mnist": KnownSource(
        class_names=[str(d) for d in range(10)],
        hint="Check the network",
        mirrors=[
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
        gz_md5={  # torchvision/datasets/mnist.py
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
}


class _MirrorFailure(Exception):
    """One mirror did not give a good copy of one file (the next mirror is tried)."""


def sha256_hex(payload: bytes) -> str:
    """Hex SHA-256 of ``payload``."""
    return hashlib.sha256(payload).hexdigest()


# --------------------------------------------------------------------------- known data sets
def _read_mirror(mirror: str, filename: str, scratch: Path, progress: bool) -> bytes:
    """The bytes of ``filename`` (``.gz`` preferred) from a local folder or an http(s) base URL."""
    if not mirror.startswith(("http://", "https://")):
        folder = Path(mirror).expanduser()
        for candidate in (folder / f"{filename}.gz", folder / filename):
            if candidate.is_file():
                return candidate.read_bytes()
        raise _MirrorFailure("not found")
    url = mirror.rstrip("/") + f"/{filename}.gz"
    fd, tmp_name = tempfile.mkstemp(dir=scratch, suffix=".download")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar = _progress_bar(total, f"{filename}.gz") if progress else None
            while chunk := response.read(1 << 20):
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        return Path(tmp_name).read_bytes()
    except (OSError, ValueError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
        raise _MirrorFailure(f"unreachable: {getattr(exc, 'reason', exc)}") from None
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _progress_bar(total: int | None, desc: str) -> Any:
    from tqdm import tqdm  # only the command-line stage shows progress

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, leave=False)


def _verify(filename: str, payload: bytes, raw: bytes, known: KnownSource) -> None:
    """Check one file against the known checksums; raise _MirrorFailure on a mismatch."""
    if want := known.sha256.get(filename):
        if (got := sha256_hex(raw)) != want:
            raise _MirrorFailure(f"checksum mismatch: sha256 of the content {got[:16]}..., expected {want[:16]}...")
        return
    if (want := known.gz_md5.get(f"{filename}.gz")) and payload.startswith(GZIP_MAGIC):
        if (got := hashlib.md5(payload).hexdigest()) != want:
            raise _MirrorFailure(
                f"checksum mismatch: md5 of the .gz {got}, expected {want} (a re-compressed copy "
                "cannot be checked: point data.source at its folder instead)"
            )
        return
    raise _MirrorFailure("no known checksum for an uncompressed copy (point data.source at its folder instead)")


def _fetch_known(known: KnownSource, mirrors: list[str], scratch: Path, progress: bool) -> tuple[dict[str, bytes], str]:
    """Get the four IDX files, each from the first mirror with a good copy.

    Returns:
        ``{filename: decompressed bytes}`` and the mirror(s) used, comma-separated.
    """
    raw_files: dict[str, bytes] = {}
    used: list[str] = []
    for filename in [name for pair in IDX_FILES.values() for name in pair]:
        tried = []
        for mirror in mirrors:
            try:
                payload = _read_mirror(mirror, filename, scratch, progress)
                raw = gunzip_if_needed(payload, filename)
                _verify(filename, payload, raw, known)
            except (_MirrorFailure, IdxError) as exc:
                tried.append(f"{mirror} ({exc})")
                continue
            raw_files[filename] = raw
            used += [mirror] if mirror not in used else []
            break
        else:
            raise FetchError(
                f"{filename}: no good copy; tried {'; '.join(tried)}. {known.hint}, "
                "or set data.mirrors to a folder holding the file"
            )
    return raw_files, ", ".join(used)


# --------------------------------------------------------------------------- folders (local or S3)
def _splits_from_idx(raw_files: dict[str, bytes], where: str) -> Splits:
    """Parse and cross-check the images and labels of both splits."""
    splits: Splits = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        try:
            images = parse_idx(raw_files[images_name], f"{where}/{images_name}")
            labels = parse_idx(raw_files[labels_name], f"{where}/{labels_name}")
        except IdxError as exc:
            raise FetchError(f"{exc}: the file is corrupt, replace it") from None
        splits[split] = _checked(images, labels, f"{where}/{images_name}")
    return splits


def _checked(images: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and normalise one split to ``(N, 1, H, W)`` uint8 and ``(N,)`` int64."""
    if images.ndim == 3:
        images = images[:, None]  # (N, H, W) -> (N, 1, H, W)
    if images.dtype != np.uint8 or images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise FetchError(
            f"{what}: expected uint8 images (N, H, W) and N labels, got {images.dtype} "
            f"{images.shape} and labels {labels.shape}: fix the source files"
        )
    if len(labels) == 0 or labels.min() < 0:
        raise FetchError(f"{what}: empty split or negative labels: fix the source files")
    return images, labels.astype(np.int64)


def _splits_from_folder(names: set[str], read: Callable[[str], bytes], where: str) -> tuple[Splits, dict[str, str]]:
    """Load ``train.npz``/``test.npz`` or the four IDX files (raw or ``.gz``) through ``read``."""
    if {"train.npz", "test.npz"} <= names:
        splits, hashes = {}, {}
        for split in IDX_FILES:
            payload = read(f"{split}.npz")
            hashes[f"{split}.npz"] = sha256_hex(payload)
            try:
                with np.load(io.BytesIO(payload)) as npz:
                    splits[split] = _checked(npz["images"], npz["labels"], f"{where}/{split}.npz")
            except (OSError, ValueError, KeyError) as exc:
                raise FetchError(
                    f"{where}/{split}.npz: unreadable ({exc}); it needs arrays 'images' and 'labels'"
                ) from None
        return splits, hashes
    raw_files, missing = {}, []
    for name in [n for pair in IDX_FILES.values() for n in pair]:
        stored = next((c for c in (f"{name}.gz", name) if c in names), None)
        if stored is None:
            missing.append(name)
            continue
        try:
            raw_files[name] = gunzip_if_needed(read(stored), f"{where}/{stored}")
        except IdxError as exc:
            raise FetchError(f"{exc}: the file is corrupt, replace it") from None
    if missing:
        raise FetchError(f"{where}: missing {', '.join(missing)} (need train.npz and test.npz, or the 4 IDX files)")
    return _splits_from_idx(raw_files, where), {n: sha256_hex(b) for n, b in raw_files.items()}


def _local_folder(source: str) -> tuple[list[str], Callable[[str], bytes]]:
    """A recursive listing of a local folder (relative POSIX paths, folders end with ``/``; hidden names
    skipped) and a reader of one relative path."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise FetchError(f"data.source={source!r}: not fashion-mnist, mnist, synthetic, an s3:// URI or a folder")
    entries = []
    for here, dirs, files in os.walk(folder, followlinks=True):  # as torchvision's ImageFolder
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(here).relative_to(folder).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        entries += [f"{prefix}{d}/" for d in dirs] + [f"{prefix}{f}" for f in sorted(files) if not f.startswith(".")]
    return entries, lambda name: (folder / name).read_bytes()


def _s3_folder(uri: str, cfg: DataConfig) -> tuple[list[str], Callable[[str], bytes]]:
    """List every object under ``s3://bucket/prefix`` (relative keys); credentials come from the environment only."""
    import boto3
    from botocore.config import Config

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or cfg.s3_endpoint_url
    # A fresh session, not boto3's cached default one, so credentials are read from the environment now.
    session = boto3.session.Session()
    client = session.client(
        "s3",
        endpoint_url=endpoint,
        region_name=session.region_name or "us-east-1",
        config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2}, max_pool_connections=16),
    )
    try:
        entries = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            relative = (obj["Key"].removeprefix(prefix) for obj in page.get("Contents", []))
            entries += [name for name in relative if name and not any(p.startswith(".") for p in name.split("/"))]
    except Exception as exc:  # noqa: BLE001 - botocore raises many types; _s3_error sorts them
        raise _s3_error(uri, endpoint, exc) from None
    entries.sort()

    def read(name: str) -> bytes:
        try:
            return client.get_object(Bucket=bucket, Key=prefix + name)["Body"].read()
        except Exception as exc:  # noqa: BLE001
            raise _s3_error(f"{uri.rstrip('/')}/{name}", endpoint, exc) from None

    return entries, read


# S3 error codes that mean "these credentials are wrong" (SeaweedFS/AWS/MinIO spellings)
_CREDENTIAL_ERRORS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken"}


def _s3_error(uri: str, endpoint: str | None, exc: Exception) -> FetchError:
    """Turn a boto3 exception into a one-line FetchError that says what to do."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError

    where = endpoint or "AWS"
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return FetchError(
            f"{uri}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or ~/.aws/credentials)"
        )
    if isinstance(exc, EndpointConnectionError) or "Timeout" in type(exc).__name__:
        return FetchError(
            f"{uri}: cannot reach S3 endpoint {where}: start the server or set AWS_ENDPOINT_URL / data.s3_endpoint_url"
        )
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "?")
        if code in _CREDENTIAL_ERRORS:
            return FetchError(
                f"{uri}: S3 rejected the credentials ({code}) at {where}: check AWS_ACCESS_KEY_ID "
                "and AWS_SECRET_ACCESS_KEY"
            )
        if code in ("NoSuchBucket", "NoSuchKey", "404"):
            return FetchError(f"{uri}: {code} at {where}: create it, upload the data, or fix data.source")
        return FetchError(f"{uri}: S3 error {code} at {where}: {exc}")
    return FetchError(f"{uri}: S3 request to {where} failed: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- subset, pad, write
def balanced_subset(labels: np.ndarray, n: int, seed: int, split: str) -> np.ndarray:
    """Sorted indices of a class-balanced, seed-deterministic subset of ``n`` items.

    Args:
        labels: ``(N,)`` class indices.
        n: subset size; each class gets ``n // K`` items, the first ``n % K`` classes one more.
        seed: the subset depends only on ``seed``, ``split`` and ``labels``.
        split: ``train`` or ``test`` (the two splits draw independently).

    Returns:
        ``(n,)`` int64 indices into ``labels``, ascending.
    """
    if n > len(labels):
        raise FetchError(
            f"data.{split}_subset={n} is larger than the {split} split ({len(labels)}): lower it or use null"
        )
    classes = np.unique(labels)
    quotas = np.full(len(classes), n // len(classes)) + (np.arange(len(classes)) < n % len(classes))
    rng = np.random.default_rng([seed, list(IDX_FILES).index(split)])
    picked = []
    for cls, quota in zip(classes, quotas):
        members = np.flatnonzero(labels == cls)
        if len(members) < quota:
            raise FetchError(f"data.{split}_subset={n}: class {cls} has only {len(members)} images: lower the subset")
        picked.append(rng.choice(members, size=quota, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _resize(images: np.ndarray, size: int, what: str) -> np.ndarray:
    """Zero-pad 28x28 to 32x32 (2 pixels a side) when asked; any other mismatch is an error."""
    h, w = images.shape[-2:]
    if (h, w) == (28, 28) and size == 32:
        return np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)))  # (N, C, 32, 32)
    if (h, w) != (size, size):
        raise FetchError(f"{what}: images are {h}x{w} but data.image_size={size}: set data.image_size to match")
    return images


def _prepare(splits: Splits, cfg: DataConfig, where: str) -> Splits:
    """Apply the configured subsets and padding; both splits must end with the same image shape."""
    subsets = {"train": cfg.train_subset, "test": cfg.test_subset}
    out: Splits = {}
    for split, (images, labels) in splits.items():
        if images.shape[1] != cfg.channels:
            raise FetchError(f"{where} {split}: images have {images.shape[1]} channel(s) but "
                             f"data.channels={cfg.channels}: set data.channels: {images.shape[1]}")
        if subsets[split] is not None:
            keep = balanced_subset(labels, subsets[split], cfg.seed, split)
            images, labels = images[keep], labels[keep]
        out[split] = (_resize(images, cfg.image_size, f"{where} {split}"), labels)
    if out["train"][0].shape[1:] != out["test"][0].shape[1:]:
        raise FetchError(
            f"{where}: train images are {out['train'][0].shape[1:]} but test images are "
            f"{out['test'][0].shape[1:]}: fix the source files"
        )
    return out


@dataclass
class Loaded:
    """What a source gives before subsets and padding."""

    splits: Splits
    class_names: list[str] | None  # None = "0", "1", ... from the labels
    raw_sha256: dict[str, str]  # of the source files
    mirror: str  # where it came from
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific facts for meta.json


# names that make a folder an IDX/npz source (otherwise it is read as an image folder)
_ARRAY_FILES = {"train.npz", "test.npz"} | {
    f"{name}{gz}" for pair in IDX_FILES.values() for name in pair for gz in ("", ".gz")}


def _folder_source(cfg: DataConfig) -> Loaded:
    """A local folder or S3 prefix: IDX/npz files at its top level, else class subfolders of images."""
    where = cfg.source.rstrip("/")
    entries, read = _s3_folder(cfg.source, cfg) if cfg.source.startswith("s3://") else _local_folder(cfg.source)
    top = {e for e in entries if "/" not in e}
    if top & _ARRAY_FILES:
        splits, hashes = _splits_from_folder(top, read, where)
        return Loaded(splits, None, hashes, cfg.source)
    try:
        plan = plan_folder(entries, where, cfg.test_fraction, cfg.seed)
        decoded = decode_folder(plan, read, where, cfg.channels, cfg.image_size, cfg.skip_unreadable)
    except ImageFolderError as exc:
        if not any("/" in e for e in entries):  # loose files only: say both ways to lay it out
            raise FetchError(f"{exc}; or put train.npz and test.npz, or the 4 IDX files "
                             "(train-images-idx3-ubyte[.gz], ...), in it") from None
        raise FetchError(str(exc)) from None
    for split, (images, _) in decoded.splits.items():
        if len(images) == 0:
            raise FetchError(f"{where}: no decodable images for the {split} split: add images "
                             "(each class needs 2 or more for a held-out split)")
    return Loaded(decoded.splits, plan.class_names, {"image-folder": decoded.source_sha256}, cfg.source,
                  folder_meta(plan, decoded))


def _load(cfg: DataConfig, scratch: Path, progress: bool) -> Loaded:
    """Dispatch on ``cfg.source``."""
    if cfg.source in KNOWN_SOURCES:
        known = KNOWN_SOURCES[cfg.source]
        raw_files, mirror = _fetch_known(known, cfg.mirrors or known.mirrors, scratch, progress)
        hashes = {name: sha256_hex(payload) for name, payload in raw_files.items()}
        return Loaded(_splits_from_idx(raw_files, mirror.rstrip("/")), known.class_names, hashes, mirror)
    if cfg.source == "synthetic":
        # Distinct seeds per split (2s, 2s+1) so test images are never copies of train images.
        # Drawn at 28 px (32 pads it, as for the IDX sets) or at 64 px.
        size = 64 if cfg.image_size == 64 else 28
        train = make_synthetic(cfg.synthetic_train_size, 2 * cfg.seed, size)
        test = make_synthetic(cfg.synthetic_test_size, 2 * cfg.seed + 1, size)
        return Loaded({"train": train, "test": test}, SYNTHETIC_CLASSES, {}, "generated")
    return _folder_source(cfg)


def fetch(cfg: DataConfig, out_dir: str | Path, progress: bool = False) -> dict[str, Any]:
    """Fetch ``cfg.source`` and write Parquet shards and ``meta.json`` to ``out_dir`` (see shards.py).

    Everything happens inside one atomic folder: a failure leaves ``out_dir`` as it was.

    Args:
        cfg: the ``data`` section of the pipeline config.
        out_dir: output folder (``data/prepared``).
        progress: show tqdm bars for downloads.

    Returns:
        The ``meta.json`` content.

    Raises:
        FetchError: a one-line message naming the file or URI and what to do.
    """
    with atomic_dir(out_dir) as tmp:
        loaded = _load(cfg, tmp, progress)
        splits, mirror = loaded.splits, loaded.mirror
        num_classes = int(max(labels.max() for _, labels in splits.values())) + 1
        class_names = loaded.class_names or [str(i) for i in range(num_classes)]
        if num_classes > len(class_names):
            raise FetchError(f"{mirror}: label {num_classes - 1} out of range for {len(class_names)} classes")
        splits = _prepare(splits, cfg, mirror)
        shards = {split: write_split(tmp, split, images, labels, cfg.shard_mb)
                  for split, (images, labels) in splits.items()}
        meta = {
            "format": FORMAT,
            "source": cfg.source,
            "name": cfg.name,
            "shape": list(splits["train"][0].shape[1:]),
            "class_names": class_names,
            "counts": {split: len(labels) for split, (_, labels) in splits.items()},
            "class_counts": {s: np.bincount(y, minlength=len(class_names)).tolist() for s, (_, y) in splits.items()},
            "raw_sha256": loaded.raw_sha256,
            "shards": shards,
            "prepared_sha256": {r["file"]: r["sha256"] for records in shards.values() for r in records},
            "seed": cfg.seed,
            "train_subset": cfg.train_subset,
            "test_subset": cfg.test_subset,
            "mirror": mirror,
            "skipped_unreadable": 0,
            **loaded.extra,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta
