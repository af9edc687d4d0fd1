"""Image grids: a model's samples tiled into one picture (the sample stage's grid.png, MLflow's
per-epoch grids from fixed noise)."""

from __future__ import annotations

import numpy as np

from components.models.base import GenerativeModel
from components.models.sampling import draw_balanced


def sample_grid(model: GenerativeModel, n: int, seed: int) -> np.ndarray:
    """A ``rows x rows`` uint8 image grid from fixed noise (same seed each time, so grids show progress)."""
    rows = int(np.sqrt(n))
    n = rows * rows
    images = draw_balanced(model, n, seed)[0].cpu().numpy()  # (n, C, H, W); labels i % K: a column per class
    return make_grid(images, rows)


def make_grid(images: np.ndarray, rows: int, pad: int = 2) -> np.ndarray:
    """Tile ``(n, C, H, W)`` uint8 images into one ``(rows*(H+pad), cols*(W+pad))`` (or RGB) image."""
    n, c, h, w = images.shape
    cols = -(-n // rows)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, cols)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = (
            img.transpose(1, 2, 0)
        )
    return grid[..., 0] if c == 1 else grid
