"""What a stage trains, and the losses of one batch.

Trainable groups (a stage config's `train:` list) and the checkpoint parts each one rewrites:

| group | modules | checkpoint parts |
|---|---|---|
| `input_projection` | the `llama_proj` Linear | `input_projection` |
| `projectors` | the three output projectors | `projector_{image,video,audio}` |
| `signal_rows` | the 36 signal-token rows of the embedding and of `lm_head` | `llm` |
| `lora` | the peft adapter (q, k, v, o) | `lora` |

Everything else is frozen (`requires_grad=False`) and kept in eval mode.

Signal-token rows train as a separate delta (`SignalRows`): the embedding's and lm_head's weights stay
frozen, and a (36, H) parameter is added at the signal ids. A gradient-mask hook on the full matrices
was the other way; it was not chosen because AdamW's decoupled weight decay moves every row of a
parameter whatever its gradient (the frozen rows would drift), and because Adam's state would cover
the whole 32k×4096 matrices at full size where 36 rows are trained. The delta is merged into the rows
before the checkpoint is written, so the format does not change.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import Tensor, nn

from train.batches import IGNORE
from train.decoders import takes_class_labels
from train.diffusion_loss import noise_prediction_error, vae_latents
from train.model import NextGPT

PARTS = {
    "input_projection": ["input_projection"],
    "projectors": ["projector_image", "projector_video", "projector_audio"],
    "signal_rows": ["llm"],
    "lora": ["lora"],
}


class SignalEmbedding(nn.Module):
    """A frozen embedding plus a trainable delta on the rows of `ids`."""

    def __init__(self, base: nn.Embedding, ids: list[int]) -> None:
        super().__init__()
        self.base = base
        slot = torch.full((base.num_embeddings,), -1, dtype=torch.long)
        slot[ids] = torch.arange(len(ids))
        self.register_buffer("slot", slot, persistent=False)
        self.register_buffer("ids", torch.tensor(ids), persistent=False)
        self.delta = nn.Parameter(torch.zeros(len(ids), base.embedding_dim, dtype=base.weight.dtype))

    def forward(self, input_ids: Tensor) -> Tensor:
        slot = self.slot[input_ids]
        delta = self.delta[slot.clamp(min=0)] * (slot >= 0).unsqueeze(-1).to(self.delta.dtype)
        return self.base(input_ids) + delta


class SignalHead(nn.Module):
    """A frozen lm_head plus a trainable delta on the logits rows of `ids`."""

    def __init__(self, base: nn.Linear, ids: list[int]) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("ids", torch.tensor(ids), persistent=False)
        self.delta = nn.Parameter(torch.zeros(len(ids), base.in_features, dtype=base.weight.dtype))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.base(hidden).index_add(-1, self.ids, hidden @ self.delta.T)


def signal_ids(config: dict[str, Any]) -> list[int]:
    return [i for ids in config["tokens"]["signal_ids"].values() for i in ids]


def install_signal_rows(model: NextGPT) -> None:
    llm = model.llm.get_base_model()
    ids = signal_ids(model.config)
    llm.set_input_embeddings(SignalEmbedding(llm.get_input_embeddings(), ids))
    llm.set_output_embeddings(SignalHead(llm.get_output_embeddings(), ids))


@torch.no_grad()
def merge_signal_rows(model: NextGPT) -> None:
    """Fold the deltas into the rows and put the plain modules back (a no-op when none are installed)."""
    llm = model.llm.get_base_model()
    embedding, head = llm.get_input_embeddings(), llm.get_output_embeddings()
    if not isinstance(embedding, SignalEmbedding):
        return
    embedding.base.weight[embedding.ids] += embedding.delta.to(embedding.base.weight.dtype)
    head.base.weight[head.ids] += head.delta.to(head.base.weight.dtype)
    llm.set_input_embeddings(embedding.base)
    llm.set_output_embeddings(head.base)


def set_trainable(model: NextGPT, groups: list[str]) -> list[str]:
    """Freeze all, then unfreeze `groups`; returns the checkpoint parts they rewrite."""
    model.requires_grad_(False)
    model.eval()
    if "input_projection" in groups:
        model.input_projection.requires_grad_(True).train()
    if "projectors" in groups:
        model.projectors.requires_grad_(True).train()
    if "lora" in groups:
        for name, param in model.llm.named_parameters():
            param.requires_grad_("lora_" in name)
        model.llm.train()  # the adapter's dropout; LLaMA's own attention dropout is 0
    if "signal_rows" in groups:
        install_signal_rows(model)  # after the loop above: the deltas are new and trainable
    return [part for group in groups for part in PARTS[group]]


def per_sample_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """(B,) mean next-token cross-entropy of each sample over its labelled positions."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    counted = (labels != IGNORE).sum(1).clamp(min=1)
    return loss.sum(1) / counted


class StageModel(nn.Module):
    """The model plus the stage's loss: every term is a per-sample mean averaged over the batch, so a
    batch split over processes and averaged by DDP gives the same gradient as the whole batch."""

    def __init__(self, model: NextGPT, train_config: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        loss = train_config["loss"]
        self.cap_scale = loss["cap_scale"]
        self.cap_modalities = [] if train_config["task"] == "caption" else list(model.config["decoders"])
        self.gen_modalities = list(loss["gen_modalities"]) if loss["gen_loss"] else []
        self.snr_gamma = loss["snr_gamma"]
        # registered as modules so that device placement moves them; frozen, so DDP ignores them
        self.unets = nn.ModuleDict({m: model.decoders[m]["unet"] for m in self.gen_modalities})
        self.vaes = nn.ModuleDict({m: model.decoders[m]["vae"] for m in self.gen_modalities})
        self.noise = {m: DDPMScheduler.from_config(model.decoders[m]["scheduler"].config) for m in self.gen_modalities}
        self.class_labels = {m: takes_class_labels(model.config["decoders"][m]) for m in self.gen_modalities}

    def media_tokens(self, modality: str, clips: Tensor) -> Tensor:
        """(N, H): N inputs' ImageBind embeddings (frozen) through the input projection."""
        encoder = self.model.encoder
        with torch.no_grad():
            pooled = encoder.encode_audio(clips) if modality == "audio" else encoder.encode_vision(clips)
        return self.model.input_projection(pooled)

    def embed(self, batch: dict[str, Any]) -> Tensor:
        """The token embeddings with every input medium's token at its own position; the media of
        one modality are encoded together."""
        embeds = self.model.embed_tokens(batch["ids"])
        placed = [(row, pos, modality, clips) for row, media in enumerate(batch["media"]) for pos, modality, clips in media]
        if not placed:
            return embeds
        embeds = embeds.clone()
        for modality in sorted({p[2] for p in placed}):
            mine = [p for p in placed if p[2] == modality]
            tokens = self.media_tokens(modality, torch.cat([p[3] for p in mine])).to(embeds.dtype)
            rows = torch.tensor([p[0] for p in mine], device=embeds.device)
            positions = torch.tensor([p[1] for p in mine], device=embeds.device)
            embeds[rows, positions] = tokens
        return embeds

    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        out = self.model.llm(
            inputs_embeds=self.embed(batch), attention_mask=batch["attention_mask"], output_hidden_states=True
        )
        batch_size = batch["ids"].shape[0]
        losses = {"lm": per_sample_ce(out.logits, batch["labels"]).mean()}
        total = losses["lm"]
        hidden = out.hidden_states[-1]  # last layer after the final norm, as the pipelines read it
        # every process reports the same terms (zero where its share of the batch has no such target),
        # so that the loss reductions across processes line up
        for modality in self.cap_modalities:
            cap = gen = hidden.new_zeros(())
            if modality in batch["targets"]:
                target = batch["targets"][modality]
                conditions = self.project(modality, hidden, target)
                cap = (conditions.float() - target["embeds"]).norm(dim=-1).mean(-1).sum() / batch_size
                have = [i for i, medium in enumerate(target["gen"]) if medium is not None]  # a target medium exists
                if modality in self.gen_modalities and have:
                    gen = self.gen_loss(modality, conditions[have], [target["gen"][i] for i in have]) / batch_size
            losses[f"cap_{modality}"] = cap
            total = total + self.cap_scale[modality] * cap
            if modality in self.gen_modalities:
                losses[f"gen_{modality}"] = gen
                total = total + gen
        losses["loss"] = total
        return losses

    def project(self, modality: str, hidden: Tensor, target: dict[str, Any]) -> Tensor:
        run = torch.tensor(self.model.config["tokens"]["signal_ids"][modality], device=hidden.device)
        positions = target["starts"][:, None] + torch.arange(len(run), device=hidden.device)
        states = hidden[target["rows"][:, None], positions]
        signal = self.model.embed_tokens(run)[None].expand(len(positions), -1, -1)
        return self.model.projectors[modality](states, signal)

    def gen_loss(self, modality: str, conditions: Tensor, media: list[Tensor]) -> Tensor:
        """Σ over samples of the frozen UNet's prediction MSE (ε or v, as its scheduler says),
        conditioned on the projector output.
        `media` are what the VAE encodes: images, video frames or log-mel spectrograms (1, frames, mels)."""
        latents = vae_latents(self.vaes[modality], torch.stack(media).to(conditions.dtype))
        # the newer reference weights only the image loss by Min-SNR
        gamma = self.snr_gamma if modality == "image" else None
        unet, scheduler = self.unets[modality], self.noise[modality]
        return noise_prediction_error(unet, scheduler, latents, conditions, self.class_labels[modality], gamma).sum()
