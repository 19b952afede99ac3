"""Where a sound's attributes are lost on the way into the LLM: a linear probe at each link.

    python benchmarks/audio_probe.py [--checkpoint train/checkpoints/tiny] [--json F]

Every sound combination of the world is rendered, written as a WAV and read back the way a user's
file is (runtime/inputs.py). At each link of the audio path (ImageBind's log-mel input averaged over
time, ImageBind's embedding, the projected LLM token) a linear classifier per attribute (sound,
pitch, register) is fitted on the train split's combinations and scored on the held-out ones. A link
whose probe fails has lost what the caption must say; the first such link is where to fix it.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from runtime.inputs import prepare_inputs
from train import synthetic
from train.model import NextGPT, load_checkpoint

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "train" / "checkpoints" / "tiny"
HEADS = ("sound", "pitch", "register")
PROBE_STEPS = 500


@torch.no_grad()
def link_features(model: NextGPT, combos: list[dict[str, str]], variant: int = 0) -> dict[str, np.ndarray]:
    """Per link, one feature row per combination."""
    rows: dict[str, list[np.ndarray]] = {"log_mel": [], "imagebind": [], "projected": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, a in enumerate(combos):
            path = Path(tmp) / f"{i}.wav"
            synthetic.write_medium(path, "audio", a, variant=variant)
            clips = torch.from_numpy(prepare_inputs(model.config["imagebind"], {"audio": path})["audio"])
            embedding = model.encoder.encode_audio(clips)
            rows["log_mel"].append(clips.mean(dim=(1, 2, 4)).numpy()[0])
            rows["imagebind"].append(embedding.numpy()[0])
            rows["projected"].append(model.input_projection(embedding).reshape(-1).numpy())
    return {link: np.stack(r) for link, r in rows.items()}


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, classes: int, seed: int = 0) -> np.ndarray:
    """The classes a softmax regression fitted on standardised train features gives the test rows."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x, tx = (torch.from_numpy((v - mean) / std).float() for v in (train_x, test_x))
    torch.manual_seed(seed)
    linear = nn.Linear(x.shape[1], classes)
    opt = torch.optim.Adam(linear.parameters(), lr=0.05, weight_decay=1e-3)
    y = torch.from_numpy(train_y)
    for _ in range(PROBE_STEPS):
        opt.zero_grad()
        nn.functional.cross_entropy(linear(x), y).backward()
        opt.step()
    return linear(tx).argmax(-1).numpy()


def measure(model: NextGPT, seed: int = 0) -> dict[str, dict[str, float]]:
    """Held-out probe accuracy per link and attribute."""
    split = synthetic.combination_splits(seed)["audio"]
    train, held = link_features(model, split["train"]), link_features(model, split["heldout"])
    out: dict[str, dict[str, float]] = {}
    for link in train:
        out[link] = {}
        for head in HEADS:
            values = sorted({a[head] for a in synthetic.combinations("audio")})
            y = np.array([values.index(a[head]) for a in split["train"]])
            truth = np.array([values.index(a[head]) for a in split["heldout"]])
            out[link][head] = float(np.mean(probe(train[link], y, held[link], len(values), seed) == truth))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="the world's seed: which combinations are held out (default: %(default)s)")
    p.add_argument("--json", type=Path, help="write the table here")
    args = p.parse_args(argv)
    result = measure(load_checkpoint(args.checkpoint), args.seed)
    print(f"{'link':10s} " + " ".join(f"{h:>9s}" for h in HEADS))
    for link, heads in result.items():
        print(f"{link:10s} " + " ".join(f"{heads[h]:9.0%}" for h in HEADS))
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "heldout_accuracy": result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
