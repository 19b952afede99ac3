"""Writing an answer: `response.json` plus one media file per generated modality.

Everything is written to a temporary folder beside `out` first and moved in at the end, so a
failure never leaves a half-written answer behind, and media files of an earlier answer in `out`
that this one does not have are removed, so the folder holds one answer (other files are left alone).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from runtime import media
from runtime.conversation import Conversation, write_conversation

if TYPE_CHECKING:
    from runtime.request import Response

VIDEO_FORMATS = ("mp4", "gif")


def media_filename(modality: str, video_format: str = "mp4") -> str:
    return {"image": "image.png", "audio": "audio.wav", "video": f"video.{video_format}"}[modality]


MEDIA_NAMES = frozenset(media_filename(m, f) for m in ("image", "audio", "video") for f in VIDEO_FORMATS)


def _write_one(path: Path, modality: str, value: np.ndarray, meta: dict[str, Any]) -> None:
    if modality == "image":
        media.write_png(path, value)
    elif modality == "audio":
        media.write_wav(path, value, meta["sample_rate"])
    else:
        media.write_video(path, value, meta["fps"])


def write_response(
    out: Path,
    text: str,
    outputs: dict[str, np.ndarray],
    meta: dict[str, dict[str, Any]],
    extra: dict[str, Any] | None = None,
    video_format: str = "mp4",
) -> dict[str, Any]:
    """Write `out/response.json` and the media; `meta[modality]` holds sample_rate or fps."""
    out.parent.mkdir(parents=True, exist_ok=True)
    files = {m: media_filename(m, video_format) for m in outputs}
    body = {"text": text, "media": files, **(extra or {})}
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staging = Path(tmp)
        for modality, value in outputs.items():
            _write_one(staging / files[modality], modality, value, meta.get(modality, {}))
        (staging / "response.json").write_text(json.dumps(body, indent=2) + "\n")
        out.mkdir(exist_ok=True)
        for name in MEDIA_NAMES - set(files.values()):
            (out / name).unlink(missing_ok=True)
        for item in staging.iterdir():
            shutil.move(str(item), out / item.name)
    return body


def write_conversation_answer(out: Path, conversation: Conversation, response: Response, media: dict[str, str]) -> Path:
    """`out/conversation.json`: the conversation with the answer appended as its last turn (its media
    as written in `out`, `media`: modality -> file name), to continue with `--conversation`."""
    path = Path(out) / "conversation.json"
    write_conversation(path, conversation.then(response.turn({m: Path(out).resolve() / name for m, name in media.items()})))
    return path


def media_meta(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What the writers need beyond the arrays: the audio sample rate and the video frame rate."""
    dec = config["decoders"]
    return {"audio": {"sample_rate": dec["audio"]["sample_rate"]}, "video": {"fps": dec["video"]["fps"]}}
