"""Create the embedded `tiny` checkpoint: every real architecture, random weights, one seed.

    python train/make_tiny.py --out train/checkpoints/tiny [--seed 0] [--preset tiny]

The same seed gives the same files. A later training stage replaces the random weights. Each
decoder keeps its random text encoder and gets a caption tokenizer trained on the synthetic world's
captions, for the caption embeddings of training. Another preset (`nextgpt-7b-shallow`) gives a
random checkpoint at its sizes, its tokenizer trained to the preset's vocabulary size.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: the repository root first, not train/ (its train.py shadows the package)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from train import synthetic
from train.checkpoint import make_config
from train.decoders import caption_tokenizer
from train.llm import add_nextgpt_tokens, train_tiny_tokenizer
from train.model import NextGPT, save_checkpoint
from train.presets import PROMPT, get_preset

# The committed LLM tokenizer was trained on exactly these lines: change none of them. The colour and
# shape words are the world's own; the sounds and motions are older than the world's.
SOUNDS = ["a beep", "a low hum", "a chirp", "a drum", "a whistle", "noise", "a bell", "silence"]
MOTIONS = ["moving left", "moving right", "growing", "shrinking", "spinning", "still"]


def synthetic_corpus() -> list[str]:
    """Captions of the project's synthetic world, plus the prompt template's own strings."""
    colours, shapes = synthetic.COLOURS, synthetic.SHAPES
    lines = [f"a {c} {s} on a {b} background" for c, s, b in itertools.product(colours, shapes, colours)]
    lines += [f"a video of a {c} {s} {m}" for c, s, m in itertools.product(colours, shapes, MOTIONS)]
    lines += [f"the sound of {s}" for s in SOUNDS]
    lines += [PROMPT["human"] + "describe this" + PROMPT["assistant"] + " it is a picture"] * 10
    lines += ["show me an image", "make a sound", "generate a video", "what is in the picture?"] * 10
    return lines


def randomise_lora(model: NextGPT, std: float) -> None:
    """peft starts lora_B at zero; a random checkpoint should exercise the adapter path too."""
    for name, p in model.llm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=std)


def train_tokenizer(vocab_size: int) -> Any:
    """BPE on the synthetic captions; for a vocabulary larger than they hold (a published size), on
    runs of numbers too, which give BPE enough distinct words to learn that many tokens."""
    tokenizer = train_tiny_tokenizer(synthetic_corpus(), vocab_size)
    if len(tokenizer) < vocab_size:
        numbers = [" ".join(str(j) for j in range(i, i + 8)) for i in range(0, 12 * vocab_size, 8)]
        tokenizer = train_tiny_tokenizer(synthetic_corpus() + numbers, vocab_size)
    return tokenizer


def make_tiny(out: Path, seed: int = 0, preset_name: str = "tiny") -> NextGPT:
    preset = get_preset(preset_name)
    tokenizer = train_tokenizer(preset["llm"]["base_vocab_size"])
    token_ids = add_nextgpt_tokens(tokenizer)
    config = make_config(preset, token_ids, tokenizer.bos_token_id, len(tokenizer))
    torch.manual_seed(seed)
    model = NextGPT(config, tokenizer)
    randomise_lora(model, std=0.02)
    for modality, section in config["decoders"].items():
        model.decoders[modality]["tokenizer"] = caption_tokenizer(
            synthetic.caption_corpus(), section, synthetic.attribute_words()
        )
    save_checkpoint(model, out)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("train/checkpoints/tiny"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    make_tiny(args.out, args.seed, args.preset)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
