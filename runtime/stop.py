"""Stopping a request's loops early: its deadline passed or its caller went away.

The token loop (`runtime.generation`) and the denoising loop (`runtime.diffusion`) take a
`should_stop` callable and ask it once per step; when it names a reason they raise `Stopped`
at that step, so one long request cannot hold a model instance after nobody waits for it.
"""
from __future__ import annotations

import time
from collections.abc import Callable

# None: go on; otherwise the reason to stop, in words ("deadline of 2.0 s exceeded", "cancelled").
ShouldStop = Callable[[], str | None]


class Stopped(RuntimeError):
    """A request stopped between two steps; `reason` is what its `should_stop` said."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check(should_stop: ShouldStop | None) -> None:
    """Raise `Stopped` if `should_stop` names a reason."""
    reason = None if should_stop is None else should_stop()
    if reason:
        raise Stopped(reason)


def deadline(seconds: float, clock: Callable[[], float] = time.monotonic) -> ShouldStop:
    """A `should_stop` that names the deadline once `seconds` have passed from now."""
    end = clock() + seconds

    def past_deadline() -> str | None:
        return f"deadline of {seconds:g} s exceeded" if clock() >= end else None

    return past_deadline


def first_of(*checks: ShouldStop | None) -> ShouldStop:
    """The first reason any of `checks` names (None entries are skipped)."""
    active = [c for c in checks if c is not None]

    def any_reason() -> str | None:
        return next((reason for c in active if (reason := c())), None)

    return any_reason
