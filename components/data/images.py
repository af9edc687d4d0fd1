"""Image-folder source: labelled images in class subfolders, as torchvision's ``ImageFolder``.

Accepted layouts (local folder or ``s3://bucket/prefix``)::

    root/<class name>/**/*.png|jpg|jpeg|webp            split into train/test by data.test_fraction
    root/train/<class name>/...  root/test/<class name>/...   the given split is kept

Class names are the sorted names of the class folders that hold at least one image (an empty
class folder is listed in ``meta.json`` and gets no label). Other files (``.txt``, ``.DS_Store``)
are ignored and counted. Every image is decoded with Pillow once, converted to ``data.channels``
(1 = ``L``, 3 = ``RGB``), and resized so its shorter side is ``data.image_size`` then centre-cropped.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
LAYOUT_HINT = ("lay it out as <root>/<class name>/*.png|jpg|jpeg|webp, one folder per class (optionally under "
               "<root>/train/ and <root>/test/); the folder names are the labels")


class ImageFolderError(Exception):
    """A layout that cannot be used or an image that cannot be decoded; the message is one line."""


@dataclass
class FolderPlan:
    """Which file goes to which split with which label, before anything is decoded."""

    class_names: list[str]
    items: dict[str, list[tuple[str, int]]]  # split -> [(relative path, label)], sorted
    layout: str  # "class-folders" or "train-test-folders"
    empty_class_folders: list[str] = field(default_factory=list)
    ignored_files: int = 0


def is_image(path: str) -> bool:
    """Whether ``path`` has one of the image extensions (case-insensitive)."""
    return path.lower().endswith(IMAGE_EXTENSIONS)


def plan_folder(entries: list[str], where: str, test_fraction: float, seed: int) -> FolderPlan:
    """Decide labels and splits from a recursive listing.

    Args:
        entries: relative POSIX paths under the root; folders end with ``/`` (so empty ones show).
        where: the root, for messages.
        test_fraction: share of each class held out when there are no ``train/`` and ``test/`` folders.
        seed: the held-out draw and the order of the rows depend only on ``seed`` and the file names.

    Raises:
        ImageFolderError: no class subfolders, images outside them, or a test class unknown to train.
    """
    files = [e for e in entries if not e.endswith("/")]
    images = [f for f in files if is_image(f)]
    if not any("/" in f for f in images):
        found = f"{len(images)} images directly in it but no class subfolders" if images else "no images"
        raise ImageFolderError(f"{where}: {found}: {LAYOUT_HINT}")
    tops = {e.split("/", 1)[0] for e in entries if "/" in e}
    presplit = {"train", "test"} <= tops
    if presplit and (stray := sorted({f.split("/", 1)[0] for f in images} - {"train", "test"})):
        raise ImageFolderError(f"{where}: has train/ and test/ but also images in {', '.join(stray)}: "
                               "put every class folder under both train/ and test/")
    groups: dict[str, dict[str, list[str]]] = {}  # "" (no given split) / "train" / "test" -> class -> paths
    empty: list[str] = []
    for root in ("train", "test") if presplit else ("",):
        prefix = f"{root}/" if root else ""
        if presplit and (loose := [f for f in images if f.startswith(prefix) and f.count("/") == 1]):
            raise ImageFolderError(f"{where}/{loose[0]}: not in a class folder: move it into "
                                   f"{where}/{prefix}<class name>/")
        groups[root], folders = _classes_under(entries, prefix)
        empty += sorted(prefix + f for f in folders - set(groups[root]))
    class_names = sorted(groups["train" if presplit else ""])
    if presplit and (unknown := sorted(set(groups["test"]) - set(class_names))):
        raise ImageFolderError(f"{where}/test/: classes {', '.join(unknown)} have no images in {where}/train/: "
                               "every test class needs training images")
    index = {name: i for i, name in enumerate(class_names)}
    if presplit:
        items = {s: sorted((p, index[c]) for c, paths in groups[s].items() for p in paths) for s in ("train", "test")}
    else:
        items = _split_classes(groups[""], index, test_fraction, seed)
    # Files come sorted, so grouped by class; shuffled (by seed) so that the contiguous shares Ray
    # Data gives each rank hold every class, as Fashion-MNIST's own order does.
    rng = np.random.default_rng([seed, 1])
    items = {split: [v[i] for i in rng.permutation(len(v))] for split, v in sorted(items.items())}
    used = sum(len(v) for v in items.values())
    return FolderPlan(class_names, items, "train-test-folders" if presplit else "class-folders", sorted(empty),
                      ignored_files=len(files) - used)


def _classes_under(entries: list[str], prefix: str) -> tuple[dict[str, list[str]], set[str]]:
    """Under ``prefix``: class folder -> its image paths (any depth), and every first-level folder name."""
    classes: dict[str, list[str]] = {}
    folders: set[str] = set()
    for entry in entries:
        if not entry.startswith(prefix) or "/" not in entry[len(prefix):]:
            continue  # outside prefix, or a file directly in it
        cls, _, rest = entry[len(prefix):].partition("/")
        folders.add(cls)
        if rest and not rest.endswith("/") and is_image(rest):
            classes.setdefault(cls, []).append(entry)
    return classes, folders


def _split_classes(classes: dict[str, list[str]], index: dict[str, int], fraction: float,
                   seed: int) -> dict[str, list[tuple[str, int]]]:
    """Per class, hold out ``round(n * fraction)`` files (at least 1 and at most n - 1 when n >= 2)."""
    rng = np.random.default_rng(seed)
    items: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for name in sorted(classes):
        paths = sorted(classes[name])
        n = len(paths)
        n_test = min(max(round(n * fraction), 1), n - 1) if n >= 2 else 0
        held = set(rng.permutation(n)[:n_test].tolist())
        for i, path in enumerate(paths):
            items["test" if i in held else "train"].append((path, index[name]))
    return {split: sorted(v) for split, v in items.items()}


def decode_image(payload: bytes, channels: int, size: int) -> np.ndarray:
    """Decode one image file to uint8 ``(channels, size, size)``: shorter side to ``size``, centre crop.

    Raises:
        Exception: whatever Pillow raises for a file it cannot decode (the caller names the file).
    """
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(payload)) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened).convert("L" if channels == 1 else "RGB")
    image = ImageOps.fit(image, (size, size), method=Image.Resampling.LANCZOS)
    pixels = np.asarray(image, dtype=np.uint8)  # (S, S) or (S, S, 3)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)  # (C, S, S)


@dataclass
class DecodedFolder:
    """The decoded splits, and what the meta.json records about them."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 (N, C, S, S), int64 (N,))
    source_sha256: str  # over every used file's relative path and content
    skipped: list[str]  # files Pillow could not decode (only with skip_unreadable)


def decode_folder(plan: FolderPlan, read: Callable[[str], bytes], where: str, channels: int, size: int,
                  skip_unreadable: bool) -> DecodedFolder:
    """Read and decode every planned file (threads: reading and Pillow's decoders release the GIL).

    Raises:
        ImageFolderError: the first file that cannot be decoded, unless ``skip_unreadable``.
    """
    def one(path: str) -> tuple[str, np.ndarray | None, str]:
        payload = read(path)
        digest = hashlib.sha256(payload).hexdigest()
        try:
            return digest, decode_image(payload, channels, size), ""
        except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, ... by format
            return digest, None, f"{type(exc).__name__}: {exc}".replace("\n", " ")

    source = hashlib.sha256()
    skipped: list[str] = []
    splits = {}
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        for split, items in plan.items.items():
            images = np.empty((len(items), channels, size, size), dtype=np.uint8)
            keep = np.ones(len(items), dtype=bool)
            for i, ((path, _), (digest, pixels, error)) in enumerate(zip(items, pool.map(one, [p for p, _ in items]))):
                source.update(f"{path}\0{digest}\n".encode())
                if pixels is None:
                    if not skip_unreadable:
                        raise ImageFolderError(f"{where}/{path}: cannot decode ({error}): replace or delete it, "
                                               "or set data.skip_unreadable: true")
                    skipped.append(f"{where}/{path}")
                    keep[i] = False
                    continue
                images[i] = pixels
            labels = np.array([label for _, label in items], dtype=np.int64)
            splits[split] = (images[keep], labels[keep])
    return DecodedFolder(splits, source.hexdigest(), skipped)


def folder_meta(plan: FolderPlan, decoded: DecodedFolder) -> dict[str, Any]:
    """The image-folder facts that go into ``meta.json``."""
    return {"layout": plan.layout, "empty_class_folders": plan.empty_class_folders,
            "ignored_files": plan.ignored_files, "skipped_unreadable": len(decoded.skipped),
            "skipped_files": decoded.skipped[:100]}
