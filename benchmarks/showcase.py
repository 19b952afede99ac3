"""What the embedded model draws and says on held-out prompts: the figures docs/benchmarks.md shows.

    python benchmarks/showcase.py --engines engines/tiny [--backend onnxruntime] [--count 6] \
        [--out benchmarks/results/showcase]

Takes the first held-out samples of each task (train/evaluate.py's `samples`, the same requests the
evaluation sends), answers them on the build and writes: `text_to_image.png` (what each prompt
describes, rendered by the world, above what the model drew, with the judge's reading),
`text_to_video.png` (frame strips, asked and drawn), `text_to_audio.png` (spectrograms, asked and
made) and `x_to_text.md` (held-out inputs, their captions and the model's answers).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.machine import provenance_line
from benchmarks.report import build_provenance, save_figure
from runtime.pipeline import Any2AnyPipeline
from runtime.request import Request
from train import synthetic
from train.evaluate import TASKS, samples
from train.judges import DEFAULT_JUDGES, load_judges


def _answer(pipeline: Any2AnyPipeline, prompt: str, files: dict, output: str | None) -> object:
    return pipeline(Request(prompt=prompt, files=files, output=output, seed=0))


def _figure(rows: int, cols: int, size: tuple[float, float]) -> tuple:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _spectrogram(wave: np.ndarray) -> np.ndarray:
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(wave, 512), 1024)[::128]
    return np.log1p(np.abs(np.fft.rfft(frames * np.hanning(1024), axis=-1))[:, :160].T)


def images(pipeline: Any2AnyPipeline, chosen: list, judges: dict, out: Path, origin: dict) -> None:
    fig, axes = _figure(2, len(chosen), (2.2 * len(chosen), 5.0))
    for col, s in enumerate(chosen):
        drawn = _answer(pipeline, s.prompt, {}, "image").media["image"]
        seen = judges["image"].judge(drawn)
        axes[0, col].imshow(synthetic.render("image", s.record.attributes))
        axes[0, col].set_title(s.record.caption.replace(" of a", "\nof a"), fontsize=7)
        axes[1, col].imshow(drawn)
        axes[1, col].set_title(f"judge: {seen['colour']} {seen['shape']}", fontsize=8)
    axes[0, 0].set_ylabel("asked (world render)")
    axes[1, 0].set_ylabel("drawn")
    fig.tight_layout()
    save_figure(fig, out / "text_to_image.png", origin)


def videos(pipeline: Any2AnyPipeline, chosen: list, judges: dict, out: Path, origin: dict) -> None:
    fig, axes = _figure(2 * len(chosen), 1, (8.0, 1.4 * 2 * len(chosen)))
    for row, s in enumerate(chosen):
        drawn = _answer(pipeline, s.prompt, {}, "video").media["video"]
        asked = synthetic.render("video", s.record.attributes)
        axes[2 * row, 0].imshow(np.concatenate(list(asked), 1))
        axes[2 * row, 0].set_ylabel("asked", fontsize=7)
        axes[2 * row, 0].set_title(s.record.caption, fontsize=8)
        axes[2 * row + 1, 0].imshow(np.concatenate(list(drawn), 1))
        axes[2 * row + 1, 0].set_ylabel("drawn", fontsize=7)
        axes[2 * row + 1, 0].set_title(f"judge: {judges['video'].judge(drawn)['motion']}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "text_to_video.png", origin)


def sounds(pipeline: Any2AnyPipeline, chosen: list, judges: dict, out: Path, origin: dict) -> None:
    rate = float(pipeline.config["decoders"]["audio"]["sample_rate"])
    fig, axes = _figure(2, len(chosen), (2.6 * len(chosen), 4.4))
    for col, s in enumerate(chosen):
        made = _answer(pipeline, s.prompt, {}, "audio").media["audio"].reshape(-1)
        asked = synthetic.render("audio", s.record.attributes)
        axes[0, col].imshow(_spectrogram(asked), origin="lower", aspect="auto")
        axes[0, col].set_title(s.record.caption.removeprefix("the sound of "), fontsize=8)
        axes[1, col].imshow(_spectrogram(made), origin="lower", aspect="auto")
        axes[1, col].set_title(f"judge: {judges['audio'].judge(made, rate)['sound']}", fontsize=8)
    axes[0, 0].set_ylabel("asked (0-2.5 kHz)")
    axes[1, 0].set_ylabel("made")
    fig.tight_layout()
    save_figure(fig, out / "text_to_audio.png", origin)


def described(pipeline: Any2AnyPipeline, chosen: list, out: Path, origin: dict) -> None:
    lines = [provenance_line(origin), "", "| input | held-out medium's caption | the model's answer |", "|---|---|---|"]
    for s in chosen:
        modality = TASKS[s.task][0]
        text = _answer(pipeline, s.prompt, {modality: s.file}, None).text
        lines.append(f"| {modality} | {s.record.caption} | {text.strip()} |")
    (out / "x_to_text.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", type=Path, required=True)
    p.add_argument("--backend", default="onnxruntime")
    p.add_argument("--count", type=int, default=6, help="held-out samples per task")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/showcase"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    pipeline = Any2AnyPipeline(args.engines, args.backend)
    judges = load_judges(DEFAULT_JUDGES)
    world = synthetic.ensure_world(0, progress=False)
    by_task: dict[str, list] = {}
    for s in samples(world, args.count):
        by_task.setdefault(s.task, []).append(s)
    origin = build_provenance(args.engines)
    images(pipeline, by_task["text_to_image"], judges, args.out, origin)
    videos(pipeline, by_task["text_to_video"][:3], judges, args.out, origin)
    sounds(pipeline, by_task["text_to_audio"][:4], judges, args.out, origin)
    described(pipeline, [s for t in ("image_to_text", "video_to_text", "audio_to_text") for s in by_task[t][:3]], args.out, origin)
    print(f"wrote {', '.join(sorted(f.name for f in args.out.iterdir()))} in {args.out}")


if __name__ == "__main__":
    main()
