"""Where a medium's attributes are lost on the way into the LLM: a linear probe at each link.

    python benchmarks/trunk_probe.py --modality audio|image [--checkpoint train/checkpoints/tiny]
        [--foreign] [--json F] [--retrain STEPS [--batch N]]

Every combination of the world is rendered, written in its file format and read back the way a
user's file is (runtime/inputs.py). At each link of the path (for sounds ImageBind's log-mel input
averaged over time, and the pitch rows a preset may add, over their first 200 ms; ImageBind's
embedding; the projected LLM token) a linear classifier per
attribute (a sound's kind, pitch and register; a picture's shape, colour, position and background)
is fitted on the train split's combinations and scored on the held-out ones, and with `--foreign`
also on the foreign set's media of them (train/foreign.py: drawn by other tools). A link whose probe
fails has lost what the caption must say; the first such link is where to fix it.

`--retrain` first starts the checkpoint's trunk for the modality afresh and trains it by stage 0's
part for it alone (train/configs/stage_0.yaml's settings, STEPS steps; the vision trunk on images and
videos as stage 0 does): a short stage-0 run to compare stage-0 changes by (the projected link then
reads an input projection trained on the old trunk). With `--preset-trunk` the fresh trunk takes the
current preset's settings for it (train/presets.py), so a front-end change is measured before a retrain.
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
from train import foreign, synthetic
from train.data.records import read_records
from train.model import NextGPT, load_checkpoint
from train.presets import get_preset
from train.pretrain import load_stage0_config
from train.pretrain.encoders import pretrain_imagebind
from train.pretrain.world_data import WorldData

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "train" / "checkpoints" / "tiny"
TRUNK = {"audio": "audio", "image": "vision"}
PROBE_STEPS = 500
PITCH_FRAMES = 20  # the first 200 ms
STAGE_0 = Path(__file__).resolve().parents[1] / "train" / "configs" / "stage_0.yaml"
TRUNK_PARTS = ("modality_preprocessors", "modality_trunks", "modality_heads")


def heads(modality: str) -> tuple[str, ...]:
    """The attributes a caption of the modality states."""
    return tuple(synthetic.combinations(modality)[0])


@torch.no_grad()
def link_features(model: NextGPT, modality: str, paths: list[Path]) -> dict[str, np.ndarray]:
    """Per link, one feature row per file."""
    rows: dict[str, list[np.ndarray]] = {"log_mel": [], "pitch_rows": [], "imagebind": [], "projected": []}
    encode = model.encoder.encode_audio if modality == "audio" else model.encoder.encode_vision
    mel = model.config["imagebind"]["audio"]["num_mel_bins"]
    for path in paths:
        clips = torch.from_numpy(prepare_inputs(model.config["imagebind"], {modality: path})[modality])
        embedding = encode(clips)
        if modality == "audio":
            rows["log_mel"].append(clips[:, :, :, :mel].mean(dim=(1, 2, 4)).numpy()[0])
            if clips.shape[3] > mel:
                # the pitch rows as they start: a chirp's classes average out over its octave
                rows["pitch_rows"].append(clips[:, :, :, mel:, :PITCH_FRAMES].mean(dim=(1, 2, 4)).numpy()[0])
        rows["imagebind"].append(embedding.numpy()[0])
        rows["projected"].append(model.input_projection(embedding).reshape(-1).numpy())
    return {link: np.stack(r) for link, r in rows.items() if r}


def world_features(model: NextGPT, modality: str, combos: list[dict[str, str]]) -> dict[str, np.ndarray]:
    """`link_features` of each combination's plain world render."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"{i}{synthetic.EXT[modality]}" for i in range(len(combos))]
        for path, a in zip(paths, combos):
            synthetic.write_medium(path, modality, a)
        return link_features(model, modality, paths)


def foreign_set(modality: str, per_modality: int = foreign.PER_MODALITY) -> tuple[list[Path], list[dict[str, str]]]:
    """The foreign set's files of the modality and the combination each shows."""
    root = foreign.ensure_foreign(per_modality=per_modality, progress=False)
    records = [r for r in read_records(root / foreign.RECORDS_FILE) if modality in r.inputs]
    return [root / r.inputs[modality] for r in records], [r.attributes for r in records]


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


def measure(model: NextGPT, modality: str, seed: int = 0, with_foreign: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    """Probe accuracy per test set (held-out, and foreign when asked), link and attribute."""
    split = synthetic.combination_splits(seed)[modality]
    train = world_features(model, modality, split["train"])
    tests = {"heldout": (world_features(model, modality, split["heldout"]), split["heldout"])}
    if with_foreign:
        paths, combos = foreign_set(modality)
        tests["foreign"] = (link_features(model, modality, paths), combos)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, (features, combos) in tests.items():
        out[name] = {}
        for link in train:
            out[name][link] = {}
            for head in heads(modality):
                values = sorted({a[head] for a in synthetic.combinations(modality)})
                y = np.array([values.index(a[head]) for a in split["train"]])
                truth = np.array([values.index(a[head]) for a in combos])
                out[name][link][head] = float(np.mean(probe(train[link], y, features[link], len(values), seed) == truth))
    return out


def retrain_trunk(
    model: NextGPT, modality: str, steps: int, batch: int | None = None, seed: int = 0, progress: bool = True, preset: bool = False
) -> float:
    """The modality's trunk drawn afresh for `seed` (with the current preset's settings for it when
    `preset`, e.g. another front end), then trained by stage 0's part for it for `steps` steps (at
    `batch` when given); returns its final loss."""
    trunk = TRUNK[modality]
    if preset:
        model.config["imagebind"][trunk].update(get_preset(model.config["preset"])["imagebind"][trunk])
    torch.manual_seed(seed)
    fresh = NextGPT(model.config, model.tokenizer, decoders={})
    for part in TRUNK_PARTS:
        getattr(model.encoder, part)[trunk] = getattr(fresh.encoder, part)[trunk]
    settings = load_stage0_config(STAGE_0)["imagebind"]
    settings[trunk].update(steps=steps, **({"batch": batch} if batch else {}))
    data = WorldData(model.config, seed, progress)
    return pretrain_imagebind(model, data, settings, seed, progress, trunks=(trunk,))[trunk]


def table(result: dict[str, dict[str, dict[str, float]]], modality: str) -> str:
    lines = [f"{'set':8s} {'link':10s} " + " ".join(f"{h:>10s}" for h in heads(modality))]
    for name, links in result.items():
        for link, accuracy in links.items():
            lines.append(f"{name:8s} {link:10s} " + " ".join(f"{accuracy[h]:10.0%}" for h in heads(modality)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--modality", choices=tuple(TRUNK), required=True)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--seed", type=int, default=0, help="the world's seed: which combinations are held out")
    p.add_argument("--foreign", action="store_true", help="also score the foreign set's media")
    p.add_argument("--json", type=Path, help="write the table here")
    p.add_argument("--retrain", type=int, metavar="STEPS", help="first retrain the modality's trunk afresh for this many steps")
    p.add_argument("--batch", type=int, help="the retrained trunk's batch (default: stage_0.yaml's)")
    p.add_argument("--preset-trunk", action="store_true", help="the retrained trunk takes the current preset's settings, not the checkpoint's")
    args = p.parse_args(argv)
    model = load_checkpoint(args.checkpoint)
    retrained = {}
    if args.retrain:
        loss = retrain_trunk(model, args.modality, args.retrain, args.batch, args.seed, preset=args.preset_trunk)
        retrained = {"steps": args.retrain, "batch": args.batch, "loss": loss, "preset_trunk": args.preset_trunk}
        print(f"{TRUNK[args.modality]} trunk retrained: {retrained}")
    result = measure(model, args.modality, args.seed, args.foreign)
    print(table(result, args.modality))
    if args.json:
        out = {"checkpoint": str(args.checkpoint), "modality": args.modality, "retrained": retrained, "accuracy": result}
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
