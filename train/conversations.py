"""Multi-turn conversations in the synthetic world: follow-ups about earlier turns.

`write_conversations(root, seed)` adds `records/conversations.jsonl` (and the media it needs under
`conversation/`) to a world written by `synthetic.write_world` with the same seed. Four kinds, each
answered in the world's own words (`synthetic.follow_ups`, `synthetic.CAPTION`):

- `ask`: a medium and a question about one attribute, then a follow-up question about another
  ("what shape is it?" ... "what colour is the background?"): the follow-up needs the medium, not
  the text of the first answer;
- `compare`: media on two turns (a question about the first, "and this one?" about the second), then a
  question about the first one again;
- `transform`: a medium described or a request answered with its signal run, then a request that
  changes one attribute of it ("the same shape but blue", "make it move left", "the same sound but
  low"), answered with the run whose caption is the changed combination's;
- `switch`: an image (or video) described, then a video of it moving (or a picture of it at a place).

The held-out split is cut as the world's (`synthetic.combination_splits`): a train conversation holds
train combinations only, and a held-out one is about a held-out combination (the medium a follow-up
question asks about, or the combination a follow-up request asks for), so no held-out combination is
ever seen in training. `ask` and `compare` are follow-up X→text, `transform` and `switch` follow-up
text→X (train/evaluate.py). Media are the world's own files where it rendered the combination,
otherwise rendered by `synthetic.write_medium` once per combination. Counts live in
`presets.WORLD["conversations"]`.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from train import synthetic
from train.data.records import Record, read_records, write_records
from train.presets import WORLD, signal_tokens
from train.synthetic import Counts

SOURCE = "conversation"
RECORDS_FILE = Path("records") / f"{SOURCE}s.jsonl"
FOLLOW_UP_X_TO_TEXT = ("ask", "compare")
FOLLOW_UP_TEXT_TO_X = ("transform", "switch")
KINDS = (*FOLLOW_UP_X_TO_TEXT, *FOLLOW_UP_TEXT_TO_X)
# the attribute each of synthetic.follow_ups' questions asks about, in its order
HEADS = {
    "image": ("shape", "colour", "background", "position"),
    "video": ("shape", "colour", "background", "motion"),
    "audio": ("sound", "pitch", "register"),
}
NOUN = {"image": "picture", "video": "video", "audio": "sound"}
MOTION_VERB = {
    "moving left": "move left", "moving right": "move right", "moving up": "move up", "moving down": "move down",
    "growing": "grow", "shrinking": "shrink",
}
# per changed attribute, how a follow-up asks for it (the value filled in)
CHANGE: dict[str, Callable[[str], str]] = {
    "colour": lambda v: f"the same shape but {v}",
    "background": lambda v: f"the same but on {synthetic._a(v)} background",
    "shape": lambda v: f"make it {synthetic._a(v)} instead",
    "position": lambda v: f"put it {synthetic.POSITION_WORDS[v]}",
    "motion": lambda v: f"make it {MOTION_VERB[v]}",
    "sound": lambda v: f"make it {synthetic._a(v)} instead",
    "pitch": lambda v: f"the same sound but at {v}",
    "register": lambda v: f"make it {synthetic._a(v)} sound",
}
SWITCH = {  # from → (to, the attribute the switch adds, how it is asked)
    "image": ("video", "motion", lambda v: f"make a video of it {v}"),
    "video": ("image", "position", lambda v: f"show me a picture of it {synthetic.POSITION_WORDS[v]}"),
}
Combo = dict[str, str]


def answer_to(modality: str, head: str, a: Combo) -> tuple[str, str]:
    """The world's question about `head` of a medium `a`, and its answer."""
    return dict(zip(HEADS[modality], synthetic.follow_ups(modality, a), strict=True))[head]


def read_follow_up(text: str, modality: str, head: str, a: Combo) -> str | None:
    """The value an answer to a question about `head` names, read with the world's answer grammar
    (`a` supplies the other attributes the question mentions); None when the answer is not of that form."""
    text = " ".join(text.lower().split())
    values = sorted({c[head] for c in synthetic.combinations(modality)})
    return next((v for v in values if answer_to(modality, head, {**a, head: v})[1] == text), None)


def _turn(human: str, assistant: str, inputs: dict[str, str] | None = None) -> dict[str, Any]:
    return {"human": human, "assistant": assistant, **({"inputs": inputs} if inputs else {})}


def _here(modality: str) -> str:
    return f"{synthetic.HERE[modality]} {''.join(signal_tokens(modality))}"


class _Planner:
    """Draws conversations of one split from the seed's combination pools."""

    def __init__(self, split: str, pools: dict[str, dict[str, list[Combo]]], rng: np.random.Generator) -> None:
        self.split, self.rng = split, rng
        self.pools = {m: p[split] for m, p in pools.items()}
        self.known = {m: {_key(a) for a in p} for m, p in self.pools.items()}

    def pick(self, items: list[Any] | tuple[Any, ...]) -> Any:
        return items[int(self.rng.integers(len(items)))]

    def combo(self, modality: str) -> Combo:
        return dict(self.pick(self.pools[modality]))

    def ask(self, modality: str) -> tuple[list[dict[str, Any]], str, Combo, dict[str, str]]:
        a = self.combo(modality)
        first, second = (HEADS[modality][int(i)] for i in self.rng.choice(len(HEADS[modality]), 2, replace=False))
        # half open with a description, whose text already says the follow-up's answer; half with a
        # question about another attribute, so that the follow-up needs the medium itself
        described = self.rng.random() < 0.5
        opening = self.pick(synthetic._descriptions(modality, a))[0] if described else _turn(*answer_to(modality, first, a))
        turns = [{**opening, "inputs": {modality: ""}}, _turn(*answer_to(modality, second, a))]
        return turns, "text", a, {"asks": second}

    def compare(self, modality: str) -> tuple[list[dict[str, Any]], str, Combo, dict[str, str]]:
        a, b = self.combo(modality), self.combo(modality)
        first, second = (HEADS[modality][int(i)] for i in self.rng.choice(len(HEADS[modality]), 2, replace=False))
        question, answer = answer_to(modality, second, a)
        turns = [
            _turn(*answer_to(modality, first, a), {modality: ""}),
            _turn("and this one?", answer_to(modality, first, b)[1], {modality: "second"}),
            _turn(f"back to the first {NOUN[modality]}: {question}", answer),
        ]
        return turns, "text", a, {"asks": second, "second": synthetic.CAPTION[modality](b)}

    def _opening(self, modality: str, a: Combo) -> dict[str, Any]:
        """The first turn of a request that follows up: `a` described from its medium, or asked for in words."""
        if self.rng.random() < 0.5:
            return {**self.pick(synthetic._descriptions(modality, a))[0], "inputs": {modality: ""}}
        return synthetic._turn(self.pick(synthetic.REQUEST[modality]).format(synthetic.CAPTION[modality](a)), _here(modality))

    def transform(self, modality: str) -> tuple[list[dict[str, Any]], str, Combo, dict[str, str]] | None:
        """A target from this split, and a source one attribute away (train: from train too)."""
        target = self.combo(modality)
        head = self.pick(HEADS[modality])
        sources = [
            a for a in synthetic.combinations(modality)
            if all(a[h] == target[h] for h in HEADS[modality] if h != head) and a[head] != target[head]
            and (self.split == "heldout" or _key(a) in self.known[modality])
        ]
        if not sources:
            return None
        source = self.pick(sources)
        turns = [self._opening(modality, source), _turn(CHANGE[head](target[head]), _here(modality))]
        return turns, modality, target, {"changes": head, "from": synthetic.CAPTION[modality](source)}

    def switch(self, modality: str) -> tuple[list[dict[str, Any]], str, Combo, dict[str, str]] | None:
        to, added, ask = SWITCH[modality]
        target = self.combo(to)
        shared = {h: v for h, v in target.items() if h != added}
        sources = [
            a for a in synthetic.combinations(modality)
            if all(a[h] == v for h, v in shared.items()) and (self.split == "heldout" or _key(a) in self.known[modality])
        ]
        if not sources:
            return None
        source = self.pick(sources)
        turns = [self._opening(modality, source), _turn(ask(target[added]), _here(to))]
        return turns, to, target, {"changes": added, "from": synthetic.CAPTION[modality](source)}


def _key(a: Combo) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(a.items()))


def plan_conversations(
    seed: int = 0, counts: Counts | None = None, world: dict[str, Any] = WORLD
) -> list[tuple[Record, dict[str, Combo]]]:
    """The conversation records of a seed ({split: {kind: n}}, by default `world["conversations"]`),
    each with the combination of every medium it names, by path."""
    pools = synthetic.combination_splits(seed, world)
    rng = np.random.default_rng([seed, 31])  # a stream of its own: the world's records stay as they were
    out = []
    for split in ("train", "heldout"):
        planner = _Planner(split, pools, rng)
        for kind, n in sorted((world["conversations"] if counts is None else counts).get(split, {}).items()):
            if kind not in KINDS:
                raise ValueError(f"unknown conversation kind {kind!r}; known: {', '.join(KINDS)}")
            modalities = tuple(SWITCH) if kind == "switch" else tuple(synthetic.CAPTION)
            made = 0
            for _ in range(50 * n):  # a draw may find no source one attribute away in the split
                if made == n:
                    break
                modality = modalities[int(rng.integers(len(modalities)))]
                drawn = getattr(planner, kind)(modality)
                if drawn is not None:
                    out.append(_record(f"{SOURCE}-{split}-{kind}-{made:05d}", split, kind, modality, *drawn))
                    made += 1
            if made < n:
                raise ValueError(f"{split}: could not draw {n} {kind} conversations")
    return out


def _record(
    rid: str, split: str, kind: str, modality: str, turns: list[dict[str, Any]], target: str, subject: Combo, extra: dict[str, str]
) -> tuple[Record, dict[str, Combo]]:
    """A record whose media paths are placeholders: "" for the subject's medium (or the source's,
    parsed from `extra["from"]`), "second" for a compare's second medium."""
    media = {}
    for turn in turns:
        for m, slot in turn.get("inputs", {}).items():
            caption = extra["second"] if slot == "second" else extra.get("from") or synthetic.CAPTION[m](subject)
            media[_path(split, m, caption)] = _combo_of(m, caption)
            turn["inputs"] = {m: _path(split, m, caption)}
    caption = synthetic.CAPTION[target if target != "text" else modality](subject)
    outputs = {}
    if target != "text":
        outputs = {target: _path(split, target, caption)}
        media[outputs[target]] = subject
    first = turns[0].pop("inputs", {})
    record = Record(
        id=rid, source=SOURCE, split=split, turns=turns, target=target, inputs=first, outputs=outputs,
        caption=caption, attributes={**subject, "kind": kind, "modality": modality, **extra},
    )
    return record, media


def _path(split: str, modality: str, caption: str) -> str:
    """A combination's file, one per split: the splits share no file, as in the world."""
    return f"conversation/{split}/{modality}/{caption.replace(' ', '-')}{synthetic.EXT[modality]}"


def _combo_of(modality: str, caption: str) -> Combo:
    return next(a for a in synthetic.combinations(modality) if synthetic.CAPTION[modality](a) == caption)


def write_conversations(
    root: Path, seed: int = 0, counts: Counts | None = None, world: dict[str, Any] = WORLD, progress: bool = True
) -> Path:
    """Add the conversations of `seed` to the world at `root`; returns the records file. A medium the
    world rendered for the same combination and split is reused, any other rendered once."""
    root = Path(root)
    planned = plan_conversations(seed, counts, world)
    rendered = _world_media(root)
    renames: dict[str, str] = {}
    to_render: dict[str, tuple[str, Combo]] = {}
    for record, media in planned:
        for path, a in media.items():
            modality = path.split("/")[2]
            known = rendered.get((record.split, modality, synthetic.CAPTION[modality](a)))
            if known:
                renames[path] = known
            else:
                to_render[path] = (modality, a)
    for folder in {(root / p).parent for p in to_render}:
        folder.mkdir(parents=True, exist_ok=True)
    synthetic.map_media(
        lambda item: synthetic.write_medium(root / item[0], item[1][0], item[1][1], world), to_render.items(),
        f"conversations (seed {seed})", progress,
    )
    write_records(root / RECORDS_FILE, (_relink(record, renames) for record, _ in planned))
    return root / RECORDS_FILE


def _world_media(root: Path) -> dict[tuple[str, str, str], str]:
    """(split, modality, caption) → a file the world rendered for that combination."""
    found = {}
    for record in read_records(root / synthetic.RECORDS_FILE):
        for modality, path in {**record.inputs, **record.outputs}.items():
            found.setdefault((record.split, modality, record.caption), path)
    return found


def _relink(record: Record, renames: dict[str, str]) -> Record:
    def swap(media: dict[str, str]) -> dict[str, str]:
        return {m: renames.get(p, p) for m, p in media.items()}

    turns = [{**t, "inputs": swap(t["inputs"])} if "inputs" in t else t for t in record.turns]
    return Record(
        id=record.id, source=record.source, split=record.split, turns=turns, target=record.target,
        inputs=swap(record.inputs), outputs=swap(record.outputs), caption=record.caption, attributes=record.attributes,
    )


def ensure_conversations(root: Path, seed: int = 0, progress: bool = True) -> Path:
    """The conversations of the world at `root` (seed `seed`), written on first use."""
    path = Path(root) / RECORDS_FILE
    return path if path.is_file() else write_conversations(root, seed, progress=progress)
