"""Convert one dataset file into a data root: records/<source>.jsonl plus the media, named by record id.

Each entry is converted by its format's reader (readers.py). A malformed entry, a duplicate id, a
media file that is missing or that the runtime's readers cannot read is reported with its file, line
and entry index and skipped; the counts per reason are returned (and printed by the CLI). Media are
hard-linked where the file system allows, copied otherwise, to `<modality>/<record id><ext>`.
Records already in records/<source>.jsonl are kept unless this run converts the same id again, so
several files of one format (say the three t2x files) go into one source file.
"""
from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from runtime import media as media_io
from train.data.readers import NEEDS_MEDIA, READERS, Draft, EntryError, InputError, read_entries
from train.data.records import Record, RecordError, read_records, write_records

CHECK: dict[str, Callable[[Path], Any]] = {
    "image": media_io.read_image, "audio": media_io.read_audio, "video": media_io.read_video,
}


@dataclass
class Report:
    """What a conversion did: records written, and skipped entries counted by reason."""

    path: Path
    written: int = 0
    kept: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items())) or "none"
        return f"{self.written} records written to {self.path} ({self.kept} kept from before); skipped: {skipped}"


class _Problems:
    """Prints one line per skipped entry and counts it by reason."""

    def __init__(self, report: Report, stream: TextIO) -> None:
        self.report, self.stream = report, stream

    def skip(self, where: str, reason: str, detail: str) -> None:
        self.report.skipped[reason] += 1
        print(f"{where}: {reason}: {detail}", file=self.stream)


def _place(src: Path, dst: Path) -> None:
    """Hard link (no copy of the bytes) where possible, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    tmp.replace(dst)


def _media_problem(draft: Draft, media_dir: Path | None) -> tuple[str, str] | None:
    """(reason, detail) when a medium of the draft is missing or unreadable, else None."""
    for modality, name in draft.media.items():
        if media_dir is None:
            return "missing media file", f"{name} (no --media folder given)"
        src = media_dir / name
        if not src.is_file():
            return "missing media file", str(src)
        try:
            CHECK[modality](src)
        except media_io.MediaError as e:
            return "unreadable media file", str(e)
    return None


def _record(draft: Draft, source: str, split: str, out: Path, media_dir: Path | None) -> Record:
    """The record (validated), then its media placed under `out`."""
    paths = {m: f"{m}/{draft.id}{Path(name).suffix.lower()}" for m, name in draft.media.items()}
    record = Record(
        id=draft.id,
        source=source,
        split=split,
        turns=draft.turns,
        target=draft.target,
        caption=draft.caption,
        **{draft.media_role: paths},
    )
    for modality, name in draft.media.items():
        _place(media_dir / name, out / paths[modality])
    return record


def _previous(path: Path) -> list[Record]:
    try:
        return list(read_records(path)) if path.is_file() else []
    except RecordError as e:
        raise InputError(f"cannot merge into the existing {e}") from None


def prepare(
    fmt: str,
    input_path: Path,
    out: Path,
    media_dir: Path | None = None,
    split: str = "train",
    source: str | None = None,
    stream: TextIO = sys.stderr,
    progress: bool = True,
) -> Report:
    """Convert `input_path` (format `fmt`) into the data root `out`; returns the report.

    Raises InputError (nothing written) when the input cannot be read as a whole.
    """
    if fmt not in READERS:
        raise InputError(f"unknown format {fmt!r}; known: {', '.join(READERS)}")
    if fmt in NEEDS_MEDIA and media_dir is None:
        raise InputError(f"--media is needed for {fmt}: the folder its media file names are relative to")
    source = source or fmt
    reader = READERS[fmt](source)
    target = Path(out) / "records" / f"{source}.jsonl"
    previous = _previous(target)
    report = Report(target)
    problems = _Problems(report, stream)
    records: dict[str, Record] = {}
    stem = Path(input_path).stem
    entries = list(read_entries(Path(input_path)))
    bar = tqdm(entries, desc=f"{fmt}: {input_path}", unit="entry", disable=not progress)
    for index, (line, entry) in enumerate(bar):
        where = f"{input_path}:{line} (entry {index})"
        try:
            if isinstance(entry, EntryError):
                raise entry
            drafts = reader(entry, f"{source}-{stem}-{index:06d}")
        except EntryError as e:
            problems.skip(where, "malformed entry", str(e))
            continue
        for draft in drafts:
            if draft.id in records:
                problems.skip(where, "duplicate id", draft.id)
                continue
            problem = _media_problem(draft, media_dir)
            if problem:
                problems.skip(where, *problem)
                continue
            try:
                records[draft.id] = _record(draft, source, split, Path(out), media_dir)
            except RecordError as e:
                problems.skip(where, "malformed entry", str(e))
    kept = [r for r in previous if r.id not in records]
    report.kept = len(kept)
    report.written = write_records(target, [*kept, *records.values()]) - len(kept)
    return report
