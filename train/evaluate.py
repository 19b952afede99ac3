"""Task scores on the synthetic world's held-out split: what a model says and what it draws.

    python train/evaluate.py --engines engines/tiny [--backend torch|onnxruntime|...] [--url HOST:PORT] \\
        --json F [--samples N] [--judges train/checkpoints/judges] [--seed 0]

Every backend answers the same held-out records with the same seed: `torch` is the PyTorch reference
pipeline on the checkpoint the build was made from, `onnxruntime` the runtime on the build's
engines (or another backend label), `--url` the deployment over gRPC. X→text answers are read with the world's own caption
grammar; text→X media are read by the judges (train/judges.py), whose verdicts count only when the
judge is trusted (held-out accuracy at least judges.TRUST). Each text→X request is answered without
`--output` and, when that answer lacks the asked-for modality, again with it: presence is counted
both ways and the judge reads the medium the user would get. `--set foreign` asks about the foreign
set instead (train/foreign.py: held-out combinations drawn, encoded and synthesised by other tools;
X→text only).

A verdict is strict: an answer is right when every attribute its caption or request states is right
(an image's shape, colour, position and background; a video's shape, colour, motion and background;
a sound's kind, pitch and register). `lenient_accuracy` is the older subset, named as such.
With `--set world` the follow-up tasks run too (FOLLOW_UP_TASKS: the world's held-out
conversations, train/conversations.py, asked turn by turn with the model's own answers as history).

JSON: {"tasks": {"image_to_text": {"accuracy": 0.93, "lenient_accuracy": 0.98, "n": 60,
"attributes": {"shape": 1.0, ...}, ...}, ...}, "judges": {...},
"backend": "...", "machine": {...}}. A missing build, a build of another preset or a Triton URL that
does not answer stops with one `error: ...` line and exit status 2.
"""
from __future__ import annotations

import re
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: the repository root first, not train/ (its train.py shadows the package)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from runtime.cli import add_backend, add_url, comma_list, make_parser
from runtime.conversation import Conversation, Medium, Turn
from runtime.manifest import Build, ManifestError, read_manifest
from runtime.request import Request, Response
from train import conversations, foreign, synthetic
from train.data.records import Record, read_records, turn_inputs
from train.judges import DEFAULT_JUDGES, Judge, load_judges

TASKS = {  # task → (input modality or None, output modality or None)
    "image_to_text": ("image", None),
    "audio_to_text": ("audio", None),
    "video_to_text": ("video", None),
    "text_to_image": (None, "image"),
    "text_to_audio": (None, "audio"),
    "text_to_video": (None, "video"),
}
# An answer is right when every attribute its held-out caption or request states is right (the
# record's `attributes`: a caption states each): for X→text read from its words, for text→X by the
# judge. The older, lenient subset is reported beside as `lenient_accuracy`, and counts for nothing.
LENIENT = {
    "image_to_text": ("shape", "colour"),
    "audio_to_text": ("sound",),
    "video_to_text": ("shape", "colour", "motion"),
    "text_to_image": ("shape", "colour"),
    "text_to_audio": ("sound",),
    "text_to_video": ("motion",),
}
# Follow-up tasks: the world's held-out conversations (train/conversations.py), asked turn by turn,
# each answer the model's own and kept as history, the last one judged. X→text: the follow-up
# question's one attribute, read with the world's answer grammar. text→X: the judge reads the medium
# of the last answer, every attribute of the changed (or switched) combination; lenient: the changed
# attribute alone.
FOLLOW_UP_TASKS = {
    "followup_x_to_text": conversations.FOLLOW_UP_X_TO_TEXT,
    "followup_text_to_x": conversations.FOLLOW_UP_TEXT_TO_X,
}
ALL_TASKS = (*TASKS, *FOLLOW_UP_TASKS)
PRESET = "tiny"  # the synthetic world is the tiny preset's world
Answer = Callable[[Request], Response]


class EvaluationError(RuntimeError):
    """What stops an evaluation before it starts: one line for the user."""


def _alternatives(words: list[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


POSITION_OF = {words: place for place, words in synthetic.POSITION_WORDS.items()}


def read_answer(text: str) -> dict[str, str]:
    """The attributes a described medium has, read with the world's caption grammar: the colour is
    the word before the shape ("a red circle on a blue background"), the background's the word before
    "background", the register the word before the sound ("a low tone"), the pitch follows "at"."""
    text = text.lower()
    found = {}
    colours, shapes = _alternatives(list(synthetic.COLOURS)), _alternatives(list(synthetic.SHAPES))
    pair = re.search(rf"\b({colours}) ({shapes})\b", text)
    if pair:
        found["colour"], found["shape"] = pair.groups()
    sounds = _alternatives(list(synthetic.SOUNDS))
    for head, pattern in (
        ("background", rf"\b({colours}) background\b"),
        ("position", rf"\b({_alternatives(list(POSITION_OF))})\b"),
        ("motion", rf"\b({_alternatives(list(synthetic.MOTIONS))})\b"),
        ("register", rf"\b({_alternatives(list(synthetic.REGISTERS))}) (?:{sounds})\b"),
        ("sound", rf"\b({sounds})\b"),
        ("pitch", rf"\bat ({_alternatives(list(synthetic.PITCHES))})\b"),
    ):
        hit = re.search(pattern, text)
        if hit:
            found[head] = POSITION_OF.get(hit.group(1), hit.group(1)) if head == "position" else hit.group(1)
    return found


@dataclass
class Sample:
    task: str
    record: Record
    prompt: str
    file: Path | None


def samples(
    world: Path, per_task: int | None, records_file: Path = synthetic.RECORDS_FILE, tasks: Collection[str] = tuple(TASKS)
) -> list[Sample]:
    """The held-out records of each of `tasks`, in file order, at most `per_task` each. A combination's
    k-th record of a task (another render of it) is asked in the k-th phrasing, so repeats are
    distinct samples for text→X too."""
    out: list[Sample] = []
    records = [r for r in read_records(world / records_file) if r.split == "heldout"]
    for task, (given, asked) in {t: io for t, io in TASKS.items() if t in tasks}.items():
        chosen = [r for r in records if (given in r.inputs if given else r.target == asked and not r.inputs)]
        seen: dict[str, int] = {}
        for r in chosen[:per_task]:
            k = seen[r.caption] = seen.get(r.caption, -1) + 1
            if given:
                out.append(Sample(task, r, _phrasing(synthetic.DESCRIBE[given], k), world / r.inputs[given]))
            else:
                out.append(Sample(task, r, _phrasing(synthetic.REQUEST[asked], k).format(r.caption), None))
    return out


def _phrasing(phrasings: tuple[str, ...], k: int) -> str:
    return phrasings[k % len(phrasings)]


def score(sample: Sample, answer: Response, forced: Response | None, judges: dict[str, Judge], rates: dict[str, float]) -> dict[str, Any]:
    """One answer's verdict: which scored attributes it got right, and for text→X whether the
    asked-for modality is there without and with `--output`."""
    given, asked = TASKS[sample.task]
    truth = sample.record.attributes
    verdict: dict[str, Any] = {"id": sample.record.id, "text": answer.text, "token_ids": list(answer.token_ids)}
    if given:
        seen = read_answer(answer.text)
    else:
        verdict["present"] = asked in answer.media and answer.media[asked].size > 0
        verdict["present_with_output"] = forced is not None and asked in forced.media and forced.media[asked].size > 0
        medium = forced.media.get(asked) if forced is not None else None
        seen = judges[asked].judge(medium, rates.get(asked)) if medium is not None and medium.size else {}
    verdict["seen"] = seen
    verdict["right"] = {h: seen.get(h) == truth[h] for h in truth}
    verdict["correct"] = all(verdict["right"].values())
    verdict["lenient"] = all(verdict["right"][h] for h in LENIENT[sample.task])
    verdict["asked"] = asked
    return verdict


def follow_up_samples(world: Path, per_task: int | None, tasks: Collection[str] = tuple(FOLLOW_UP_TASKS)) -> dict[str, list[Record]]:
    """The held-out conversations of each follow-up task, in file order, at most `per_task` each."""
    records = [r for r in read_records(world / conversations.RECORDS_FILE) if r.split == "heldout"]
    return {task: [r for r in records if r.attributes["kind"] in kinds][:per_task] for task, kinds in FOLLOW_UP_TASKS.items() if task in tasks}


def converse(answer: Answer, record: Record, world: Path, seed: int, steps: int | None) -> tuple[list[Response], Response | None]:
    """The record's user turns asked one by one, each answer the model's own and kept as history
    (its text and ids, signal runs included); returns every answer and, when the last lacks the
    asked-for modality, the last asked again with `--output`."""
    conversation, replies = Conversation(), []
    for turn, media in zip(record.turns, turn_inputs(record), strict=True):
        if replies:
            conversation = conversation.then(Turn.assistant(replies[-1].text, replies[-1].token_ids))
        conversation = conversation.then(Turn.user(turn["human"], [Medium(m, world / p) for m, p in media.items()]))
        replies.append(answer(Request(conversation=conversation, seed=seed, steps=steps)))
    forced = None
    if record.target != "text":
        forced = replies[-1] if record.target in replies[-1].media else answer(
            Request(conversation=conversation, output=record.target, seed=seed, steps=steps)
        )
    return replies, forced


def score_follow_up(record: Record, replies: list[Response], forced: Response | None, judges: dict[str, Judge], rates: dict[str, float]) -> dict[str, Any]:
    """A follow-up's verdict, on its last answer (the earlier ones are kept for comparison)."""
    kind, modality, last = record.attributes["kind"], record.attributes["modality"], replies[-1]
    subject = record.target if record.target != "text" else modality
    truth = {h: record.attributes[h] for h in conversations.HEADS[subject]}
    verdict: dict[str, Any] = {
        "id": record.id, "kind": kind, "text": last.text, "token_ids": list(last.token_ids),
        "history": [{"text": r.text, "token_ids": list(r.token_ids)} for r in replies[:-1]],
    }
    if record.target == "text":
        asked = record.attributes["asks"]
        seen = {asked: conversations.read_follow_up(last.text, modality, asked, record.attributes)}
        truth = {asked: truth[asked]}
    else:
        verdict["present"] = record.target in last.media and last.media[record.target].size > 0
        medium = forced.media.get(record.target) if forced is not None else None
        verdict["present_with_output"] = medium is not None and medium.size > 0
        seen = judges[record.target].judge(medium, rates.get(record.target)) if verdict["present_with_output"] else {}
    verdict["seen"] = seen
    verdict["right"] = {h: seen.get(h) == truth[h] for h in truth}
    verdict["correct"] = all(verdict["right"].values())
    verdict["lenient"] = verdict["right"][record.attributes["changes"]] if record.target != "text" else verdict["correct"]
    verdict["asked"] = None if record.target == "text" else record.target
    return verdict


def check_judges(judges: dict[str, Judge]) -> None:
    """Refuse judges that cannot read every attribute a request states: a strict verdict needs them all."""
    for modality, judge in judges.items():
        missing = set(synthetic.combinations(modality)[0]) - set(judge.vocab)
        if missing:
            raise EvaluationError(f"the {modality} judge has no head for {', '.join(sorted(missing))}; retrain it with train/judges.py")


def summarise(verdicts: dict[str, list[dict[str, Any]]], judges: dict[str, Judge]) -> dict[str, Any]:
    tasks = {}
    for task, rows in verdicts.items():
        asked = sorted({r["asked"] for r in rows} - {None})  # the modalities judges read
        untrusted = [m for m in asked if not judges[m].trusted]
        counts = not untrusted
        entry: dict[str, Any] = {"accuracy": float(np.mean([r["correct"] for r in rows])) if counts and rows else None, "n": len(rows)}
        if counts and rows:
            entry["lenient_accuracy"] = float(np.mean([r["lenient"] for r in rows]))
            heads = list(dict.fromkeys(h for r in rows for h in r["right"]))  # a follow-up asks about one
            entry["attributes"] = {h: float(np.mean([r["right"][h] for r in rows if h in r["right"]])) for h in heads}
        if asked:
            entry["present"] = float(np.mean([r["present"] for r in rows])) if rows else None
            entry["present_with_output"] = float(np.mean([r["present_with_output"] for r in rows])) if rows else None
            if not counts:
                entry["note"] = f"the {', '.join(untrusted)} judge is not trusted"
        entry["samples"] = rows
        tasks[task] = entry
    return tasks


def evaluate(
    answer: Answer,
    world: Path,
    judges: dict[str, Judge],
    rates: dict[str, float],
    per_task: int | None,
    seed: int = 0,
    steps: int | None = None,
    progress: bool = True,
    records_file: Path = synthetic.RECORDS_FILE,
    follow_ups: bool = False,
    tasks: Collection[str] = ALL_TASKS,
) -> dict[str, list[dict[str, Any]]]:
    """Verdicts per task of `tasks`, for those the set has samples of; with `follow_ups`, the
    follow-up tasks on the world's conversations too."""
    verdicts: dict[str, list[dict[str, Any]]] = {}
    if follow_ups:
        chosen = [(task, r) for task, rs in follow_up_samples(world, per_task, tasks).items() for r in rs]
        for task, record in tqdm(chosen, desc="follow-ups", unit="conversation", disable=not progress):
            replies, forced = converse(answer, record, world, seed, steps)
            verdicts.setdefault(task, []).append(score_follow_up(record, replies, forced, judges, rates))
    for s in tqdm(samples(world, per_task, records_file, tasks), desc="evaluate", unit="sample", disable=not progress):
        files = {TASKS[s.task][0]: s.file} if s.file else {}
        req = Request(prompt=s.prompt, files=files, seed=seed, steps=steps)
        natural = answer(req)
        forced = None
        if TASKS[s.task][1]:
            req.output = TASKS[s.task][1]
            forced = natural if req.output in natural.media else answer(req)
        verdicts.setdefault(s.task, []).append(score(s, natural, forced, judges, rates))
    return verdicts


def open_backend(build: Build, backend: str, triton: str | None) -> tuple[Answer, Callable[[], None]]:
    """A callable Request → Response for the chosen path, and how to close it."""
    if triton:
        from triton_repo.client import Any2AnyClient

        client = Any2AnyClient(triton)
        try:
            ready = client.client.is_server_ready()
        except Exception as e:  # tritonclient raises its own exception types for a dead endpoint
            client.close()
            raise EvaluationError(f"Triton at {triton} does not answer ({str(e).splitlines()[0]})") from None
        if not ready:
            client.close()
            raise EvaluationError(f"Triton at {triton} is not ready")
        return client.infer, client.close
    if backend == "torch":
        from train.model import load_checkpoint
        from train.reference import ReferencePipeline

        checkpoint = Path(build.data["checkpoint"]["path"])
        return ReferencePipeline(load_checkpoint(checkpoint), progress=False), lambda: None
    from runtime.pipeline import Any2AnyPipeline

    return Any2AnyPipeline(build.root, backend), lambda: None


def check_build(engines: Path) -> Build:
    try:
        build = read_manifest(engines)
    except (ManifestError, OSError) as e:
        raise EvaluationError(f"{engines}: not a usable build ({e})") from None
    preset = build.config.get("preset")
    if preset != PRESET:
        raise EvaluationError(f"{engines}: a build of the {preset!r} preset; the synthetic world is {PRESET!r}'s")
    return build


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--engines", type=Path, required=True, help="the build (its manifest names the checkpoint)")
    add_backend(parser, help="torch: the PyTorch reference pipeline; the others run the build's engines")
    add_url(parser, None, "evaluate the deployment at this gRPC address instead")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--samples", type=int, help="held-out samples per task (default: all)")
    parser.add_argument("--tasks", type=comma_list("task", ALL_TASKS), default=list(ALL_TASKS), help=f"comma-separated, of: {', '.join(ALL_TASKS)} (default: all)")
    parser.add_argument("--judges", type=Path, default=DEFAULT_JUDGES)
    parser.add_argument("--set", choices=("world", "foreign"), default="world", help="the world's held-out split, or the foreign set of media other tools made (train/foreign.py; X→text only)")
    parser.add_argument("--seed", type=int, default=0, help="the world's seed")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        build = check_build(args.engines)
        judges = load_judges(args.judges)
        check_judges(judges)
        answer, close = open_backend(build, args.backend, args.url)
    except (RuntimeError, ValueError, OSError) as e:  # EvaluationError, and a build this machine refuses (runtime.versions)
        print(f"error: {e}", file=sys.stderr)
        return 2
    from benchmarks.machine import describe_machine
    from benchmarks.report import save_report

    if args.set == "foreign":
        root, records_file = foreign.ensure_foreign(progress=not args.quiet), foreign.RECORDS_FILE
    else:
        root, records_file = synthetic.ensure_world(args.seed, progress=not args.quiet), synthetic.RECORDS_FILE
        conversations.ensure_conversations(root, args.seed, progress=not args.quiet)
    rates = {"audio": float(build.config["decoders"]["audio"]["sample_rate"])}
    try:
        verdicts = evaluate(
            answer, root, judges, rates, args.samples, args.seed, args.steps, not args.quiet, records_file, args.set == "world", args.tasks
        )
    finally:
        close()
    result = {
        "tasks": summarise(verdicts, judges),
        "judges": {m: {"heldout_accuracy": j.heldout_accuracy, "trusted": j.trusted} for m, j in judges.items()},
        "set": args.set,
        "backend": f"triton {args.url}" if args.url else args.backend,
        "machine": describe_machine(0),
    }
    save_report(args.json, result, None, args.engines)
    for task, entry in result["tasks"].items():
        acc = "untrusted judge" if entry["accuracy"] is None else f"{entry['accuracy']:.1%} (lenient {entry['lenient_accuracy']:.1%})"
        present = f"  present {entry['present']:.0%} / with --output {entry['present_with_output']:.0%}" if "present" in entry else ""
        heads = ", ".join(f"{h} {v:.0%}" for h, v in entry.get("attributes", {}).items())
        print(f"{task:18s} {acc:>16s}  n={entry['n']}{present}  ({heads})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
