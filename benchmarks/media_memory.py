"""Memory long media cost the readers: ImageBind's clips against the whole file.

    python benchmarks/media_memory.py [--seconds 60] [--size 640x360] [--fps 30] [--rate 48000]

Makes an H.264 MP4 and a mono 16-bit WAV of `--seconds` with ffmpeg's test sources and reads them
with the `nextgpt-7b` preset's ImageBind settings: the video with `read_video` once with the clip
sampler (what the runtime does) and once whole (what it did before); the audio through
`prepare_inputs` (only the clips' samples kept) and through `read_audio` +
`waveform_to_fbank_clips` (the whole waveform, as before). Prints the peak memory Python traced
(numpy's arrays included).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import tracemalloc
from functools import partial
from pathlib import Path

import imageio_ffmpeg

from runtime import media, preprocess
from runtime.cli import make_parser
from runtime.inputs import prepare_inputs
from runtime.limits import Limits
from train.presets import get_preset


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--size", default="640x360")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--rate", type=int, default=48000, help="the audio's sample rate")
    args = p.parse_args(argv)
    imagebind = get_preset("nextgpt-7b")["imagebind"]
    vision, audio = imagebind["vision"], imagebind["audio"]
    pick = partial(
        preprocess.clip_frame_indices, clips=vision["video_clips"], frames_per_clip=vision["num_frames"],
        clip_duration=vision["clip_duration"],
    )
    keys = ("sample_rate", "clips", "clip_duration", "num_mel_bins", "target_length", "mean", "std")
    limits = Limits(max_audio_seconds=args.seconds + 1, max_video_seconds=args.seconds + 1)
    with tempfile.TemporaryDirectory() as folder:
        video, wav = Path(folder) / "long.mp4", Path(folder) / "long.wav"
        ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i"]
        source = f"testsrc=duration={args.seconds}:size={args.size}:rate={args.fps}"
        subprocess.run([*ffmpeg, source, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(video)], check=True)
        subprocess.run([*ffmpeg, f"sine=frequency=440:duration={args.seconds}:sample_rate={args.rate}", str(wav)], check=True)
        runs = {
            "video, picked frames": lambda: media.read_video(video, pick=pick, limits=limits),
            "video, every frame": lambda: media.read_video(video, limits=limits),
            "audio, the clips' samples": lambda: prepare_inputs(imagebind, {"audio": wav}, limits=limits),
            "audio, the whole waveform": lambda: preprocess.waveform_to_fbank_clips(
                *media.read_audio(wav, limits=limits), *(audio[k] for k in keys), preprocess.pitch_shape(audio)
            ),
        }
        for name, run in runs.items():
            tracemalloc.start()
            run()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(f"{name}: peak traced memory {peak / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
