"""Stage 0's data: every train-split combination of the synthetic world, rendered once and held in memory.

Held-out combinations are never rendered here (`synthetic.combination_splits`), so stage 0 sees no
more of the evaluation than stages 1 to 3 do. What the encoders see goes through the runtime's own
preprocessing, videos through an MP4 round trip, as a user's files would; what the decoders learn to
draw is the clean render at the decoder's size.
"""
from __future__ import annotations

import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from runtime import media, preprocess
from runtime.inputs import prepare_inputs
from train import synthetic
from train.mel import clip_wave, mel_target

AUDIO_VARIANTS = 6  # renders per audio combination: the plain one and varied train looks (115 combinations only)
IMAGE_VARIANTS = 3  # renders per picture: the plain one and varied looks (0.13 CPU s each, up to 1,024 pixels)
# the world whose every draw_look is a varied one: stage 0 asks for its varied renders explicitly
ALWAYS_VARIED = {**synthetic.WORLD, "varied": {**synthetic.WORLD["varied"], "fraction": 1.0}}


class WorldData:
    def __init__(self, config: dict[str, Any], seed: int = 0, progress: bool = True, limit: int | None = None) -> None:
        """`limit`: at most this many combinations per modality (for quick checks)."""
        self.config, self.seed, self.progress = config, seed, progress
        self.combos = {m: split["train"][:limit] for m, split in synthetic.combination_splits(seed).items()}
        self.captions = {m: [synthetic.CAPTION[m](a) for a in combos] for m, combos in self.combos.items()}
        # per modality, each caption's embedding by the caption tower ImageBind trained against
        # (N, out): left by the imagebind part for the language part, which runs after it
        self.meanings: dict[str, Tensor] = {}

    def _bar(self, items: list, desc: str) -> Any:
        return tqdm(items, desc=desc, unit="medium", disable=not self.progress, leave=False)

    # ------------------------------------------------------------ what ImageBind reads

    @cached_property
    def vision_pixels(self) -> dict[str, np.ndarray]:
        """uint8 resized and cropped frames: images (N, IMAGE_VARIANTS, S, S, 3), videos (N, T, S, S, 3)
        the clip's frames (every clip of a world video is the same two frames, the first and the last)."""
        size = self.config["imagebind"]["vision"]["image_size"]
        return {"image": self._image_pixels(size), "video": self._video_clip_pixels(size)}

    def _image_pixels(self, size: int) -> np.ndarray:
        """Each picture's plain render and IMAGE_VARIANTS - 1 varied looks (synthetic.draw_look: other
        frame sizes and aspects, shape sizes, places around the named one, colours, anti-aliased
        edges, noise, JPEG/WebP) written to their files and read back as a user's are: the trunk
        learns shapes, not the one way the world draws them (docs/evaluation.md)."""
        with tempfile.TemporaryDirectory() as tmp:

            def look(job: tuple[int, int]) -> np.ndarray:
                i, v = job
                if v == 0:
                    return preprocess.resize_and_crop(synthetic.render("image", self.combos["image"][i]), size)
                return preprocess.resize_and_crop(media.read_image(self._varied_file("image", i, v, tmp)), size)

            jobs = [(i, v) for i in range(self.count("image")) for v in range(IMAGE_VARIANTS)]
            pixels = synthetic.map_media(look, jobs, "render images", self.progress)
        return np.stack(pixels).reshape(self.count("image"), IMAGE_VARIANTS, size, size, 3)

    def _video_clip_pixels(self, size: int) -> np.ndarray:
        vision = self.config["imagebind"]["vision"]
        with tempfile.TemporaryDirectory() as tmp:

            def clip(numbered: tuple[int, dict[str, str]]) -> list[np.ndarray]:
                path = Path(tmp) / f"{numbered[0]}.mp4"
                synthetic.write_medium(path, "video", numbered[1])
                frames, fps = media.read_video(path)
                index = preprocess.clip_frame_indices(len(frames), fps, vision["video_clips"], vision["num_frames"], vision["clip_duration"])[0]
                return [preprocess.resize_and_crop(frames[i], size) for i in index]

            out = synthetic.map_media(clip, enumerate(self.combos["video"]), "render videos", self.progress)
        return np.stack(out)

    @cached_property
    def _vision_inputs(self) -> dict[str, Tensor]:
        """(N, 3, T, S, S) CLIP-normalised float clips (a picture's T: its renders), made once:
        normalising a batch of 128 videos took 73-91 ms of a 280 ms ImageBind step (17 ms indexed
        from these)."""
        return {
            m: torch.from_numpy(np.ascontiguousarray(preprocess.normalise(pixels).transpose(0, 4, 1, 2, 3)))
            for m, pixels in self.vision_pixels.items()
        }

    def vision_clips(self, modality: str, index: Tensor, variant: Tensor | None = None) -> Tensor:
        """(B, 1, 3, T, S, S) float clips as `encode_vision` takes them, CLIP-normalised; a picture's
        `variant` (default: its plain render) picks which of its renders."""
        clips = self._vision_inputs[modality][index]
        if modality == "image":
            rows = torch.zeros_like(index) if variant is None else variant
            clips = clips[torch.arange(len(index)), :, rows][:, :, None]
        return clips[:, None]

    @cached_property
    def audio_fbank(self) -> Tensor:
        """(N, AUDIO_VARIANTS, 1, 1, rows, frames): one fbank clip per render (a world sound is shorter
        than a clip, so its clips are all the same). Render 0 is the plain one; the others are varied
        train looks (synthetic.draw_look: level, sample rate, channels, MP3/OGG, detuning, noise)
        written to their files and read back as a user's are, so the trunk hears each pitch a little
        off and through other front ends, not one fixed spectrum it can memorise (docs/evaluation.md)."""
        audio = self.config["imagebind"]["audio"]
        plain = [preprocess.audio_input([w], audio) for w in self._waves(audio["sample_rate"])]
        with tempfile.TemporaryDirectory() as tmp:

            def varied(job: tuple[int, int]) -> np.ndarray:
                path = self._varied_file("audio", *job, tmp)
                return prepare_inputs(self.config["imagebind"], {"audio": path})["audio"][0, :1]  # (batch, clips, ...): one clip

            jobs = [(i, v) for i in range(self.count("audio")) for v in range(1, AUDIO_VARIANTS)]
            clips = synthetic.map_media(varied, jobs, "varied sounds", self.progress)
        per = AUDIO_VARIANTS - 1
        return torch.from_numpy(np.stack([np.stack([plain[i], *clips[i * per : (i + 1) * per]]) for i in range(len(plain))]))

    def _varied_file(self, modality: str, i: int, v: int, folder: str) -> Path:
        """Combination i's varied look v (synthetic.draw_look, seeded by it) written to a file in
        `folder`, to be read back as a user's file is."""
        a = self.combos[modality][i]
        look = synthetic.draw_look(modality, a, np.random.default_rng([self.seed, i, v]), ALWAYS_VARIED)
        path = Path(folder) / f"{i}-{v}{look.suffix}"
        synthetic.write_look(path, modality, a, look)
        return path

    def _waves(self, rate: int) -> list[np.ndarray]:
        world = {**synthetic.WORLD, "sample_rate": rate}
        return [synthetic.render("audio", a, world) for a in self.combos["audio"]]

    # ------------------------------------------------------------ what the decoders draw

    @cached_property
    def decoder_pixels(self) -> dict[str, np.ndarray]:
        """uint8 images (N, H, W, 3) and videos (N, F, H, W, 3) at the decoders' sizes."""
        dec = self.config["decoders"]
        image = {**synthetic.WORLD, "image_size": dec["image"]["height"]}
        video = {**synthetic.WORLD, "video_size": dec["video"]["height"], "video_frames": dec["video"]["frames"]}
        return {
            "image": np.stack([synthetic.render("image", a, image) for a in self._bar(self.combos["image"], "render images")]),
            "video": np.stack([synthetic.render("video", a, video) for a in self._bar(self.combos["video"], "render videos")]),
        }

    def pixels(self, modality: str, index: Tensor) -> Tensor:
        """Images (B, 3, H, W) or videos (B, 3, F, H, W) in [-1, 1]."""
        x = torch.from_numpy(self.decoder_pixels[modality][index.numpy()]).float() / 127.5 - 1.0
        return x.permute(0, 3, 1, 2) if modality == "image" else x.permute(0, 4, 1, 2, 3)

    @cached_property
    def waves(self) -> Tensor:
        """(N, samples) float32: the world's sounds at the vocoder's rate as AudioLDM cuts a clip."""
        section = self.config["decoders"]["audio"]
        waves = self._waves(section["vocoder"]["sampling_rate"])
        return torch.from_numpy(np.stack([clip_wave(w, section) for w in waves]))

    @cached_property
    def mels(self) -> Tensor:
        """(N, 1, frames, mel bins): AudioLDM's log-mel of each sound, what its VAE encodes."""
        section = self.config["decoders"]["audio"]
        return torch.stack([mel_target(w, section) for w in self._waves(section["vocoder"]["sampling_rate"])])

    def count(self, modality: str) -> int:
        return len(self.combos[modality])
