"""Component specs: every exportable unit declared once.

A spec names its IO tensors, their dtypes and symbolic axes, the (min, opt, max) range of every
dynamic axis derived from the checkpoint config, the checkpoint parts it is built from, and how
to make its PyTorch module. Export, the manifest, Triton configs and the benchmarks all read these
declarations; nothing else spells an IO name or a profile.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.preprocess import audio_rows
from train.mel import frame_count
from train.presets import SIGNAL_TOKEN_COUNTS

Dim = int | str  # a fixed size or the name of a dynamic axis
Ranges = dict[str, tuple[int, int, int]]  # dynamic axis -> (min, opt, max)
PROFILE_POINTS = ("min", "opt", "max")
SINGLE_PROFILE = "all"  # the name of the one optimisation profile of a component that declares none
MAX_BATCH = 4  # requests served together; classifier-free guidance doubles it for the UNets
TYPICAL_PROMPT = 32  # tokens: the template around one sentence is 15 to 20 on the tiny tokenizer


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # a numpy dtype name
    shape: tuple[Dim, ...]

    def resolve(self, dims: dict[str, int]) -> tuple[int, ...]:
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    parts: tuple[str, ...]  # checkpoint parts (files or folders) the weights come from
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dims: Ranges  # every dynamic axis's whole range: what any call may take
    int_ranges: dict[str, tuple[int, int]] | None = None  # sample range per integer input
    # output -> the input it becomes on the next call (the LLM's cache): a TensorRT engine keeps it on the device
    state: dict[str, str] | None = None
    # a dynamic axis that is the sum of others (the LLM's present = past + seq), capped by its own range
    sums: dict[str, tuple[str, ...]] | None = None
    # every call of a request has the same shapes (a denoising step, a VAE decode): TensorRT replays a CUDA graph
    static_shapes: bool = False
    # TensorRT optimisation profiles by name, in build order, each overriding some of `dims`' ranges,
    # where one box over `dims` would admit shapes no call has (the LLM: seq = context beside
    # past = context - 1, which TensorRT would size memory for) or tune for one kind of call only.
    # A call runs on the first profile that holds it. None: one profile, `dims` itself.
    profiles: dict[str, Ranges] | None = None

    def __post_init__(self) -> None:
        """Every profile inside `dims`, min <= opt <= max, and no sum of axes above its own axis's range."""
        for name, ranges in self.profile_ranges().items():
            for axis, (low, opt, high) in ranges.items():
                whole = self.dims[axis]
                if not whole[0] <= low <= opt <= high <= whole[2]:
                    raise ValueError(f"{self.name}: profile {name!r} gives {axis} {(low, opt, high)}, outside {whole} or unordered")
            for total, terms in (self.sums or {}).items():
                reach = sum(ranges[t][2] for t in terms)
                if reach > ranges[total][2]:
                    raise ValueError(
                        f"{self.name}: profile {name!r} lets {' + '.join(terms)} reach {reach}, above {total}'s {ranges[total][2]}"
                    )

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def corner(self, which: str) -> dict[str, int]:
        """Every dynamic axis at its own min, opt or max: a corner of `dims`."""
        return {d: rng[PROFILE_POINTS.index(which)] for d, rng in self.dims.items()}

    def point(self, which: str) -> dict[str, int]:
        """Every dynamic axis at its min, opt or max; a sum's last term shrinks so the sum stays in range."""
        sizes = self.corner(which)
        for total, terms in (self.sums or {}).items():
            *fixed, last = terms
            cap = self.dims[total][2] - sum(sizes[t] for t in fixed)
            sizes[last] = max(self.dims[last][0], min(sizes[last], cap))
            sizes[total] = sum(sizes[t] for t in terms)
        return sizes

    def profile_ranges(self) -> dict[str, Ranges]:
        """Each optimisation profile's range of every dynamic axis, by name, in build order."""
        return {name: {**self.dims, **ranges} for name, ranges in (self.profiles or {SINGLE_PROFILE: {}}).items()}

    def _shapes(self, ranges: Ranges) -> dict[str, dict[str, list[int]]]:
        return {t.name: {p: list(t.resolve({d: r[i] for d, r in ranges.items()})) for i, p in enumerate(PROFILE_POINTS)} for t in self.inputs}

    def profile(self) -> dict[str, dict[str, list[int]]]:
        """Input name -> {min, opt, max} shapes of one box over `dims`: what ONNX Runtime's TensorRT provider gets."""
        return self._shapes(self.dims)

    def optimization_profiles(self) -> dict[str, dict[str, dict[str, list[int]]]]:
        """Profile name -> input name -> {min, opt, max} shapes: what a TensorRT plan is built with."""
        return {name: self._shapes(ranges) for name, ranges in self.profile_ranges().items()}

    def sample(self, dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs at the given axis sizes; integer inputs drawn from `int_ranges`."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for t in self.inputs:
            shape = t.resolve(dims)
            if np.issubdtype(np.dtype(t.dtype), np.integer):
                low, high = (self.int_ranges or {})[t.name]
                feeds[t.name] = rng.integers(low, high, size=shape, dtype=t.dtype)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return feeds

    def to_json(self) -> dict[str, Any]:
        io = lambda ts: [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in ts]  # noqa: E731
        return {
            "inputs": io(self.inputs),
            "outputs": io(self.outputs),
            "dims": self.dims,
            "parts": list(self.parts),
            "state": dict(self.state or {}),
            "sums": {k: list(v) for k, v in (self.sums or {}).items()},
            "static_shapes": self.static_shapes,
            # a list: the order is the plan's, and the manifest's JSON sorts mapping keys
            "profiles": [{"name": name, "inputs": shapes} for name, shapes in self.optimization_profiles().items()],
        }


def f32(name: str, *shape: Dim) -> TensorSpec:
    return TensorSpec(name, "float32", shape)


def i64(name: str, *shape: Dim) -> TensorSpec:
    return TensorSpec(name, "int64", shape)


def _encoders(config: dict[str, Any]) -> list[ComponentSpec]:
    ib, hidden = config["imagebind"], config["llm"]["hidden_size"]
    vision, audio = ib["vision"], ib["audio"]
    size = vision["image_size"]
    parts = ("imagebind", "input_projection")
    return [
        ComponentSpec(
            "imagebind_vision",
            parts,
            (f32("clips", "batch", "clips", 3, vision["num_frames"], size, size),),
            (f32("token", "batch", hidden),),
            {"batch": (1, 1, MAX_BATCH), "clips": (1, 1, vision["video_clips"])},
        ),
        ComponentSpec(
            "imagebind_audio",
            parts,
            (f32("clips", "batch", "clips", 1, audio_rows(audio), audio["target_length"]),),
            (f32("token", "batch", hidden),),
            {"batch": (1, 1, MAX_BATCH), "clips": (1, audio["clips"], audio["clips"])},
        ),
    ]


def _llm(config: dict[str, Any]) -> ComponentSpec:
    llm = config["llm"]
    hidden, context = llm["hidden_size"], llm["max_position_embeddings"]
    def cache(length: str) -> tuple[Dim, ...]:
        return ("layers", "batch", llm["num_key_value_heads"], length, hidden // llm["num_attention_heads"])

    layers = llm["num_hidden_layers"]
    # The runtime's calls (runtime.generation): a prefill of the whole prompt on an empty cache; decode
    # steps of one token; after them at most one chunk, the last sampled token and the forced signal
    # runs. The runtime accepts prompt + answer + every run up to the context (runtime.prompt.check_fits),
    # so each call's present (past + seq) stays within it, and so does each profile. The opt points,
    # which TensorRT tunes its kernels for, are a typical prompt and a decode step halfway through the
    # default answer: the call that repeats.
    prompt = min(TYPICAL_PROMPT, context)
    chunk = 1 + sum(SIGNAL_TOKEN_COUNTS.values())
    step = min(prompt + config["generation"]["max_new_tokens"] // 2, context - chunk)
    return ComponentSpec(
        "llm",
        ("llm", "lora"),
        (
            i64("input_ids", "batch", "seq"),
            f32("media_token", "batch", hidden),
            i64("media_position", "batch"),
            TensorSpec("past_keys", "float32", cache("past")),
            TensorSpec("past_values", "float32", cache("past")),
        ),
        (
            f32("logits", "batch", llm["vocab_size"]),
            f32("hidden", "batch", "seq", hidden),
            TensorSpec("present_keys", "float32", cache("present")),
            TensorSpec("present_values", "float32", cache("present")),
        ),
        {
            "layers": (layers, layers, layers),
            "batch": (1, 1, MAX_BATCH),
            "seq": (1, 1, context),
            "past": (0, step, context - 1),
            "present": (1, step + 1, context),
        },
        int_ranges={"input_ids": (0, llm["vocab_size"]), "media_position": (-1, 1)},
        state={"present_keys": "past_keys", "present_values": "past_values"},
        sums={"present": ("seq", "past")},
        profiles={
            "prefill": {"seq": (1, prompt, context), "past": (0, 0, 0), "present": (1, prompt, context)},
            "decode": {"seq": (1, 1, 1), "past": (0, step, context - 1), "present": (1, step + 1, context)},
            "chunk": {"seq": (1, chunk, chunk), "past": (0, step, context - chunk), "present": (1, step + chunk, context)},
        },
    )


def _projectors(config: dict[str, Any]) -> list[ComponentSpec]:
    hidden = config["llm"]["hidden_size"]
    return [
        ComponentSpec(
            f"projector_{m}",
            (f"projector_{m}", "llm"),  # the signal-token embeddings are folded in from the LLM
            (f32("hidden", "batch", SIGNAL_TOKEN_COUNTS[m], hidden),),
            (f32("embeds", "batch", dec["embed_tokens"], dec["embed_dim"]),),
            {"batch": (1, 1, MAX_BATCH)},
        )
        for m, dec in config["decoders"].items()
    ]


def _vae_factor(dec: dict[str, Any]) -> int:
    return 2 ** (len(dec["vae"]["block_out_channels"]) - 1)


def _pixel_shape(dec: dict[str, Any]) -> tuple[int, int, int]:
    """What the VAE decodes to: RGB frames, or AudioLDM's one-channel (frames, mel bins) spectrogram."""
    if "vocoder" in dec:
        return 1, frame_count(dec), dec["vocoder"]["model_in_dim"]
    return 3, dec["height"], dec["width"]


def _diffusion(config: dict[str, Any], modality: str) -> list[ComponentSpec]:
    dec = config["decoders"][modality]
    name, part = dec["name"], f"decoders/{dec['name']}"
    pixels, factor = _pixel_shape(dec), _vae_factor(dec)
    c, h, w = dec["vae"]["latent_channels"], pixels[1] // factor, pixels[2] // factor
    video = "frames" in dec
    latent = ("batch", c, "frames", h, w) if video else ("batch", c, h, w)
    if "vocoder" in dec:
        cond = f32("class_labels", "batch", dec["embed_dim"])
    else:
        cond = f32("encoder_hidden_states", "batch", dec["embed_tokens"], dec["embed_dim"])
    unet_dims = {"batch": (1, 2, 2 * MAX_BATCH), **({"frames": (1, dec["frames"], dec["frames"])} if video else {})}
    vae_batch = (1, dec["frames"], 2 * dec["frames"]) if video else (1, 1, MAX_BATCH)
    specs = [
        ComponentSpec(
            f"{name}_unet",
            (part,),
            (f32("sample", *latent), f32("timestep", "batch"), cond),
            (f32("noise_pred", *latent),),
            unet_dims,
            static_shapes=True,
        ),
        ComponentSpec(
            f"{name}_vae_decoder",
            (part,),
            (f32("latent", "batch", c, h, w),),
            (f32("pixels", "batch", *pixels),),
            {"batch": vae_batch},
            static_shapes=True,
        ),
    ]
    if "vocoder" in dec:
        specs.append(
            ComponentSpec(
                f"{name}_vocoder",
                (part,),
                (f32("mel", "batch", pixels[1], pixels[2]),),
                (f32("waveform", "batch", "samples"),),  # HiFi-GAN's length depends on its kernels
                {"batch": (1, 1, MAX_BATCH)},
            )
        )
    return specs


def component_specs(config: dict[str, Any]) -> dict[str, ComponentSpec]:
    """All components of a checkpoint, in build order."""
    specs = [*_encoders(config), _llm(config), *_projectors(config)]
    for modality in ("image", "video", "audio"):
        specs += _diffusion(config, modality)
    return {s.name: s for s in specs}
