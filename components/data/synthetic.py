"""A procedurally drawn 10-class image set: an offline stand-in for Fashion-MNIST.

Every image is one shape or texture with random position, scale, rotation, stroke thickness
and brightness, drawn with soft (anti-aliased) edges on a black background. Classes differ in
kind (filled / outline / stripes / texture / blur), so a small CNN separates them easily, while
the jitter leaves a generator something to learn. Everything is vectorised over the images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SYNTHETIC_CLASSES: list[str] = [
    "circle",
    "square",
    "triangle",
    "cross",
    "horizontal-stripes",
    "vertical-stripes",
    "diagonal",
    "ring",
    "checker",
    "blob",
]

Params = dict[str, np.ndarray]  # every value has shape (M, 1, 1) so it broadcasts over (M, H, W)


def _soft(margin: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] from a signed distance-to-edge in pixels (positive = inside)."""
    return np.clip(margin + 0.5, 0.0, 1.0)


def _rotated(p: Params) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates relative to the centre, rotated by the image's angle: each (M, H, W)."""
    dx, dy = p["x"] - p["cx"], p["y"] - p["cy"]
    cos, sin = np.cos(p["angle"]), np.sin(p["angle"])
    return dx * cos + dy * sin, -dx * sin + dy * cos


def _window(u: np.ndarray, v: np.ndarray, half: np.ndarray) -> np.ndarray:
    """A soft square window of half-width ``half`` that bounds the textures."""
    return _soft(half - np.maximum(np.abs(u), np.abs(v)))


def _circle(p: Params) -> np.ndarray:
    return _soft(p["r"] - np.hypot(p["x"] - p["cx"], p["y"] - p["cy"]))


def _square(p: Params) -> np.ndarray:
    u, v = _rotated(p)
    return _window(u, v, 0.85 * p["r"])


def _triangle(p: Params) -> np.ndarray:
    u, v = _rotated(p)
    r = p["r"]
    base = 0.7 * r - v  # above the base line
    sides = (v + r) * 0.62 - np.abs(u)  # inside both slanted sides (apex at v = -r)
    return _soft(np.minimum(base, sides))


def _cross(p: Params) -> np.ndarray:
    u, v = _rotated(p)
    r, t = p["r"], p["t"]
    bar_h = np.minimum(r - np.abs(u), t - np.abs(v))
    bar_v = np.minimum(r - np.abs(v), t - np.abs(u))
    return _soft(np.maximum(bar_h, bar_v))


def _stripes(p: Params, along_rows: bool) -> np.ndarray:
    dx, dy = p["x"] - p["cx"], p["y"] - p["cy"]
    coord = dy if along_rows else dx  # horizontal stripes vary down the rows
    wave = np.cos(2 * np.pi * coord / p["period"] + p["phase"])
    return np.clip(wave * 1.5 + 0.5, 0.0, 1.0) * _window(dx, dy, 1.2 * p["r"])


def _diagonal(p: Params) -> np.ndarray:
    dx, dy = p["x"] - p["cx"], p["y"] - p["cy"]
    theta = np.where(p["flip"] > 0.5, np.pi / 4, -np.pi / 4) + 0.5 * p["angle"]
    along = dx * np.cos(theta) + dy * np.sin(theta)
    across = -dx * np.sin(theta) + dy * np.cos(theta)
    return _soft(np.minimum(p["t"] - np.abs(across), 1.4 * p["r"] - np.abs(along)))


def _ring(p: Params) -> np.ndarray:
    d = np.hypot(p["x"] - p["cx"], p["y"] - p["cy"])
    return _soft(0.8 * p["t"] - np.abs(d - p["r"]))


def _checker(p: Params) -> np.ndarray:
    u, v = _rotated(p)
    cell = p["period"] / 2
    parity = (np.floor(u / cell) + np.floor(v / cell)) % 2
    return parity * _window(u, v, 1.1 * p["r"])


def _blob(p: Params) -> np.ndarray:
    u, v = _rotated(p)
    sx, sy = 0.7 * p["r"], 0.7 * p["r"] * p["aspect"]
    return np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))


_DRAW: list[Callable[[Params], np.ndarray]] = [
    _circle,
    _square,
    _triangle,
    _cross,
    lambda p: _stripes(p, along_rows=True),
    lambda p: _stripes(p, along_rows=False),
    _diagonal,
    _ring,
    _checker,
    _blob,
]


def _draw_params(rng: np.random.Generator, n: int, size: int) -> Params:
    """Per-image jitter, drawn for all images up front so the result depends only on the seed."""
    s = size / 28  # every length is given for 28x28 and scaled
    shape = (n, 1, 1)
    return {
        "cx": rng.uniform(11, 17, shape) * s,
        "cy": rng.uniform(11, 17, shape) * s,
        "r": rng.uniform(5.5, 9.5, shape) * s,
        "t": rng.uniform(1.2, 2.6, shape) * s,  # stroke half-thickness
        "angle": rng.uniform(-0.35, 0.35, shape),  # radians
        "period": rng.uniform(4.0, 7.0, shape) * s,
        "phase": rng.uniform(0, 2 * np.pi, shape),
        "aspect": rng.uniform(0.5, 1.0, shape),
        "flip": rng.uniform(0, 1, shape),
        "level": rng.uniform(150, 255, shape),  # brightness of the foreground
    }


def make_synthetic(n: int, seed: int, image_size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` class-balanced images deterministically from ``seed``.

    Args:
        n: number of images; every class gets ``n // 10`` or ``n // 10 + 1`` of them.
        seed: the only source of randomness: same seed, same bytes.
        image_size: side length in pixels (the shapes scale with it).

    Returns:
        ``images`` uint8 ``(n, 1, image_size, image_size)`` and ``labels`` int64 ``(n,)``,
        labels indexing ``SYNTHETIC_CLASSES``.
    """
    if n <= 0 or image_size < 8:
        raise ValueError(f"make_synthetic: need n > 0 and image_size >= 8, got n={n}, image_size={image_size}")
    rng = np.random.default_rng(seed)
    k = len(SYNTHETIC_CLASSES)
    labels = rng.permutation(np.arange(n) % k).astype(np.int64)  # balanced, shuffled
    params = _draw_params(rng, n, image_size)
    noise = rng.normal(0.0, 0.06, (n, image_size, image_size)).astype(np.float32)
    grid = np.arange(image_size, dtype=np.float32) + 0.5  # pixel centres
    images = np.zeros((n, image_size, image_size), dtype=np.float32)  # (N, H, W)
    for label, draw in enumerate(_DRAW):
        idx = np.flatnonzero(labels == label)
        if idx.size == 0:
            continue
        p = {key: value[idx].astype(np.float32) for key, value in params.items()}
        p["x"], p["y"] = grid[None, None, :], grid[None, :, None]
        images[idx] = draw(p) * p["level"]  # (M, H, W)
    # Multiplicative grain: the background stays black, like Fashion-MNIST.
    images *= 1.0 + noise
    out = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    return out[:, None], labels  # (N, 1, H, W)
