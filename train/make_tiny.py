"""Create a `tiny` checkpoint with random weights: every real architecture, one seed; where training starts.

    python train/make_tiny.py --out runs/tiny_init [--seed 0] [--preset tiny] [--force] \\
        [--output-projector transformer|linear|qformer]

The same seed gives the same files. `train/reproduce.py` trains the embedded checkpoint from it. Each
decoder keeps its random text encoder and gets a caption tokenizer trained on the synthetic world's
captions, for the caption embeddings of training. Another preset (`nextgpt-7b-shallow`) gives a
random checkpoint at its sizes, its tokenizer trained to the preset's vocabulary size.
`--output-projector` puts every output modality's projector in that mode (default: the preset's).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: the repository root first, not train/ (its train.py shadows the package)
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from runtime.cli import add_force, make_parser, refuse_non_empty
from train import synthetic
from train.checkpoint import make_config
from train.decoders import caption_tokenizer
from train.llm import add_nextgpt_tokens, train_tiny_tokenizer
from train.model import NextGPT, save_checkpoint
from train.presets import get_preset
from train.projectors import MODES
from train.pretrain.language import world_corpus

def randomise_lora(model: NextGPT, std: float) -> None:
    """peft starts lora_B at zero; a random checkpoint should exercise the adapter path too."""
    for name, p in model.llm.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=std)


def train_tokenizer(vocab_size: int) -> Any:
    """BPE on the synthetic world's text; for a vocabulary larger than it holds (a published size), on
    runs of numbers too, which give BPE enough distinct words to learn that many tokens."""
    tokenizer = train_tiny_tokenizer(world_corpus(), vocab_size)
    if len(tokenizer) < vocab_size:
        numbers = [" ".join(str(j) for j in range(i, i + 8)) for i in range(0, 12 * vocab_size, 8)]
        tokenizer = train_tiny_tokenizer(world_corpus() + numbers, vocab_size)
    return tokenizer


def make_tiny(out: Path, seed: int = 0, preset_name: str = "tiny", output_projector: str | None = None) -> NextGPT:
    preset = get_preset(preset_name)
    if output_projector is not None:
        preset["projector"]["modes"] = {m: output_projector for m in preset["projector"]["modes"]}
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
    parser = make_parser(__doc__)
    parser.add_argument("--out", type=Path, default=Path("train/checkpoints/tiny"))
    add_force(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--output-projector", choices=MODES, help="every output projector's mode (default: the preset's)")
    args = parser.parse_args()
    refuse_non_empty(args.out, args.force)
    make_tiny(args.out, args.seed, args.preset, args.output_projector)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"wrote {args.out} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
