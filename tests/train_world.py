"""A small data root in the unified format, written by hand for the training tests."""
from __future__ import annotations

from pathlib import Path

import torch

from runtime import media
from train import synthetic
from train.data.records import Record, write_records

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def write_small_world(root: Path, count: int = 8, rate: int = 16000) -> list[Record]:
    """`count` records of each kind: image→caption, text→image, audio→caption, text→video, text→audio."""
    records = []
    for folder in ("image", "audio", "video"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        colour, background = COLOURS[i % len(COLOURS)], COLOURS[(i + 3) % len(COLOURS)]
        caption = f"a {colour} circle on a {background} background"
        image = f"image/img-{i}.png"
        media.write_png(root / image, synthetic.shape_image(colour, background, 64))
        records.append(Record(f"img-{i}", "test", "train", [{"human": "what is this?", "assistant": caption}],
                              "text", {"image": image}, {}, caption))
        records.append(Record(f"t2i-{i}", "test", "train",
                              [{"human": f"show me {caption}", "assistant": "here it is [IMG0][IMG1][IMG2][IMG3]"}],
                              "image", {}, {"image": image}, caption))
        sound = f"audio/aud-{i}.wav"
        media.write_wav(root / sound, synthetic.tone(220.0 * (1 + i), 2.0, rate), rate)
        records.append(Record(f"aud-{i}", "test", "train", [{"human": "what do you hear?", "assistant": f"a tone number {i}"}],
                              "text", {"audio": sound}, {}, f"a tone number {i}"))
        video = f"video/vid-{i}.mp4"
        media.write_video(root / video, synthetic.moving_shape_video(colour, background, 32, 8), fps=4.0)
        vcap = f"a {colour} circle moving right"
        records.append(Record(f"t2v-{i}", "test", "train",
                              [{"human": "make a video", "assistant": "ok " + "".join(f"[VID{k}]" for k in range(24))}],
                              "video", {}, {"video": video}, vcap))
    records.append(Record("held-0", "test", "heldout", [{"human": "hi", "assistant": "hello"}]))
    write_records(root / "records" / "test.jsonl", records)
    return records


def fake_embeddings(records: list[Record], config: dict, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Fixed random caption targets per decoder, shaped (embed_tokens, embed_dim) as the real ones."""
    g = torch.Generator().manual_seed(seed)
    tables: dict[str, dict[str, torch.Tensor]] = {}
    for modality, section in config["decoders"].items():
        shape = (section["embed_tokens"], section["embed_dim"])
        tables[modality] = {r.id: torch.randn(shape, generator=g) for r in records}
    return tables
