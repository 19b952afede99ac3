"""Readers: fixtures in each real format (the reference's files' layouts) to unified records."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from runtime import media
from train import synthetic
from train.data.prepare import prepare
from train.data.readers import InputError, process_caption
from train.data.records import read_records
from train.presets import signal_tokens

ROOT = Path(__file__).resolve().parents[1]
RUN = {m: "".join(signal_tokens(m)) for m in ("image", "video", "audio")}


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> Path:
    """Real media under their datasets' own names, plus a damaged one."""
    root = tmp_path_factory.mktemp("media")
    Image.fromarray(synthetic.shape_image("red", "white", 32)).save(root / "001312382.jpg", quality=90)
    Image.fromarray(synthetic.shape_image("blue", "black", 32)).save(root / "photo (1).JPG", quality=90)
    media.write_png(root / "000000033471.png", synthetic.shape_image("green", "white", 32))
    media.write_wav(root / "106158.wav", synthetic.tone(440.0, 0.5, 16000), 16000)
    media.write_video(root / "00169473.mp4", synthetic.moving_shape_video("blue", "black", 32, 4), fps=4.0)
    (root / "00123086.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(64))  # cut short
    for name in ("mosit_i_0000000_00.jpg", "mosit_i_0000000_01.jpg"):
        Image.fromarray(synthetic.shape_image("yellow", "black", 32)).save(root / name)
    return root


def _write_json(path: Path, entries: list) -> Path:
    path.write_text(json.dumps(entries, indent=4))
    return path


def _line_of(path: Path, needle: str) -> int:
    """The line of an entry: the one holding its opening brace, just above `needle`'s first line."""
    lines = path.read_text().splitlines()
    hit = next(i for i, line in enumerate(lines) if needle in line)
    return next(i for i in range(hit, -1, -1) if lines[i].strip() == "{") + 1


def _records(out: Path, source: str) -> dict:
    return {r.id: r for r in read_records(out / "records" / f"{source}.jsonl")}


def _convert(fmt, path, out, media_dir=None, **kw):
    stream = io.StringIO()
    report = prepare(fmt, path, out, media_dir, stream=stream, progress=False, **kw)
    return report, stream.getvalue().splitlines()


def test_cc3m_pairs_missing_and_malformed_entries(tmp_path, media_dir):
    path = _write_json(tmp_path / "cc3m.json", [
        {"caption": "A Broken (blue) bench: near a fence", "id": "001312382", "image_name": "001312382.jpg"},
        {"caption": "players wait for a conversion", "id": "001319946", "image_name": "001319946.jpg"},
        {"id": "001315729", "image_name": "001312382.jpg"},
        {"caption": "a bench", "id": "9", "image_name": "photo (1).JPG"},
    ])
    report, lines = _convert("cc3m", path, tmp_path / "data", media_dir)
    records = _records(tmp_path / "data", "cc3m")
    assert sorted(records) == ["cc3m-001312382", "cc3m-9"]
    r = records["cc3m-001312382"]
    assert r.inputs == {"image": "image/cc3m-001312382.jpg"} and r.target == "text" and r.split == "train"
    assert r.caption == "a broken blue bench near a fence" == process_caption("A Broken (blue) bench: near a fence")
    assert r.turns[0]["assistant"] == r.caption
    assert records["cc3m-9"].inputs == {"image": "image/cc3m-9.jpg"}  # named by id, not by its original name
    assert (tmp_path / "data" / r.inputs["image"]).read_bytes() == (media_dir / "001312382.jpg").read_bytes()
    assert report.skipped == {"missing media file": 1, "malformed entry": 1} and report.written == 2
    assert lines == [
        f"{path}:{_line_of(path, '001319946')} (entry 1): missing media file: {media_dir / '001319946.jpg'}",
        f"{path}:{_line_of(path, '001315729')} (entry 2): malformed entry: missing field 'caption'",
    ]


def test_webvid_integer_ids_and_an_unreadable_video(tmp_path, media_dir):
    path = _write_json(tmp_path / "webvid.json", [
        {"caption": "Roses on the garden in the afternoon", "id": 12949985, "video_name": "00169473.mp4"},
        {"caption": "Top-down aerial footage", "id": 1026827060, "video_name": "00123086.mp4"},
    ])
    report, lines = _convert("webvid", path, tmp_path / "data", media_dir)
    (record,) = _records(tmp_path / "data", "webvid").values()
    assert record.id == "webvid-12949985" and record.inputs == {"video": "video/webvid-12949985.mp4"}
    frames, _ = media.read_video(tmp_path / "data" / record.inputs["video"])
    assert frames.shape[0] == 4
    assert report.skipped == {"unreadable media file": 1}
    assert lines[0].startswith(f"{path}:{_line_of(path, '00123086')} (entry 1): unreadable media file: ")


def test_audiocaps(tmp_path, media_dir):
    path = _write_json(tmp_path / "audiocap.json", [
        {"audio_id": 106158, "audio_name": "106158.wav", "caption": "A train running and then a horn honking"},
    ])
    _convert("audiocaps", path, tmp_path / "data", media_dir)
    (record,) = _records(tmp_path / "data", "audiocaps").values()
    assert record.id == "audiocaps-106158" and record.inputs == {"audio": "audio/audiocaps-106158.wav"}
    assert record.caption == "a train running and then a horn honking"


def test_llava_conversations(tmp_path, media_dir):
    path = _write_json(tmp_path / "llava_instruct_150k.json", [
        {"id": "000000033471", "image": "000000033471.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "The back of the bus features an advertisement."},
        ]},
        {"id": "1", "image": "000000033471.png", "conversations": [{"from": "human", "value": "<image>\nhi"}]},
        {"id": "2", "image": "000000033471.png", "conversations": [
            {"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
    ])
    report, lines = _convert("llava", path, tmp_path / "data", media_dir)
    (record,) = _records(tmp_path / "data", "llava").values()
    assert record.inputs == {"image": "image/llava-000000033471.png"}
    assert record.turns == [
        {"human": "What are the colors of the bus in the image?", "assistant": "The bus in the image is white and red."},
        {"human": "What feature can be seen on the back of the bus?", "assistant": "The back of the bus features an advertisement."},
    ]
    assert report.skipped == {"malformed entry": 2}
    assert "(entry 1): malformed entry: a conversation needs human/gpt pairs, got 1 turns" in lines[0]
    assert "(entry 2): malformed entry: turn 0 must be {'from': 'human', 'value': text}" in lines[1]


def test_alpaca_needs_no_media(tmp_path):
    path = _write_json(tmp_path / "alpaca_data.json", [
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat well."},
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "No answer", "input": ""},
    ])
    report, _ = _convert("alpaca", path, tmp_path / "data")
    records = _records(tmp_path / "data", "alpaca")
    assert list(records) == ["alpaca-alpaca_data-000000", "alpaca-alpaca_data-000001"]
    assert records["alpaca-alpaca_data-000001"].turns == [{"human": "Translate to French.\n\nGood morning", "assistant": "Bonjour"}]
    assert not records["alpaca-alpaca_data-000000"].inputs and report.skipped == {"malformed entry": 1}


def test_videochat_qa(tmp_path, media_dir):
    path = _write_json(tmp_path / "videochat_instruct_11k.json", [
        {"video": "00169473.mp4", "QA": [{"q": "Describe the video.", "a": "A disc slides."}, {"q": "Which colour?", "a": "Blue."}]},
        {"video": "00169473.mp4", "QA": [{"i": "Watch closely.", "q": "What moves?", "a": "A disc."}]},
    ])
    _convert("videochat", path, tmp_path / "data", media_dir)
    records = _records(tmp_path / "data", "videochat")
    first, second = records.values()
    assert first.inputs == {"video": f"video/{first.id}.mp4"} and len(first.turns) == 2
    assert second.turns[0]["human"] == "Watch closely.\nWhat moves?"


def test_t2x_answers_become_signal_runs(tmp_path, media_dir):
    path = _write_json(tmp_path / "audio_instruction_tuning.json", [
        {"audio_captions": ["A vehicle engine works at regular pace"], "audio_caption_embeddings": ["34706.wav.npy"],
         "conversations": [
             {"from": "human", "value": "I need the sound of an engine.", "input_modality": "text"},
             {"from": "gpt", "value": "Absolutely! Here it is. <audio>", "caption": "A vehicle engine works at regular pace",
              "output_modality": "audio"}]},
        {"conversations": [{"from": "human", "value": "draw a cat"}, {"from": "gpt", "value": "Sure <image>"}]},
    ])
    generation = _write_json(tmp_path / "cc3m_generation.json", [
        {"output_image": "001312382.jpg", "image_captions": "a broken blue bench", "image_caption_embeddings": "x.npy",
         "conversations": [{"from": "human", "value": "Can you illustrate a broken blue bench"},
                           {"from": "gpt", "value": "Sure thing! <image>"}]},
    ])
    report, lines = _convert("t2x", path, tmp_path / "data", media_dir)
    _convert("t2x", generation, tmp_path / "data", media_dir)  # a second file into the same source
    records = _records(tmp_path / "data", "t2x")
    audio = records["t2x-audio_instruction_tuning-000000"]
    assert audio.target == "audio" and audio.caption == "A vehicle engine works at regular pace" and not audio.outputs
    assert audio.turns == [{"human": "I need the sound of an engine.", "assistant": f"Absolutely! Here it is. {RUN['audio']}"}]
    image = records["t2x-cc3m_generation-000000"]
    assert image.outputs == {"image": "image/t2x-cc3m_generation-000000.jpg"} and image.turns[0]["assistant"] == f"Sure thing! {RUN['image']}"
    assert report.skipped == {"malformed entry": 1} and "no caption is given" in lines[0]


def test_mosit_one_record_per_output(tmp_path, media_dir):
    path = _write_json(tmp_path / "mosit.json", [
        {"image_list": [
            {"image_name": "mosit_i_0000000_00.jpg", "data_source": "mosit", "caption": "The rule of thirds"},
            {"image_name": "mosit_i_0000000_01.jpg", "data_source": "mosit", "caption": "A flowing waterfall"},
        ], "video_list": [], "audio_list": [], "conversation": [
            {"from": "human", "value": "What is the rule of thirds?"},
            {"from": "gpt", "value": "A guideline. <Image>mosit_i_0000000_00.jpg</Image> Anything else?"},
            {"from": "human", "value": "Show me a long exposure."},
            {"from": "gpt", "value": "Here: <Image>mosit_i_0000000_01.jpg</Image>"},
        ]},
    ])
    _convert("mosit", path, tmp_path / "data", media_dir)
    records = _records(tmp_path / "data", "mosit")
    first, second = records["mosit-mosit-000000-0"], records["mosit-mosit-000000-1"]
    assert first.turns == [{"human": "What is the rule of thirds?", "assistant": f"A guideline. {RUN['image']} Anything else?"}]
    assert first.caption == "The rule of thirds" and first.outputs == {"image": "image/mosit-mosit-000000-0.jpg"}
    assert len(second.turns) == 2 and second.turns[1]["assistant"] == f"Here: {RUN['image']}" and second.caption == "A flowing waterfall"


def test_jsonl_bad_lines_are_reported_and_the_rest_converted(tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text('{"instruction": "a", "output": "b"}\n{"instruction": \n\n{"instruction": "c", "output": "d"}\n')
    report, lines = _convert("alpaca", path, tmp_path / "data")
    assert report.written == 2 and report.skipped == {"malformed entry": 1}
    assert lines[0].startswith(f"{path}:2 (entry 1): malformed entry: not valid JSON")


def test_broken_json_writes_nothing(tmp_path):
    path = tmp_path / "cc3m.json"
    path.write_text('[\n  {"caption": "a", "id": "1", "image_name": "1.jpg"},\n  {"caption": "b" "id": "2"}\n]')
    with pytest.raises(InputError, match=r"cc3m.json:3: not valid JSON .*nothing converted"):
        _convert("cc3m", path, tmp_path / "data", tmp_path)
    assert not (tmp_path / "data").exists()


def test_cli_prints_counts_and_refuses_in_one_line(tmp_path, media_dir):
    path = _write_json(tmp_path / "cc3m.json", [
        {"caption": "a bench", "id": "1", "image_name": "001312382.jpg"},
        {"caption": "a fence", "id": "2", "image_name": "missing.jpg"},
    ])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "train" / "prepare_data.py"), "--format", "cc3m", "--input", str(path), "--out", str(tmp_path / "data")]
    run = subprocess.run([*cmd, "--media", str(media_dir), "--split", "heldout"], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("1 records written to " f"{tmp_path / 'data' / 'records' / 'cc3m.jsonl'} (0 kept from before); skipped: missing media file 1")
    assert f"{path}:{_line_of(path, 'missing.jpg')} (entry 1): missing media file" in run.stderr
    (record,) = _records(tmp_path / "data", "cc3m").values()
    assert record.split == "heldout"
    refused = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert refused.returncode == 2
    assert [line for line in refused.stderr.splitlines() if line.startswith("error:")] == [
        "error: --media is needed for cc3m: the folder its media file names are relative to"
    ]
