"""Media comparison for the precision benchmark and the parity tests (array rules: runtime/precision.py)."""
from __future__ import annotations

import numpy as np


def psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB; the peak is 255 for uint8 media, else max |reference|.

    Identical arrays give +inf; arrays of different shapes are a ValueError, not a number.
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    mse = float(np.mean((ref - cand) ** 2))
    if mse == 0.0:
        return float("inf")
    peak = 255.0 if reference.dtype == np.uint8 else float(np.abs(ref).max())
    return 10.0 * np.log10(peak**2 / mse) if peak > 0 else float("-inf")


PSNR_PASS_DB = 40.0  # end-to-end media agree when their PSNR is at least this
