"""Judges: small classifiers, trained on the synthetic world's media, that say what a medium shows.

Evaluation asks them whether a generated picture shows the asked shape and colour, which way a
generated video moves, which sound a generated waveform is. Their verdicts count only when a judge
names the attributes of the world's held-out media (combinations never seen in training, written
to and read back from their real file formats) at least `TRUST` of the time.

    python train/judges.py --out train/checkpoints/judges [--seed 0] [--steps 1500] [--modalities audio]

trains one judge per modality on the train split's combinations, reports each head's held-out
accuracy, and saves `{image,video,audio}.safetensors` plus `judges.json` (the label vocabularies).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

if __package__ in (None, ""):  # run as a script: the repository root first, not train/ (its train.py shadows the package)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from runtime import media
from train import synthetic
from train.presets import WORLD

# one head per attribute a caption states, so that a text→X answer is judged on all of them
HEADS = {
    "image": ("shape", "colour", "position", "background"),
    "video": ("shape", "colour", "motion", "background"),
    "audio": ("sound", "pitch", "register"),
}
TRUST = 0.95


def rms_below_a_world_sound(db: float) -> float:
    """The RMS `db` decibels below a world sound (a sine at its peak, RMS 0.35)."""
    return synthetic.AMPLITUDE / np.sqrt(2) * 10 ** (-db / 20)


AUDIO_FFT = 4096  # 3.9 Hz bins at 16 kHz: neighbouring semitones of the low register are 2 bins apart
AUDIO_HOP = 512
# An answer 40 dB below a world sound (a sine at its peak) is silence to a listener who hears the
# world's sounds at ease, so the judge hears nothing in it. Without this, silence and faint noise got
# labels (all-zero features read "tone"). The judge trained on clean renders read the world's
# held-out sounds right 100% at -31 dB, 83% at -41 dB and 76% at -51 dB; the one trained in noise
# (HISS_RMS) reads 100% at all three.
SILENT_RMS = rms_below_a_world_sound(40)
# A generated sound comes with a noise floor. Trained on clean renders only, the judge heard every
# chirp and half the tones of the held-out sounds as rhythms in white noise at -20 dB (45% right):
# it trains on them in noise down to -10 dB.
HISS_RMS = rms_below_a_world_sound(10)
HISS_CLIPS = 64
PIXELS = 32  # the judges look at 32×32: enough to tell a dot from a ring, and cheap to train
LOWEST_HZ = 110.0  # A2, three semitones below the world's lowest pitch (C3)
SEMITONES = 54  # A2 to D7: above the highest chirp's end (an octave over B5)
CONFIG_FILE = "judges.json"
DEFAULT_JUDGES = Path(__file__).resolve().parent / "checkpoints" / "judges"
BATCH = 64


def labels(modality: str) -> dict[str, list[str]]:
    """Every value each head can name, in the world's fixed order."""
    combos = synthetic.combinations(modality)
    return {head: sorted({c[head] for c in combos}) for head in HEADS[modality]}


def features(modality: str, medium: np.ndarray, rate: float | None = None, world: dict[str, Any] = WORLD) -> np.ndarray:
    """A medium as the judge reads it: pixels in [0, 1] at PIXELS² (a video's `video_frames` frames stacked
    on the channel axis), or a waveform's log-magnitude spectrogram below AUDIO_MAX_HZ (bins × frames)."""
    if modality == "image":
        return _pixels(medium)
    if modality == "video":
        picks = np.linspace(0, len(medium) - 1, world["video_frames"]).round().astype(int)
        return np.concatenate([_pixels(medium[i]) for i in picks])
    return _spectrogram(medium, int(rate or world["sample_rate"]), world)


def _pixels(image: np.ndarray) -> np.ndarray:
    if image.shape[:2] != (PIXELS, PIXELS):
        image = np.asarray(Image.fromarray(image).resize((PIXELS, PIXELS), Image.BOX))
    return (image.astype(np.float32) / 255.0).transpose(2, 0, 1)


def _spectrogram(wave: np.ndarray, rate: int, world: dict[str, Any]) -> np.ndarray:
    """Semitone magnitudes, log-compressed: (SEMITONES, frames)."""
    return np.log1p(_semitone_magnitudes(wave, rate, world))


def _semitone_magnitudes(wave: np.ndarray, rate: int, world: dict[str, Any]) -> np.ndarray:
    """Magnitudes summed into one row per semitone (so a pitch is one row whatever its octave's bin
    width): (SEMITONES, frames)."""
    wave = media.resample(np.asarray(wave, np.float32), rate, world["sample_rate"])
    n = int(world["audio_seconds"] * world["sample_rate"])
    wave = np.pad(wave[:n], (0, max(0, n - wave.size)))
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(wave, AUDIO_FFT // 2), AUDIO_FFT)[::AUDIO_HOP]
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(AUDIO_FFT), axis=-1))
    return (spectrum @ _semitone_bands(world["sample_rate"]).T).T.astype(np.float32)


def _semitone_bands(rate: int) -> np.ndarray:
    """(SEMITONES, FFT bins) 0/1: the FFT bins within half a semitone of each semitone from LOWEST_HZ."""
    freqs = np.fft.rfftfreq(AUDIO_FFT, 1 / rate)
    semis = 12 * np.log2(np.maximum(freqs, 1e-6) / LOWEST_HZ)
    return (np.abs(semis[None, :] - np.arange(SEMITONES)[:, None]) < 0.5).astype(np.float32)


class JudgeNet(nn.Module):
    """Convolutions, then one linear head per attribute over the flattened map (flattened, not
    pooled: which way a shape moves is where its frames differ)."""

    def __init__(self, modality: str, in_shape: tuple[int, ...], heads: dict[str, int]) -> None:
        super().__init__()
        if modality == "audio":  # frequency bins as channels: the pitch is which channel lights up
            bins, _ = in_shape
            self.trunk = nn.Sequential(
                nn.Conv1d(bins, 96, 5, padding=2), nn.BatchNorm1d(96), nn.ReLU(),
                nn.Conv1d(96, 64, 5, stride=2, padding=2), nn.BatchNorm1d(64), nn.ReLU(),
                nn.AdaptiveMaxPool1d(4), nn.Flatten(),
            )
        else:
            channels = in_shape[0]
            self.trunk = nn.Sequential(
                nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Flatten(),
            )
        width = self.trunk(torch.zeros(1, *in_shape)).shape[1]
        self.heads = nn.ModuleDict({h: nn.Linear(width, n) for h, n in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.trunk(x)
        return {h: head(z) for h, head in self.heads.items()}


@dataclass
class Judge:
    modality: str
    net: JudgeNet
    vocab: dict[str, list[str]]
    in_shape: tuple[int, ...]
    heldout_accuracy: dict[str, float] = field(default_factory=dict)  # per head, set once measured

    @property
    def trusted(self) -> bool:
        return bool(self.heldout_accuracy) and min(self.heldout_accuracy.values()) >= TRUST

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> list[dict[str, str]]:
        """Features (N, ...) → the attributes each medium shows."""
        self.net.eval()
        logits = self.net(torch.from_numpy(np.ascontiguousarray(batch)))
        picks = {h: logits[h].argmax(-1).tolist() for h in self.vocab}
        return [{h: self.vocab[h][picks[h][i]] for h in self.vocab} for i in range(len(batch))]

    def judge(self, medium: np.ndarray, rate: float | None = None) -> dict[str, str]:
        """The attributes one medium shows; none for a silent sound (below SILENT_RMS)."""
        if self.modality == "audio" and np.sqrt(np.mean(np.square(medium, dtype=np.float64))) < SILENT_RMS:
            return {}
        return self([features(self.modality, medium, rate)])[0]


def _augment(modality: str, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Noise, contrast and brightness (loudness, for audio) drawn per sample, so that imperfect
    generated media are read like clean ones."""
    n = (x.shape[0],) + (1,) * (x.dim() - 1)
    gain = torch.empty(n).uniform_(*((0.3, 1.5) if modality == "audio" else (0.8, 1.2)), generator=gen)
    noise = torch.randn(x.shape, generator=gen) * torch.rand(n, generator=gen) * (0.3 if modality == "audio" else 0.08)
    if modality == "audio":
        return x * gain + noise
    shift = torch.empty(n).uniform_(-0.1, 0.1, generator=gen)
    return (x * gain + shift + noise).clamp(0, 1)


def _targets(modality: str, combos: list[dict[str, str]], vocab: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    return {h: torch.tensor([vocab[h].index(c[h]) for c in combos]) for h in HEADS[modality]}


def _semitone(c: dict[str, str]) -> int:
    """The row of a sound's pitch in the spectrogram."""
    return round(12 * np.log2(synthetic.pitch_hz(c["pitch"], c["register"]) / LOWEST_HZ))


def _pitch_shift(x: torch.Tensor, combos: list[dict[str, str]], vocab: dict[str, list[str]], gen: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Move each spectrogram up or down by whole semitones, within the world's pitch range, and
    relabel it: one sound teaches every pitch and register, so held-out combinations are not new."""
    order = [(r, p) for r in synthetic.REGISTERS for p in synthetic.PITCHES]  # by rising pitch
    rows = torch.tensor([_semitone(c) for c in combos])
    lowest = _semitone({"pitch": order[0][1], "register": order[0][0]})
    place = rows - lowest
    shift = (torch.rand(len(combos), generator=gen) * len(order)).long() - place
    index = torch.arange(x.shape[1])[None, :] - shift[:, None]
    valid = (index >= 0) & (index < x.shape[1])
    moved = x.gather(1, index.clamp(0, x.shape[1] - 1)[..., None].expand(-1, -1, x.shape[2])) * valid[..., None]
    new = [order[int(i)] for i in place + shift]
    labels = {"register": [r for r, _ in new], "pitch": [p for _, p in new], "sound": [c["sound"] for c in combos]}
    return moved, {h: torch.tensor([vocab[h].index(v) for v in labels[h]]) for h in vocab}


def _hiss(count: int, seed: int) -> torch.Tensor:
    """Semitone magnitudes of `count` white-noise clips at unit RMS, (count, SEMITONES, frames)."""
    rng = np.random.default_rng(seed)
    n, rate = int(WORLD["audio_seconds"] * WORLD["sample_rate"]), WORLD["sample_rate"]
    return torch.from_numpy(np.stack([_semitone_magnitudes(rng.standard_normal(n), rate, WORLD) for _ in range(count)]))


def _in_hiss(x: torch.Tensor, hiss: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Semitone magnitudes of sounds → log features of the same sounds in white noise of RMS drawn
    from 0 to HISS_RMS. The magnitudes of a sine and of broadband noise nearly add band by band (they
    share few FFT bins): at -20 dB the sum is 0.03 from the log features of the noisy tone or chirp,
    which the noise moves by 2; a rhythm's gating spreads it over more bins, 0.2 against 0.5."""
    pick = torch.randint(len(hiss), (x.shape[0],), generator=gen)
    level = torch.rand(x.shape[0], 1, 1, generator=gen) * HISS_RMS
    return torch.log1p(x + level * hiss[pick])


def train_judge(modality: str, combos: list[dict[str, str]], seed: int, steps: int, progress: bool = True) -> Judge:
    """Fit on the world's rendering of `combos`, each batch augmented anew."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vocab = labels(modality)
    renders = [synthetic.render(modality, c) for c in combos]
    if modality == "audio":  # magnitudes before the log, so that noise can be added (_in_hiss)
        clean = torch.from_numpy(np.stack([_semitone_magnitudes(r, WORLD["sample_rate"], WORLD) for r in renders]))
    else:
        clean = torch.from_numpy(np.stack([features(modality, r) for r in renders]))
    hiss = _hiss(HISS_CLIPS, seed) if modality == "audio" else None
    targets = _targets(modality, combos, vocab)
    net = JudgeNet(modality, tuple(clean.shape[1:]), {h: len(v) for h, v in vocab.items()})
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for _ in tqdm(range(steps), desc=f"judge {modality}", disable=not progress):
        idx = torch.randint(len(combos), (BATCH,), generator=gen)
        x, y = clean[idx], {h: t[idx] for h, t in targets.items()}
        if modality == "audio":
            x, y = _pitch_shift(x, [combos[i] for i in idx.tolist()], vocab, gen)
            x = _in_hiss(x, hiss, gen)
        logits = net(_augment(modality, x, gen))
        loss = sum(loss_fn(logits[h], y[h]) for h in vocab)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return Judge(modality, net.eval(), vocab, tuple(clean.shape[1:]))


def heldout_media(modality: str, combos: list[dict[str, str]]) -> list[tuple[np.ndarray, float | None]]:
    """Each combination rendered, written in the world's real file format and read back (an MP4's
    compression and a WAV's 16-bit samples included)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, c in enumerate(combos):
            path = Path(tmp) / f"{i}{synthetic.EXT[modality]}"
            synthetic.write_medium(path, modality, c)
            if modality == "image":
                out.append((media.read_image(path), None))
            elif modality == "video":
                out.append((media.read_video(path)[0], None))
            else:
                out.append(media.read_audio(path))
    return out


def accuracy(judge: Judge, combos: list[dict[str, str]]) -> dict[str, float]:
    """Per head, the share of held-out media whose attribute the judge names."""
    batch = np.stack([features(judge.modality, m, rate) for m, rate in heldout_media(judge.modality, combos)])
    seen = judge(batch)
    return {h: float(np.mean([s[h] == c[h] for s, c in zip(seen, combos)])) for h in judge.vocab}


def save_judges(folder: Path, judges: dict[str, Judge]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {}
    for modality, judge in judges.items():
        save_file({k: v.contiguous() for k, v in judge.net.state_dict().items()}, str(folder / f"{modality}.safetensors"))
        config[modality] = {"vocab": judge.vocab, "in_shape": list(judge.in_shape), "heldout_accuracy": judge.heldout_accuracy}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def load_judges(folder: Path) -> dict[str, Judge]:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no judges ({CONFIG_FILE} is missing); train them with train/judges.py")
    judges = {}
    for modality, entry in json.loads(path.read_text()).items():
        in_shape = tuple(entry["in_shape"])
        net = JudgeNet(modality, in_shape, {h: len(v) for h, v in entry["vocab"].items()})
        net.load_state_dict(load_file(str(Path(folder) / f"{modality}.safetensors")))
        judges[modality] = Judge(modality, net.eval(), entry["vocab"], in_shape, entry["heldout_accuracy"])
    return judges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_JUDGES)
    parser.add_argument("--seed", type=int, default=0, help="the world's seed: which combinations are held out")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per judge")
    parser.add_argument(
        "--modalities", nargs="+", choices=list(HEADS), default=list(HEADS),
        help="train only these; the others are kept from --out",
    )
    args = parser.parse_args()
    splits = synthetic.combination_splits(args.seed)
    kept = set(HEADS) - set(args.modalities)
    judges = {m: j for m, j in load_judges(args.out).items() if m in kept} if kept else {}
    for modality in args.modalities:
        judge = train_judge(modality, splits[modality]["train"], args.seed, args.steps)
        judge.heldout_accuracy = accuracy(judge, splits[modality]["heldout"])
        judges[modality] = judge
    save_judges(args.out, {m: judges[m] for m in HEADS})
    for modality, judge in judges.items():
        heads = "  ".join(f"{h} {a:.1%}" for h, a in judge.heldout_accuracy.items())
        print(f"{modality:6s} {heads}  → {'trusted' if judge.trusted else 'NOT trusted'}")


if __name__ == "__main__":
    main()
