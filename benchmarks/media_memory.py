"""Memory a long video costs the reader: ImageBind's picked frames against every frame.

    python benchmarks/media_memory.py [--seconds 60] [--size 640x360] [--fps 30]

Makes an H.264 MP4 with ffmpeg's test source, reads it with `runtime.media.read_video` once with
the clip sampler of the `nextgpt-7b` preset (what the runtime does) and once whole (what it did
before), and prints the frames kept and the peak memory Python traced (numpy's arrays included).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import tracemalloc
from functools import partial
from pathlib import Path

import imageio_ffmpeg

from runtime import media, preprocess
from train.presets import get_preset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--size", default="640x360")
    p.add_argument("--fps", type=int, default=30)
    args = p.parse_args(argv)
    vision = get_preset("nextgpt-7b")["imagebind"]["vision"]
    pick = partial(
        preprocess.clip_frame_indices, clips=vision["video_clips"], frames_per_clip=vision["num_frames"],
        clip_duration=vision["clip_duration"],
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "long.mp4"
        source = f"testsrc=duration={args.seconds}:size={args.size}:rate={args.fps}"
        ffmpeg = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", source]
        subprocess.run([*ffmpeg, "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path)], check=True)
        for name, kwargs in (("picked frames", {"pick": pick}), ("every frame", {})):
            tracemalloc.start()
            frames, _ = media.read_video(path, **kwargs)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(f"{name}: {len(frames)} of {args.seconds * args.fps} frames kept, peak traced memory {peak / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
