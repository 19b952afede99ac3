"""From user files to ImageBind-ready arrays, one place for every route.

Shapes: image (1, 1, 3, 1, S, S) — one clip, one frame (the encoder repeats it to a 2-frame
clip); video (1, clips, 3, frames, S, S); audio (1, clips, 1, mel + pitch-class rows, T).
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime import media, preprocess
from runtime.limits import Limits

if TYPE_CHECKING:
    from runtime.conversation import Medium

INPUT_MODALITIES = ("image", "audio", "video")


def prepare_inputs(
    imagebind: dict[str, Any], files: dict[str, Path | None], *, limits: Limits = media.DEFAULT_LIMITS
) -> dict[str, np.ndarray]:
    """Read and preprocess each given file within `limits`; raises MediaError naming the file on
    bad media. A video is decoded only up to the last frame its clips use, and of an audio file
    only the samples its clips are made from are kept."""
    unknown = set(files) - set(INPUT_MODALITIES)
    if unknown:
        raise media.MediaError(f"unknown input modality {sorted(unknown)[0]!r}; known: {', '.join(INPUT_MODALITIES)}")
    vision, audio = imagebind["vision"], imagebind["audio"]
    out: dict[str, np.ndarray] = {}
    if files.get("image"):
        image = preprocess.image_to_tensor(media.read_image(files["image"], limits=limits), vision["image_size"])
        out["image"] = image[None, None, :, None]
    if files.get("video"):
        clips, frames_per_clip = vision["video_clips"], vision["num_frames"]
        pick = partial(
            preprocess.clip_frame_indices, clips=clips, frames_per_clip=frames_per_clip, clip_duration=vision["clip_duration"]
        )
        frames, _ = media.read_video(files["video"], pick=pick, limits=limits)
        picked = frames.reshape(clips, frames_per_clip, *frames.shape[1:])
        out["video"] = preprocess.picked_to_clips(picked, vision["image_size"])[None]
    if files.get("audio"):
        clips = _audio_clips(files["audio"], audio, limits)
        out["audio"] = preprocess.audio_input(clips, audio)[None]
    return out


def _audio_clips(path: Path, audio: dict[str, Any], limits: Limits) -> list[np.ndarray]:
    """ImageBind's audio clips at its sample rate, bit for bit those `waveform_to_fbank_clips` cuts
    from the whole resampled waveform, with only the samples they are made from kept in memory."""
    rate_out = audio["sample_rate"]

    def spans(total: int, rate: int) -> list[tuple[int, int]]:
        return preprocess.audio_clip_spans(total, rate, rate_out, audio["clips"], audio["clip_duration"])

    def sources(total: int, rate: int) -> list[tuple[int, int]]:
        return [media.source_span(start, stop, total, rate, rate_out) for start, stop in spans(total, rate)]

    parts, total, rate = media.read_audio_spans(path, sources, limits=limits)
    return [
        media.resample_span(part, first, total, rate, rate_out, start, stop)
        for part, (first, _), (start, stop) in zip(parts, sources(total, rate), spans(total, rate))
    ]


def prepare_media(
    imagebind: dict[str, Any], media: Sequence[Medium], *, limits: Limits = media.DEFAULT_LIMITS
) -> list[tuple[str, np.ndarray]]:
    """`prepare_inputs` for a conversation's media, one by one in their order (several of one modality allowed)."""
    return [(m.modality, prepare_inputs(imagebind, {m.modality: m.path}, limits=limits)[m.modality]) for m in media]
