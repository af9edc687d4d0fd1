"""A CI-sized RGB case: a synthetic 32 px image folder through the whole pipeline, all five families.

Every compute stage runs as a Ray Train job with 2 workers (one local head for the module, as
`dvc repro` runs them), so the RGB data reaches the ranks through Ray Data like Fashion-MNIST does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from project import make_project, read_json, run_stage

from components.data.synthetic import make_synthetic

pytestmark = pytest.mark.slow

FAMILIES = ("gan", "cgan", "dcgan", "vae", "ddpm")
#: one colour per class, so colour and shape both tell the classes apart
PALETTE = [(255, 60, 60), (60, 255, 60), (60, 60, 255), (255, 220, 40), (255, 60, 255),
           (40, 230, 230), (255, 140, 0), (150, 90, 255), (255, 255, 255), (120, 200, 90)]


def write_rgb_folder(root: Path, per_class: int = 60, seed: int = 0) -> None:
    """``root/<shape>/NNN.png|jpg``: the synthetic shapes at 32 px, each class in its own colour."""
    from components.data.synthetic import SYNTHETIC_CLASSES

    masks, labels = make_synthetic(per_class * len(SYNTHETIC_CLASSES), seed, image_size=32)  # (N, 1, 32, 32)
    colours = np.array(PALETTE, dtype=np.float32)[labels]  # (N, 3)
    rgb = (masks[:, 0, :, :, None] / 255.0 * colours[:, None, None, :]).round().astype(np.uint8)  # (N, 32, 32, 3)
    for i, (image, label) in enumerate(zip(rgb, labels)):
        folder = root / SYNTHETIC_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")



def test_rgb_image_folder_through_every_stage(tmp_path: Path, ray_address: str) -> None:
    images = tmp_path / "rgb-shapes"
    write_rgb_folder(images)
    data = {"source": str(images), "channels": 3, "image_size": 32, "train_subset": None, "test_subset": None}
    project = make_project(tmp_path / "project", {"data": data, "sample": {"num_samples": 120},
                                                   "evaluate": {"num_samples": 120, "kid_subset_size": 40},
                                                   # 2 ranks: 7 steps an epoch (3 epochs gave 16 % accuracy)
                                                   "classifier": {"epochs": 8}})
    meta = read_json(project / "data" / "prepared" / "meta.json")
    assert meta["shape"] == [3, 32, 32] and meta["counts"] == {"train": 480, "test": 120}
    env = {"RAY_ADDRESS": ray_address}
    run_stage(project, "classifier", env=env, tracking="local")
    for family in FAMILIES:
        for stage in ("train", "sample", "evaluate"):
            run_stage(project, stage, "--model", family, env=env, tracking="local")
        assert [w["rank"] for w in read_json(project / "models" / family / "workers.json")] == [0, 1]
        metrics = read_json(project / "metrics" / f"{family}.json")
        assert math.isfinite(metrics["fid"]) and math.isfinite(metrics["kid"]), metrics
        grid = np.asarray(Image.open(project / "samples" / family / "grid.png"))
        assert grid.ndim == 3 and grid.shape[2] == 3, grid.shape  # RGB, not a grey plane
    assert read_json(project / "metrics" / "classifier.json")["test_accuracy"] > 0.3
    run_stage(project, "report", tracking="local")
    board = (project / "reports" / "leaderboard.md").read_text()
    assert all(family in board for family in FAMILIES) and "floor" in board.lower(), board
