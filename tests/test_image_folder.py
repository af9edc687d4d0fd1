"""Image folders as a data source, and the prepared Parquet shards every stage reads and verifies."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from project import make_project, run_stage

from components.config import DataConfig
from components.data.dataset import DataError, load_meta, load_split
from components.data.fetch import FetchError, fetch

#: class -> the colour its images are drawn in (R, G, B): the labels can be checked from the pixels
COLOURS = {"bird": (40, 60, 230), "cat": (230, 40, 40), "dog": (40, 220, 60)}


def draw(colour: tuple[int, int, int], size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    """A ``mode`` (``RGB`` or ``L``) image of ``size`` (W, H): the colour in a centred box on black, a little noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    pixels = rng.integers(0, 20, (h, w, 3)).astype(np.uint8)
    pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = colour
    return Image.fromarray(pixels).convert(mode)


def write_folder(root: Path) -> dict[str, list[str]]:
    """PNG and JPEG, RGB and grayscale, several sizes, one corrupt file, one text file, an empty class folder.

    Returns:
        class -> the relative paths of its decodable images.
    """
    written: dict[str, list[str]] = {}
    sizes = [(40, 30), (64, 64), (32, 48), (100, 80), (36, 36)]
    for c, (name, colour) in enumerate(sorted(COLOURS.items())):
        (root / name).mkdir(parents=True)
        for i in range(10):
            mode = "L" if i % 3 == 0 else "RGB"
            ext = ".jpg" if i % 2 else ".png"
            rel = f"{name}/img{i:02d}{ext}"
            draw(colour, sizes[i % len(sizes)], mode, seed=100 * c + i).save(root / rel, quality=95)
            written.setdefault(name, []).append(rel)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    (root / "cat" / "notes.txt").write_text("not an image\n")
    (root / "empty").mkdir()
    return written


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_folder(tmp_path / "images")
    return tmp_path / "images"


def cfg(source: str | Path, **kw) -> DataConfig:
    return DataConfig(source=str(source), **{"channels": 3, "image_size": 32, **kw})


def test_corrupt_file_is_named_in_one_line_and_nothing_is_written(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(FetchError) as info:
        fetch(cfg(folder), tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{folder}/dog/broken.png: cannot decode") and "\n" not in message
    assert "data.skip_unreadable" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images"]  # no output, no temp folder


def test_rgb_folder_gives_labelled_split_shards(folder: Path, tmp_path: Path) -> None:
    meta = fetch(cfg(folder, skip_unreadable=True, test_fraction=0.2), tmp_path / "out")
    assert meta["class_names"] == ["bird", "cat", "dog"] and meta["shape"] == [3, 32, 32]
    assert meta["empty_class_folders"] == ["empty"] and meta["ignored_files"] == 1  # notes.txt
    assert meta["skipped_unreadable"] == 1 and meta["skipped_files"] == [f"{folder}/dog/broken.png"]
    # per class round(n * 0.2) held out: bird 10 -> 2, cat 10 -> 2, dog 10 good + 1 broken -> 2 (of 11)
    assert meta["class_counts"]["test"] == [2, 2, 2]
    assert meta["class_counts"]["train"][:2] == [8, 8] and sum(meta["class_counts"]["train"]) + 6 == 30
    assert meta["counts"] == {"train": sum(meta["class_counts"]["train"]), "test": 6}
    for split in ("train", "test"):
        data = load_split(tmp_path / "out", split)
        assert data.images.dtype == np.uint8 and data.labels.dtype == np.int64
        assert data.images.shape == (meta["counts"][split], 3, 32, 32)
        centre = data.images[:, :, 12:20, 12:20].reshape(len(data.images), 3, -1).mean(-1)  # (N, 3)
        for label, name in enumerate(meta["class_names"]):
            rows = centre[data.labels == label]
            colour, grey = rows[rows.std(1) > 20], rows[rows.std(1) <= 20]  # grayscale files read as RGB are grey
            assert len(colour) and (colour.argmax(1) == int(np.argmax(COLOURS[name]))).all(), (split, name)
            assert (grey.max(1) - grey.min(1) < 2).all() and len(colour) + len(grey) == len(rows)
    for name, want in meta["prepared_sha256"].items():
        assert hashlib.sha256((tmp_path / "out" / name).read_bytes()).hexdigest() == want


def test_shards_are_deterministic_by_seed_and_grayscale_works(folder: Path, tmp_path: Path) -> None:
    a = fetch(cfg(folder, skip_unreadable=True, seed=3), tmp_path / "a")
    b = fetch(cfg(folder, skip_unreadable=True, seed=3), tmp_path / "b")
    c = fetch(cfg(folder, skip_unreadable=True, seed=4), tmp_path / "c")
    assert a["prepared_sha256"] == b["prepared_sha256"] and a["raw_sha256"] == b["raw_sha256"]
    assert a["prepared_sha256"] != c["prepared_sha256"]  # another held-out draw
    grey = fetch(cfg(folder, skip_unreadable=True, channels=1, image_size=28), tmp_path / "g")
    assert grey["shape"] == [1, 28, 28] and grey["counts"] == a["counts"]
    assert load_split(tmp_path / "g", "train").images.shape == (a["counts"]["train"], 1, 28, 28)


def test_resize_keeps_the_centre_of_a_wide_image(tmp_path: Path) -> None:
    """Shorter side to the target size, then a centre crop: a 128x64 image keeps its middle 64 columns."""
    for split in ("train", "test"):
        pixels = np.zeros((64, 128), np.uint8)
        pixels[:, 32:96] = 200  # the middle half is bright, the sides black
        (tmp_path / "src" / split / "only").mkdir(parents=True)
        Image.fromarray(pixels).save(tmp_path / "src" / split / "only" / "wide.png")
    meta = fetch(DataConfig(source=str(tmp_path / "src"), image_size=32), tmp_path / "out")
    assert meta["layout"] == "train-test-folders" and meta["counts"] == {"train": 1, "test": 1}
    image = load_split(tmp_path / "out", "train").images[0, 0]
    assert image.shape == (32, 32) and image.min() > 150  # no black border survived (Lanczos rings a little)


def test_given_train_and_test_folders_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "src"
    for split, n in (("train", 4), ("test", 2)):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                draw((200, 200, 200), (30, 30), "L", i).save(root / split / name / f"{i}.png")
    meta = fetch(DataConfig(source=str(root), image_size=28), tmp_path / "out")
    assert meta["class_counts"] == {"train": [4, 4], "test": [2, 2]} and meta["class_names"] == ["a", "b"]


def test_rows_are_shuffled_so_every_half_holds_every_class(tmp_path: Path) -> None:
    """Ray Data gives each rank a contiguous share: files sorted by class would give rank 0 only the
    first classes (its own BatchNorm statistics, half the labels for a conditional model)."""
    root = tmp_path / "src"
    for name in ("a", "b", "c"):
        (root / name).mkdir(parents=True)
        for i in range(12):
            draw((60 * len(name), 100, 100), (28, 28), "L", i).save(root / name / f"{i}.png")
    fetch(DataConfig(source=str(root), image_size=28, test_fraction=0.25), tmp_path / "out")
    labels = load_split(tmp_path / "out", "train").labels
    half = len(labels) // 2
    assert set(labels[:half].tolist()) == set(labels[half:].tolist()) == {0, 1, 2}


@pytest.mark.parametrize(
    ("files", "needle"),
    [
        ({"a.png": "image"}, "1 images directly in it but no class subfolders: lay it out as <root>/<class name>/"),
        ({"notes.txt": "text"}, "no images: lay it out as <root>/<class name>/.*or the 4 IDX files"),
        ({"train/a/0.png": "image", "test/b/0.png": "image"}, "test/: classes b have no images in .*/train/"),
        ({"train/a/0.png": "image", "test/a/0.png": "image", "extra/0.png": "image"},
         "has train/ and test/ but also images in extra: put every class folder under both"),
        ({"train/a/0.png": "image", "test/0.png": "image"}, "src/test/0.png: not in a class folder"),
    ],
)
def test_layouts_that_cannot_work_say_how_to_lay_it_out(tmp_path: Path, files: dict, needle: str) -> None:
    root = tmp_path / "src"
    for rel, kind in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if kind == "image":
            draw((1, 2, 3), (20, 20), "RGB", 0).save(root / rel)
        else:
            (root / rel).write_text("x")
    with pytest.raises(FetchError, match=needle):
        fetch(DataConfig(source=str(root)), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_grayscale_source_refuses_three_channels_at_fetch(tmp_path: Path) -> None:
    npz = tmp_path / "npz"
    npz.mkdir()
    for split in ("train", "test"):
        np.savez(npz / f"{split}.npz", images=np.zeros((10, 28, 28), np.uint8), labels=np.arange(10))
    with pytest.raises(FetchError, match="images have 1 channel.*data.channels=3: set data.channels: 1"):
        fetch(DataConfig(source=str(npz), channels=3), tmp_path / "out")


# --------------------------------------------------------------------------- verified reading
def test_truncated_or_missing_shard_is_a_one_line_error(tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    meta = fetch(DataConfig(source="synthetic", synthetic_train_size=300, synthetic_test_size=50, shard_mb=1), out)
    shard = out / "train" / "part-00000.parquet"
    assert len(meta["shards"]["train"]) == 1
    small = fetch(DataConfig(source="synthetic", synthetic_train_size=3000, synthetic_test_size=50, shard_mb=1),
                  tmp_path / "many")
    assert [r["rows"] for r in small["shards"]["train"]] == [1337, 1337, 326]  # 1 MiB / 784 B per image
    assert len(load_split(tmp_path / "many", "train").images) == 3000
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(DataError) as info:
        load_split(out, "train")
    message = str(info.value)
    assert message.startswith(f"{shard}: checksum mismatch") and "re-run `dvc repro fetch`" in message
    assert "\n" not in message
    (out / "test" / "part-00000.parquet").unlink()
    with pytest.raises(DataError, match=r"test/part-00000.parquet: cannot read .*re-run `dvc repro fetch`"):
        load_split(out, "test")


def test_old_npz_layout_asks_for_a_new_fetch(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_text(json.dumps({"shape": [1, 28, 28], "prepared_sha256": {"train.npz": "x"}}))
    with pytest.raises(DataError, match="older fetch stage.*re-run `dvc repro fetch`"):
        load_meta(tmp_path)


def test_train_stage_names_a_truncated_shard_in_one_line(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project")
    shard = project / "data" / "prepared" / "train" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    for stage in ("train", "classifier"):
        args = ("--model", "gan") if stage == "train" else ()
        run = run_stage(project, stage, *args, "--plain", check=False, timeout=120, tracking="local")
        assert run.returncode == 1, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: data/prepared/train/part-00000.parquet: checksum "
                                                        "mismatch"), run.stderr
        assert "re-run `dvc repro fetch`" in lines[0]
