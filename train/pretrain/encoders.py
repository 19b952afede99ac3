"""Stage 0, encoders: ImageBind's trunks and each decoder's text encoder, trained contrastively.

ImageBind binds every modality to text with InfoNCE; here the vision trunk (images and videos) and
the audio trunk learn against a small caption transformer that exists only for this and is
discarded, as ImageBind's own text trunk is not part of NExT-GPT (its caption embeddings are kept on
the WorldData for the language part: `WorldData.meanings`). Each decoder's text encoder (the
CLIP or CLAP that SD, ZeroScope and AudioLDM condition on) then learns to meet the frozen ImageBind
embedding of the medium its caption describes, through a linear head that is discarded too.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train.decoders import refresh_unconditional
from train.model import NextGPT
from train.pretrain.diffusion import init_from_image_part
from train.pretrain.loop import fit
from train.pretrain.world_data import AUDIO_VARIANTS, IMAGE_VARIANTS, WorldData

WORDS = 24  # the longest world caption has 14 words


class CaptionTower(nn.Module):
    """Words (with their positions: "a red circle on a blue background" is not "a blue circle on a red
    background") through one transformer layer, mean-pooled, projected to ImageBind's width."""

    def __init__(self, captions: list[str], width: int, out_dim: int) -> None:
        super().__init__()
        words = sorted({w for c in captions for w in c.split()})
        self.index = {w: i + 1 for i, w in enumerate(words)}  # 0 pads
        self.embed = nn.Embedding(len(words) + 1, width, padding_idx=0)
        self.position = nn.Parameter(torch.randn(WORDS, width) * width**-0.5)
        self.layer = nn.TransformerEncoderLayer(width, nhead=max(1, width // 32), dim_feedforward=2 * width, dropout=0.0, batch_first=True)
        self.out = nn.Linear(width, out_dim)

    def forward(self, captions: list[str]) -> Tensor:
        ids = torch.zeros(len(captions), WORDS, dtype=torch.long)
        for r, caption in enumerate(captions):
            words = [self.index[w] for w in caption.split()][:WORDS]
            ids[r, : len(words)] = torch.tensor(words)
        pad = ids == 0
        x = self.layer(self.embed(ids) + self.position, src_key_padding_mask=pad)
        x = (x * ~pad[..., None]).sum(1) / (~pad).sum(1, keepdim=True)
        return F.normalize(self.out(x), dim=-1)


class AttributeHeads(nn.Module):
    """A linear classifier per attribute of a modality's media (the world's ground truth), read from the
    trunk's embedding and discarded after stage 0. InfoNCE against whole captions lets the trunk
    memorise each train sound as a whole: the held-out pitch probe stayed at chance with varied
    renders and pitch-group batches (docs/evaluation.md). A target of its own per attribute makes
    the trunk keep pitch as a feature shared across kinds and registers."""

    def __init__(self, combos: list[dict[str, str]], width: int) -> None:
        super().__init__()
        self.values = {k: sorted({a[k] for a in combos}) for k in combos[0]}
        self.labels = {k: torch.tensor([v.index(a[k]) for a in combos]) for k, v in self.values.items()}
        self.heads = nn.ModuleDict({k: nn.Linear(width, len(v)) for k, v in self.values.items()})

    def forward(self, embeds: Tensor, index: Tensor) -> Tensor:
        return sum(F.cross_entropy(head(embeds), self.labels[k][index]) for k, head in self.heads.items()) / len(self.heads)


class Temperature(nn.Module):
    """CLIP's learnable logit scale, from 1/0.07, capped at 100."""

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Symmetric InfoNCE of matching rows of two L2-normalised batches."""
        logits = self.log_scale.exp().clamp(max=100.0) * a @ b.T
        target = torch.arange(len(a))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


TRUNKS = {"vision": ("image", "video", "video"), "audio": ("audio",)}  # videos twice as often as images: a
# video's motion is a smaller part of what its caption says


def pretrain_imagebind(
    model: NextGPT, data: WorldData, settings: dict[str, Any], seed: int, progress: bool = True, trunks: tuple[str, ...] = tuple(TRUNKS)
) -> dict[str, float]:
    """The vision trunk on images and videos in turn, then the audio trunk, each against captions;
    `settings` per trunk; `trunks` picks which are trained (benchmarks/trunk_probe.py --retrain)."""
    encoder = model.encoder
    out_dim = model.config["imagebind"]["out_embed_dim"]
    gen = torch.Generator().manual_seed(seed)
    siblings = {m: sibling_lists(data, m) for m in SIBLINGS}
    results = {}
    for trunk in trunks:
        modalities = TRUNKS[trunk]
        captions = [c for m in modalities for c in data.captions[m]]
        tower, temperature = CaptionTower(captions, 64, out_dim), Temperature()
        weight = settings[trunk].get("attribute_weight", 0.0)
        # dict.fromkeys, not set: a set of strings iterates in an order PYTHONHASHSEED draws anew in every
        # process, and the heads are built (drawing their weights) in that order
        heads = nn.ModuleDict({m: AttributeHeads(data.combos[m], out_dim) for m in dict.fromkeys(modalities)}) if weight else None
        parts = [encoder.modality_preprocessors[trunk], encoder.modality_trunks[trunk], encoder.modality_heads[trunk]]

        def loss(step: int, trunk: str = trunk, modalities: tuple[str, ...] = modalities, tower: CaptionTower = tower, temperature: Temperature = temperature, heads: nn.ModuleDict | None = heads, weight: float = weight) -> dict[str, Tensor]:
            modality = modalities[step % len(modalities)]
            index = _batch(data, modality, settings[trunk]["batch"], gen, siblings)
            embeds = F.normalize(_embed(encoder, data, modality, index, gen), dim=-1)
            terms = {"nce": temperature(embeds, tower([data.captions[modality][i] for i in index]))}
            if heads is not None:
                terms["attributes"] = heads[modality](embeds, index)
            return {"loss": terms["nce"] + weight * terms.get("attributes", 0.0), **terms}

        extra = [] if heads is None else [heads]
        params = [p for part in (*parts, tower, temperature, *extra) for p in part.parameters()]
        for part in parts:
            part.requires_grad_(True).train()
        results[trunk] = fit(params, loss, settings[trunk], f"stage 0: imagebind {trunk}", progress)["loss"]
        for part in parts:
            part.requires_grad_(False).eval()
        with torch.no_grad():
            data.meanings.update({m: tower(data.captions[m]) for m in dict.fromkeys(modalities)})
    return results


SCENE = ("shape", "colour", "background")  # what two pictures or videos of a hard pair share
# per modality, what the media of a hard batch share: pictures differ only in position, videos only in
# motion, sounds only in pitch
SIBLINGS = {"image": SCENE, "video": SCENE, "audio": ("sound", "register")}


def sibling_lists(data: WorldData, modality: str) -> list[list[int]]:
    """Per train medium, the other train media that share its SIBLINGS attributes (they differ only in
    the one attribute left: a picture's position, a video's motion, a sound's pitch)."""
    groups: dict[tuple[str, ...], list[int]] = {}
    keys = [tuple(a[k] for k in SIBLINGS[modality]) for a in data.combos[modality]]
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return [[j for j in groups[key] if j != i] for i, key in enumerate(keys)]


def _batch(data: WorldData, modality: str, size: int, gen: torch.Generator, siblings: dict[str, list[list[int]]]) -> Tensor:
    """Distinct media of one modality. Pictures and videos come in pairs that differ only in their
    position or motion where the split has both: a random batch of 128 rarely holds two such media, so
    InfoNCE would barely need the position or motion (a linear probe read the motion from 70% of
    held-out videos when batches were random, the position from 67% of held-out pictures). Sounds
    come in whole pitch groups (`_sibling_groups`)."""
    index = torch.randperm(data.count(modality), generator=gen)
    if modality == "audio":
        return _sibling_groups(index, siblings["audio"], size)
    siblings = siblings[modality]
    picked: list[int] = []
    seen: set[int] = set()
    for i in index.tolist():
        if len(picked) >= size:
            break
        if i in seen:
            continue
        others = [j for j in siblings[i] if j not in seen]
        pair = [i, others[int(torch.randint(len(others), (), generator=gen))]] if others else [i]
        picked += pair
        seen.update(pair)
    return torch.tensor(picked[:size])


def _sibling_groups(index: Tensor, siblings: list[list[int]], size: int) -> Tensor:
    """Whole groups of siblings (a kind and register at every pitch the split has), in the order of
    their first member in `index`, up to `size` media: the batch's negatives are then mostly the same
    sound at another pitch, which the caption must be told apart by."""
    picked: list[int] = []
    seen: set[int] = set()
    for i in index.tolist():
        if i in seen:
            continue
        group = [i, *siblings[i]]
        picked += group
        seen.update(group)
        if len(picked) >= size:
            break
    return torch.tensor(picked[:size])


def _embed(encoder: nn.Module, data: WorldData, modality: str, index: Tensor, gen: torch.Generator) -> Tensor:
    if modality == "audio":
        variant = torch.randint(AUDIO_VARIANTS, (len(index),), generator=gen)
        return encoder.encode_audio(data.audio_fbank[index, variant])
    if modality == "image":
        return encoder.encode_vision(data.vision_clips("image", index, torch.randint(IMAGE_VARIANTS, (len(index),), generator=gen)))
    return encoder.encode_vision(data.vision_clips(modality, index))


@torch.no_grad()
def medium_embeddings(model: NextGPT, data: WorldData, modality: str, chunk: int = 256) -> Tensor:
    """(N, out) frozen ImageBind embeddings of every train medium of a modality, normalised."""
    index = torch.arange(data.count(modality))
    gen = torch.Generator().manual_seed(0)
    return torch.cat([F.normalize(_embed(model.encoder, data, modality, i, gen), dim=-1) for i in index.split(chunk)])


def _text_features(encoder: nn.Module, tokens: dict[str, Tensor]) -> Tensor:
    out = encoder(**tokens)
    return out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output


def pretrain_text_encoders(model: NextGPT, data: WorldData, settings: dict[str, Any], seed: int, progress: bool = True) -> dict[str, float]:
    """Each decoder's text encoder against the ImageBind embeddings of its modality's media; then its
    unconditional embedding (the encoder on "") is computed again. ZeroScope's starts from SD's
    trained one, so that the SD UNet's cross-attention, which ZeroScope's UNet starts from, reads it
    from the first step: a video UNet started from SD behind a text encoder of its own spent its 800
    steps learning the captions (x0 error at t = 999 on training videos 0.69, against 0.20 from SD's
    encoder; the asked motion seen in 20% of 40 held-out captions, against 38%)."""
    gen = torch.Generator().manual_seed(seed)
    results = {}
    for modality, section in model.config["decoders"].items():
        components = model.decoders[modality]
        encoder, tokenizer = components["text_encoder"], components["tokenizer"]
        if modality == "video" and "image" in model.decoders:
            if tokenizer.get_vocab() != model.decoders["image"]["tokenizer"].get_vocab():
                raise ValueError("ZeroScope's text encoder starts from SD's: their caption tokenizers must be one")
            init_from_image_part(encoder, model.decoders["image"]["text_encoder"])
        targets = medium_embeddings(model, data, modality)
        tokens = tokenizer(data.captions[modality], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
        width = _text_features(encoder, {k: v[:1] for k, v in tokens.items()}).shape[-1]
        head, temperature = nn.Linear(width, targets.shape[1]), Temperature()

        def loss(step: int, encoder: nn.Module = encoder, head: nn.Linear = head, temperature: Temperature = temperature, targets: Tensor = targets, tokens: Any = tokens) -> dict[str, Tensor]:
            index = torch.randperm(len(targets), generator=gen)[: settings["batch"]]
            text = F.normalize(head(_text_features(encoder, {k: v[index] for k, v in tokens.items()})), dim=-1)
            return {"loss": temperature(text, targets[index])}

        encoder.requires_grad_(True).train()
        results[modality] = fit([*encoder.parameters(), *head.parameters(), *temperature.parameters()], loss, settings, f"stage 0: {section['name']} text encoder", progress)["loss"]
        encoder.requires_grad_(False).eval()
        refresh_unconditional(components, section)
    return results
