"""Comparison rules shared by the precision benchmark and the parity tests."""
from __future__ import annotations

from typing import Any

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


TOLERANCE = {"fp32": 1e-4, "fp16": 1e-3, "bf16": 1e-3}  # default atol = rtol by the engine's precision
RULES = ("elementwise", "median")
PSNR_PASS_DB = 40.0  # end-to-end media agree when their PSNR is at least this


def rule_for(precision: str) -> str:
    """fp32 engines must agree element by element; half-precision ones are judged on the median."""
    return "elementwise" if precision == "fp32" else "median"


def cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine similarity of the flattened arrays; two all-zero arrays are identical (1), one is not (0)."""
    ref, cand = reference.ravel().astype(np.float64), candidate.ravel().astype(np.float64)
    # One square root of the product: identical arrays give exactly 1 (sqrt(x * x) == x in IEEE).
    norms = float(np.sqrt(np.dot(ref, ref) * np.dot(cand, cand)))
    if norms == 0.0:
        return 1.0 if not ref.any() and not cand.any() else 0.0
    return float(np.clip(np.dot(ref, cand) / norms, -1.0, 1.0))


def compare(
    reference: np.ndarray, candidate: np.ndarray, atol: float, rtol: float, rule: str = "elementwise"
) -> dict[str, Any]:
    """Errors of `candidate` against `reference` and whether it is within tolerance.

    abs = |candidate - reference| and rel = abs / max(|reference|, tiny), elementwise in float64.
    An element leaves tolerance where abs > atol AND rel > rtol (`failures` counts them).
    - rule "elementwise" (fp32): passes when no element leaves tolerance.
    - rule "median" (fp16/bf16): the rule applied to the median errors: passes unless
      median(abs) > atol and median(rel) > rtol. Max errors and `failures` are still reported.
    Under either rule it fails when the shapes differ, when either side has a NaN anywhere
    (even at the same place in both: a NaN reference proves nothing about the candidate), or when
    an infinity is not matched by the same infinity at the same place. Errors are measured over the
    elements finite in both.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {', '.join(RULES)}")
    result: dict[str, Any] = {"atol": atol, "rtol": rtol, "rule": rule, "elements": int(reference.size)}
    if reference.shape != candidate.shape:
        return {**result, "pass": False, "reason": f"shapes differ: {reference.shape} vs {candidate.shape}"}
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    nan = int(np.isnan(ref).sum() + np.isnan(cand).sum())
    finite = np.isfinite(ref) & np.isfinite(cand)
    inf_mismatch = int(((np.isinf(ref) | np.isinf(cand)) & (ref != cand)).sum())
    err = np.abs(cand[finite] - ref[finite])
    rel = err / np.maximum(np.abs(ref[finite]), np.finfo(np.float64).tiny)
    failures = int(((err > atol) & (rel > rtol)).sum())
    if rule == "median" and err.size:
        within = not (np.median(err) > atol and np.median(rel) > rtol)
    else:
        within = failures == 0
    reasons = [f"{nan} NaN" if nan else "", f"{inf_mismatch} unmatched Inf" if inf_mismatch else ""]
    beyond = f"beyond atol={atol:g} and rtol={rtol:g}"
    reasons.append("" if within else f"median errors {beyond}" if rule == "median" else f"{failures} of {err.size} elements {beyond}")
    return {
        **result,
        "max_abs": float(err.max(initial=0.0)),
        "max_rel": float(rel.max(initial=0.0)),
        "mean_abs": float(err.mean()) if err.size else 0.0,
        "median_abs": float(np.median(err)) if err.size else 0.0,
        "cosine": cosine(np.where(finite, ref, 0.0), np.where(finite, cand, 0.0)),
        "failures": failures,
        "pass": within and not nan and not inf_mismatch,
        "reason": "; ".join(r for r in reasons if r),
    }
