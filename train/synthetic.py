"""The project's synthetic multimodal world: coloured shapes, tones and moving shapes.

It gives the embedded model its sample inputs (and, later, its training data) without any
download.
"""
from __future__ import annotations

import numpy as np

RGB = {
    "red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (240, 220, 40),
    "white": (245, 245, 245), "black": (10, 10, 10), "purple": (140, 40, 170), "orange": (250, 140, 20),
}


def shape_image(colour: str, background: str, size: int, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A filled disc of `colour` on `background`, uint8 (size, size, 3)."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = RGB[background]
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size // 2 + offset[0], size // 2 + offset[1]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 4) ** 2] = RGB[colour]
    return img


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def moving_shape_video(colour: str, background: str, size: int, frames: int) -> np.ndarray:
    """A disc sliding left to right, uint8 (frames, size, size, 3)."""
    steps = np.linspace(-size // 4, size // 4, frames).astype(int)
    return np.stack([shape_image(colour, background, size, (0, int(dx))) for dx in steps])
