"""From user files to ImageBind-ready arrays, one place for every route.

Shapes: image (1, 1, 3, 1, S, S) — one clip, one frame (the encoder repeats it to a 2-frame
clip); video (1, clips, 3, frames, S, S); audio (1, clips, 1, mel, T).
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from runtime import media, preprocess
from runtime.limits import Limits

INPUT_MODALITIES = ("image", "audio", "video")


def prepare_inputs(
    imagebind: dict[str, Any], files: dict[str, Path | None], *, limits: Limits = media.DEFAULT_LIMITS
) -> dict[str, np.ndarray]:
    """Read and preprocess each given file within `limits`; raises MediaError naming the file on
    bad media. A video is decoded only up to the last frame its clips use."""
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
        wave, rate = media.read_audio(files["audio"], limits=limits)
        out["audio"] = preprocess.waveform_to_fbank_clips(
            wave, rate, audio["sample_rate"], audio["clips"], audio["clip_duration"],
            audio["num_mel_bins"], audio["target_length"], audio["mean"], audio["std"],
        )[None]
    return out
