"""Convert a dataset file in one of the formats NExT-GPT trains on into a data root of unified records.

    python train/prepare_data.py --format {cc3m,webvid,audiocaps,llava,alpaca,videochat,t2x,mosit} \\
        --input FILE --media DIR --out DATA [--split train|heldout] [--source NAME]

Writes DATA/records/<source>.jsonl (source defaults to the format) and the media as
DATA/<modality>/<record id><ext>. Each skipped entry is printed with its file, line and reason, and
the counts per reason at the end. An input that cannot be read at all prints one `error: ...` line,
exits with status 2 and writes nothing. train/data/readers.py lists the formats.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root first, not train/ (its train.py shadows the package)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from runtime.cli import make_parser
from train.data.prepare import prepare
from train.data.readers import READERS, InputError
from train.data.records import SPLITS


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--format", required=True, choices=list(READERS))
    parser.add_argument("--input", type=Path, required=True, help="the dataset's JSON (array) or JSON Lines file")
    parser.add_argument("--media", type=Path, help="the folder the entries' media file names are relative to")
    parser.add_argument("--out", type=Path, required=True, help="the data root")
    parser.add_argument("--split", default="train", choices=list(SPLITS))
    parser.add_argument("--source", help="the records file and id prefix (default: the format)")
    args = parser.parse_args()
    try:
        report = prepare(args.format, args.input, args.out, args.media, args.split, args.source)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{args.format}: {report.summary()}")


if __name__ == "__main__":
    main()
