"""Where a sound's attributes are lost on the way into the LLM: a linear probe at each link.

    python benchmarks/audio_probe.py [--checkpoint train/checkpoints/tiny] [--json F]
        [--retrain-audio STEPS [--batch N]]

Every sound combination of the world is rendered, written as a WAV and read back the way a user's
file is (runtime/inputs.py). At each link of the audio path (ImageBind's log-mel input averaged over
time, ImageBind's embedding, the projected LLM token) a linear classifier per attribute (sound,
pitch, register) is fitted on the train split's combinations and scored on the held-out ones. A link
whose probe fails has lost what the caption must say; the first such link is where to fix it.
`--retrain-audio` first starts the checkpoint's audio trunk afresh and trains it by stage 0's audio
part alone (train/configs/stage_0.yaml's settings, STEPS steps, batch N): a short stage-0 run to
compare stage-0 changes by (the projected link then reads a projector trained on the old trunk).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from runtime.cli import make_parser
from runtime.inputs import prepare_inputs
from train import synthetic
from train.model import NextGPT, load_checkpoint
from train.pretrain import load_stage0_config
from train.pretrain.encoders import pretrain_imagebind
from train.pretrain.world_data import WorldData

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "train" / "checkpoints" / "tiny"
HEADS = ("sound", "pitch", "register")
PROBE_STEPS = 500
STAGE_0 = Path(__file__).resolve().parents[1] / "train" / "configs" / "stage_0.yaml"
AUDIO_PARTS = ("modality_preprocessors", "modality_trunks", "modality_heads")


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


def retrain_audio_trunk(model: NextGPT, steps: int, batch: int | None = None, seed: int = 0, progress: bool = True) -> float:
    """The audio trunk's weights drawn afresh for `seed`, then trained by stage 0's audio part for
    `steps` steps; returns its final InfoNCE loss."""
    torch.manual_seed(seed)
    fresh = NextGPT(model.config, model.tokenizer, decoders={})
    for part in AUDIO_PARTS:
        getattr(model.encoder, part)["audio"].load_state_dict(getattr(fresh.encoder, part)["audio"].state_dict())
    settings = load_stage0_config(STAGE_0)["imagebind"]
    settings["audio"].update(steps=steps, **({"batch": batch} if batch else {}))
    data = WorldData(model.config, seed, progress)
    return pretrain_imagebind(model, data, settings, seed, progress, trunks=("audio",))["audio"]


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--seed", type=int, default=0, help="the world's seed: which combinations are held out")
    p.add_argument("--json", type=Path, help="write the table here")
    p.add_argument("--retrain-audio", type=int, metavar="STEPS", help="first retrain the audio trunk afresh for this many steps")
    p.add_argument("--batch", type=int, help="the retrained trunk's batch (default: stage_0.yaml's)")
    args = p.parse_args(argv)
    model = load_checkpoint(args.checkpoint)
    retrained = {}
    if args.retrain_audio:
        retrained = {"steps": args.retrain_audio, "batch": args.batch, "loss": retrain_audio_trunk(model, args.retrain_audio, args.batch, args.seed)}
        print(f"audio trunk retrained: {retrained}")
    result = measure(model, args.seed)
    print(f"{'link':10s} " + " ".join(f"{h:>9s}" for h in HEADS))
    for link, heads in result.items():
        print(f"{link:10s} " + " ".join(f"{heads[h]:9.0%}" for h in HEADS))
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "retrained_audio": retrained, "heldout_accuracy": result}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
