"""Precisions and the one tolerance each is judged by, for the build's check against PyTorch and
for the benchmarks alike.

A build precision (fp32, fp16, bf16, int8) is what an engine computes in; tf32 is only ever asked at run
time, of a GPU backend computing an fp32 file (matmuls and convolutions rounded to a 10-bit mantissa).
int8 (the CPU engines' post-training quantization) is judged against fp32 on real inputs.
One tolerance per precision, atol = rtol: fp32 by every element; the reduced ones, whose single
roundings already reach their unit roundoff, on the median (`compare`); int8, whose error is a
calibrated range's step rather than a rounding of each value, by cosine similarity (at least
1 - tolerance: 0.99, as the full-width targets ask).
"""
from __future__ import annotations

from typing import Any

import numpy as np

PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # what an engine is built in
RUN_PRECISIONS = ("fp32", "fp16", "bf16", "tf32")  # what a GPU backend may be asked to compute in
# fp16 and tf32 keep 11 significant bits (unit roundoff 4.9e-4), bf16 8 (3.9e-3): eight times coarser.
# bf16 allows five of its roundoffs: rounding at every matmul, norm and softmax of a decoder stack
# adds up (OpenVINO bf16, the tiny LLM's post-norm hidden state at a decode step: median absolute
# error 0.0101 on values of median magnitude 0.87, cosine 0.99992 to fp32); keeping that one output
# in fp32 would not help, the error is the residual stream's, summed over the layers before it.
# int8: 1 - cosine similarity (256 steps over each tensor's calibrated range).
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-3, "fp16": 1e-3, "bf16": 2e-2, "int8": 1e-2}
RULES = ("elementwise", "median", "cosine")
# The least cosine similarity to PyTorch fp32 an output may have at full width, per precision an engine
# computes in (issue 29's targets: bf16 0.999, int8 the build's own 1 - tolerance; fp32 differs only
# in the order of its sums)
COSINE_TARGET = {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.999, "int8": 1.0 - TOLERANCE["int8"]}


def rule_for(precision: str) -> str:
    """fp32 must agree element by element; fp16/bf16 are judged on the median, int8 by cosine."""
    return {"fp32": "elementwise", "int8": "cosine"}.get(precision, "median")


def cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Cosine similarity of the flattened arrays; two all-zero arrays are identical (1), one is not (0)."""
    ref, cand = reference.ravel().astype(np.float64), candidate.ravel().astype(np.float64)
    # One square root of the product: identical arrays give exactly 1 (sqrt(x * x) == x in IEEE).
    norms = float(np.sqrt(np.dot(ref, ref) * np.dot(cand, cand)))
    if norms == 0.0:
        return 1.0 if not ref.any() and not cand.any() else 0.0
    return float(np.clip(np.dot(ref, cand) / norms, -1.0, 1.0))


def rel_l2(reference: np.ndarray, candidate: np.ndarray) -> float:
    """||candidate - reference|| / ||reference|| over the flattened arrays (0 where both are zero, inf
    where only the reference is)."""
    ref, cand = reference.ravel().astype(np.float64), candidate.ravel().astype(np.float64)
    diff, norm = float(np.linalg.norm(cand - ref)), float(np.linalg.norm(ref))
    return diff / norm if norm else (0.0 if diff == 0.0 else float("inf"))


def compare(
    reference: Any, candidate: Any, atol: float, rtol: float, rule: str = "elementwise"
) -> dict[str, Any]:
    """Errors of `candidate` against `reference` (arrays, or anything numpy reads as one, such as a
    TensorRT engine's device-resident cache) and whether it is within tolerance.

    abs = |candidate - reference| and rel = abs / max(|reference|, tiny), elementwise in float64.
    An element leaves tolerance where abs > atol AND rel > rtol (`failures` counts them).
    - rule "elementwise" (fp32): passes when no element leaves tolerance.
    - rule "median" (fp16/bf16): the rule applied to the median errors: passes unless
      median(abs) > atol and median(rel) > rtol. Max errors and `failures` are still reported.
    - rule "cosine" (int8): passes when the cosine similarity is at least 1 - atol.
    Under any rule it fails when the shapes differ, when either side has a NaN anywhere
    (even at the same place in both: a NaN reference proves nothing about the candidate), or when
    an infinity is not matched by the same infinity at the same place. Errors are measured over the
    elements finite in both.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; known: {', '.join(RULES)}")
    reference, candidate = np.asarray(reference), np.asarray(candidate)
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
    similarity = cosine(np.where(finite, ref, 0.0), np.where(finite, cand, 0.0))
    if rule == "cosine":
        within = similarity >= 1.0 - atol
    elif rule == "median" and err.size:
        within = not (np.median(err) > atol and np.median(rel) > rtol)
    else:
        within = failures == 0
    reasons = [f"{nan} NaN" if nan else "", f"{inf_mismatch} unmatched Inf" if inf_mismatch else ""]
    beyond = f"beyond atol={atol:g} and rtol={rtol:g}"
    if rule == "cosine":
        reasons.append("" if within else f"cosine {similarity:.5f} below {1.0 - atol:g}")
    else:
        reasons.append("" if within else f"median errors {beyond}" if rule == "median" else f"{failures} of {err.size} elements {beyond}")
    return {
        **result,
        "max_abs": float(err.max(initial=0.0)),
        "max_rel": float(rel.max(initial=0.0)),
        "mean_abs": float(err.mean()) if err.size else 0.0,
        "median_abs": float(np.median(err)) if err.size else 0.0,
        "cosine": similarity,
        "failures": failures,
        "pass": within and not nan and not inf_mismatch,
        "reason": "; ".join(r for r in reasons if r),
    }
