"""From unified records (train/data/records.py) to training batches, one task per stage.

- `caption` (stage 1): a record with input media and a caption becomes
  `### Human: <Img>[mm]</Img> {caption_prompt}\\n### Assistant: {caption}\\n###`, loss on the answer.
- `signal` (stage 2): a record with a caption and one medium becomes, as in the reference,
  `### Human: {caption}\\n### Assistant: [IMG0]..[IMG3]\\n###`, with the caption's embedding by that
  medium's decoder text encoder as the projector's target.
- `dialogue` (stage 3): the record's own turns, each turn's input media before its text, each medium
  its own `<Img>[mm]</Img>` span; the last answer that carries a signal-token run targets the record's
  caption embedding (an earlier run is history: LM loss only).

The prompt is built by `runtime.prompt.conversation_prompt` and the media read by `runtime.inputs`, the code
the serving side runs, so training and serving see the same token ids and the same ImageBind input.
Records that do not fit the task are dropped at construction and counted by reason.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from runtime import media as media_io
from runtime.inputs import prepare_inputs
from runtime.conversation import Medium, Turn
from runtime.prompt import PromptError, conversation_prompt
from runtime.signals import SignalVocab
from train.data.records import MODALITIES, Record, all_inputs, turn_inputs
from train.mel import mel_target

IGNORE = -100  # label of a position that carries no loss (prompt, padding), as torch's cross_entropy


@dataclass(frozen=True)
class Slot:
    """One input medium of an example: the position of its `[mm]` token and the file ImageBind reads."""

    position: int
    modality: str
    path: Path


@dataclass
class Example:
    ids: list[int]
    labels: list[int]
    media: list[Slot]  # in dialogue order, each its own position
    targets: dict[str, tuple[int, Tensor]] = field(default_factory=dict)  # modality -> (run start, caption embedding)
    gen_media: dict[str, Path] = field(default_factory=dict)  # modality -> file whose latents the gen loss denoises


class Tokens:
    """The checkpoint's tokenizer and template, as the serving side uses them."""

    def __init__(self, tokenizer: Any, config: dict[str, Any]) -> None:
        self.tokenizer = tokenizer
        self.template = config["prompt"]
        self.bos_id = config["tokens"]["bos_id"]
        self.vocab = SignalVocab({m: list(ids) for m, ids in config["tokens"]["signal_ids"].items()})

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def run_text(self, modality: str) -> str:
        return "".join(self.tokenizer.convert_ids_to_tokens(self.vocab.runs[modality]))

    def dialogue(self, turns: Sequence[dict[str, Any]], media: Sequence[str] = ()) -> tuple[list[int], list[int], list[int]]:
        """Token ids, labels (the answers only, each closed by the stop marker) and the media slots,
        in order: record turns as a conversation whose first turn has one input of each of `media`
        and each later turn those of its own `inputs` (train/data/records.py)."""
        conversation = []
        for n, t in enumerate(turns):
            modalities = media if n == 0 else list(t.get("inputs", {}))
            conversation += [Turn.user(t["human"], [Medium(m, Path()) for m in modalities]), Turn.assistant(t["assistant"])]
        prompt = conversation_prompt(conversation, self.template, self.encode, self.bos_id, self.tokenizer.unk_token_id)
        labels = [IGNORE] * len(prompt.ids)
        for start, end in prompt.answers:
            labels[start:end] = prompt.ids[start:end]
        return prompt.ids, labels, prompt.media_positions


def _media_of(record: Record) -> str | None:
    """The one medium a caption describes: the answer's (text→X) or else the input's (X→text)."""
    for group in (record.outputs, record.inputs):
        for modality in MODALITIES:
            if modality in group:
                return modality
    return None


class RecordDataset(Dataset):
    """The train split of `records` as examples of `task`; `dropped` counts what was left out and why."""

    def __init__(
        self,
        records: Sequence[Record],
        root: Path,
        task: str,
        tokens: Tokens,
        config: dict[str, Any],
        train_config: dict[str, Any],
        embeddings: Mapping[str, Mapping[str, Tensor]],
    ) -> None:
        self.root, self.task, self.tokens = Path(root), task, tokens
        self.config, self.train_config, self.embeddings = config, train_config, embeddings
        loss = train_config["loss"]
        self.gen_modalities = set(loss["gen_modalities"]) if loss["gen_loss"] else set()
        self.dropped: Counter[str] = Counter()
        self.examples: list[Example] = []
        # `cache_media`: decoded, preprocessed media kept after their first read (a small data set
        # trained for many epochs; the inputs feed the frozen encoder and never change)
        self.cache: dict[int, dict[str, Any]] = {}
        skipped = set(train_config.get("skip_sources") or [])
        for record in records:
            if record.split != "train":
                continue
            if record.source in skipped:
                self.dropped[f"{record.source} records (skip_sources)"] += 1
                continue
            example = self._example(record)
            if isinstance(example, str):
                self.dropped[example] += 1
            else:
                self.examples.append(example)
        # `repeat`: an example whose answer is a signal-token run of a modality appears that many times
        # an epoch (a modality with few captions, such as the world's 115 sounds, against 1344 images)
        repeat = train_config.get("repeat") or {}
        self.examples += [e for e in self.examples for m in e.targets for _ in range(repeat.get(m, 1) - 1)]

    def _example(self, record: Record) -> Example | str:
        """The record as an example, or the reason it does not fit."""
        missing = [p for p in (*all_inputs(record), *record.outputs.values()) if not (self.root / p).is_file()]
        if missing:
            return "missing media file"
        builder = {"caption": self._caption, "signal": self._signal, "dialogue": self._dialogue}[self.task]
        try:
            example = builder(record)
        except PromptError:
            return "empty prompt"
        if isinstance(example, str):
            return example
        if len(example.ids) > self.train_config["max_length"]:
            return "longer than max_length"
        return example

    def _target(self, record: Record, modality: str, ids: list[int]) -> dict[str, tuple[int, Tensor]] | str:
        start = last_run(self.tokens.vocab.runs[modality], ids)
        if start is None:
            return f"answer has no complete {modality} run"
        table = self.embeddings.get(modality)
        if table is None or record.id not in table:
            return f"no {modality} caption embedding"
        return {modality: (start, table[record.id])}

    def _gen(self, record: Record, modality: str) -> dict[str, Path]:
        path = record.outputs.get(modality) or record.inputs.get(modality)
        return {modality: self.root / path} if modality in self.gen_modalities and path else {}

    def _media(self, positions: list[int], media: list[dict[str, str]]) -> list[Slot]:
        files = [(m, self.root / path) for turn in media for m, path in turn.items()]
        return [Slot(pos, m, path) for pos, (m, path) in zip(positions, files, strict=True)]

    def _caption(self, record: Record) -> Example | str:
        if not record.inputs:
            return "no input media"
        if not record.caption:
            return "no caption"
        first, *later = turn_inputs(record)
        if any(later):
            return "media on several turns"  # which medium would the one caption describe?
        turn = {"human": self.train_config["caption_prompt"], "assistant": record.caption}
        ids, labels, positions = self.tokens.dialogue([turn], list(first))
        return Example(ids, labels, self._media(positions, [first]))

    def _signal(self, record: Record) -> Example | str:
        modality = _media_of(record)
        if modality is None or not record.caption:
            return "no captioned media"
        turn = {"human": record.caption, "assistant": self.tokens.run_text(modality)}
        ids, labels, _ = self.tokens.dialogue([turn])
        target = self._target(record, modality, ids)
        if isinstance(target, str):
            return target
        return Example(ids, labels, [], target, self._gen(record, modality))

    def _dialogue(self, record: Record) -> Example | str:
        media = turn_inputs(record)
        turns = [{**t, "inputs": m} for t, m in zip(record.turns, media, strict=True)]
        ids, labels, positions = self.tokens.dialogue(turns, list(media[0]))
        example = Example(ids, labels, self._media(positions, media))
        if record.target in MODALITIES:
            if not record.caption:
                return "media answer without caption"
            target = self._target(record, record.target, ids)
            if isinstance(target, str):
                return target
            example.targets, example.gen_media = target, self._gen(record, record.target)
        return example

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index in self.cache:
            return self.cache[index]
        example = self.examples[index]
        # one medium at a time: two media of one modality (two pictures on two turns) are two inputs
        inputs = [
            torch.from_numpy(prepare_inputs(self.config["imagebind"], {m.modality: m.path})[m.modality]) for m in example.media
        ]
        gen = {m: self._gen_target(m, path) for m, path in example.gen_media.items()}
        item = {"example": example, "inputs": inputs, "gen": gen}
        if self.train_config.get("cache_media"):
            self.cache[index] = item
        return item

    def _gen_target(self, modality: str, path: Path) -> Tensor:
        """What the decoder's VAE encodes: an image (3, H, W) or video frames (3, F, H, W) in [-1, 1],
        or audio as AudioLDM's log-mel spectrogram (1, frames, mel bins)."""
        section = self.config["decoders"][modality]
        if modality == "audio":
            wave, rate = media_io.read_audio(path)
            return mel_target(media_io.resample(wave, rate, section["vocoder"]["sampling_rate"]), section)
        size = (section["width"], section["height"])
        if modality == "image":
            return _to_unit(media_io.read_image(path), size)
        frames, _ = media_io.read_video(path)
        pick = np.linspace(0, len(frames) - 1, section["frames"]).round().astype(int)
        return torch.stack([_to_unit(frames[i], size) for i in pick], dim=1)


def last_run(run: Sequence[int], ids: Sequence[int]) -> int | None:
    """Start of the last complete `run` in `ids`: the answer a conversation ends with, after earlier
    runs of the same modality in its history."""
    n = len(run)
    return next((s for s in range(len(ids) - n, -1, -1) if list(ids[s : s + n]) == list(run)), None)


def _to_unit(image: np.ndarray, size: tuple[int, int]) -> Tensor:
    resized = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC), np.float32)
    return torch.from_numpy(resized).permute(2, 0, 1) / 127.5 - 1.0


def collate(items: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-padded ids, mask and labels; per modality the rows, run starts and targets."""
    examples = [item["example"] for item in items]
    length = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id)
    labels = torch.full((len(examples), length), IGNORE)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.ids)] = 1
    targets: dict[str, dict[str, Any]] = {}
    for modality in MODALITIES:
        rows = [row for row, e in enumerate(examples) if modality in e.targets]
        if rows:
            targets[modality] = {
                "rows": torch.tensor(rows),
                "starts": torch.tensor([examples[r].targets[modality][0] for r in rows]),
                "embeds": torch.stack([examples[r].targets[modality][1] for r in rows]).float(),
                "gen": [items[r]["gen"].get(modality) for r in rows],
            }
    return {
        "ids": ids,
        "labels": labels,
        "attention_mask": mask,
        # per row, each medium's (position, modality, ImageBind input)
        "media": [
            [(m.position, m.modality, x) for m, x in zip(item["example"].media, item["inputs"], strict=True)] for item in items
        ],
        "targets": targets,
    }
