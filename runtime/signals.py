"""Constrained decoding of signal-token runs ([IMG0..3], [VID0..23], [AUD0..7]).

The reference NExT-GPT asserts on a broken run and crashes. Here a run, once its first token
is emitted, is forced to completion; a stray later token of a run can never be sampled; and a
modality the caller asked for is appended as a full run if the model never started it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SignalVocab:
    runs: dict[str, list[int]]  # modality -> the token ids of its run, in order

    @property
    def banned_outside_run(self) -> list[int]:
        """Ids that may only appear inside a run that was started by its first token."""
        return [i for run in self.runs.values() for i in run[1:]]

    @property
    def all_ids(self) -> set[int]:
        return {i for run in self.runs.values() for i in run}

    def forced_next(self, generated: Sequence[int]) -> int | None:
        """The next id of a run in progress at the end of `generated`, if any."""
        for run in self.runs.values():
            for k in range(len(run) - 1, 0, -1):
                if len(generated) >= k and list(generated[-k:]) == run[:k]:
                    return run[k]
        return None

    def completed(self, ids: Sequence[int]) -> dict[str, int]:
        """Modality -> start index of its first complete run in `ids`."""
        found: dict[str, int] = {}
        for modality, run in self.runs.items():
            n = len(run)
            for start in range(len(ids) - n + 1):
                if list(ids[start : start + n]) == run:
                    found[modality] = start
                    break
        return found

    def finish(self, generated: Sequence[int], required: Sequence[str]) -> list[int]:
        """`generated` with an unfinished trailing run completed and every required run appended."""
        out = list(generated)
        while (nxt := self.forced_next(out)) is not None:
            out.append(nxt)
        done = self.completed(out)
        for modality in required:
            if modality not in done:
                out.extend(self.runs[modality])
        return out

    def strip(self, ids: Sequence[int]) -> list[int]:
        """The ids with every signal token removed: what the text answer is decoded from."""
        signal = self.all_ids
        return [i for i in ids if i not in signal]
