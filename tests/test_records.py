"""The unified record format: per-turn input media, backward compatible, malformed records refused."""
import json

import pytest

from train.data.records import Record, RecordError, all_inputs, read_records, turn_inputs, write_records

BASE = {"id": "r-1", "source": "test", "split": "train"}


def test_a_record_without_per_turn_media_reads_as_before(tmp_path):
    old = {**BASE, "turns": [{"human": "describe this image", "assistant": "a red circle"}], "inputs": {"image": "image/a.png"}}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(old) + "\n")
    (record,) = read_records(path)
    assert turn_inputs(record) == [{"image": "image/a.png"}]
    assert all_inputs(record) == ["image/a.png"]


def test_media_on_several_turns_round_trip(tmp_path):
    turns = [
        {"human": "what shape is it?", "assistant": "it is a circle"},
        {"human": "and this one?", "assistant": "it is a square", "inputs": {"image": "image/b.png"}},
        {"human": "and this sound?", "assistant": "it is a tone", "inputs": {"audio": "audio/c.wav", "video": "video/d.mp4"}},
    ]
    record = Record(**BASE, turns=turns, inputs={"image": "image/a.png"})
    write_records(tmp_path / "r.jsonl", [record])
    (back,) = read_records(tmp_path / "r.jsonl")
    assert back == record
    assert turn_inputs(back) == [{"image": "image/a.png"}, {"image": "image/b.png"}, {"audio": "audio/c.wav", "video": "video/d.mp4"}]
    assert all_inputs(back) == ["image/a.png", "image/b.png", "audio/c.wav", "video/d.mp4"]


def test_a_turn_s_media_are_in_the_runtime_s_input_order():
    # the runtime orders a request's files image, audio, video (runtime.conversation.media_of):
    # training must give each medium the slot the runtime gives it, whatever order a file lists them
    record = Record(**BASE, turns=[{"human": "q", "assistant": "a"}], inputs={"video": "video/v.mp4", "image": "image/i.png"})
    assert list(turn_inputs(record)[0]) == ["image", "video"]


@pytest.mark.parametrize(
    ("turn", "message"),
    [
        ({"human": "q", "assistant": "a", "inputs": {"smell": "x.png"}}, "unknown modality 'smell'"),
        ({"human": "q", "assistant": "a", "inputs": {"image": "/etc/passwd"}}, "not a path relative to the data root"),
        ({"human": "q", "assistant": "a", "inputs": {"image": "../x.png"}}, "not a path relative to the data root"),
        ({"human": "q", "assistant": "a", "inputs": {}}, "turns[1].inputs is empty"),
        ({"human": "q", "assistant": "a", "inputs": ["image/x.png"]}, "turns[1].inputs must be an object"),
        ({"human": "q", "assistant": "a", "media": {"image": "x.png"}}, "turns[1] must have exactly"),
        ({"human": "q", "assistant": " "}, "turns[1]: texts must be strings and the answer non-empty"),
        ({"human": 3, "assistant": "a"}, "turns[1]: texts must be strings"),
    ],
)
def test_malformed_later_turns_are_refused_with_the_field(turn, message):
    with pytest.raises(RecordError) as e:
        Record(**BASE, turns=[{"human": "q", "assistant": "a"}, turn])
    assert message in str(e.value)


def test_the_first_turn_s_media_are_the_record_s_inputs():
    with pytest.raises(RecordError, match=r"turns\[0\].inputs: the first turn's media are the record's inputs"):
        Record(**BASE, turns=[{"human": "q", "assistant": "a", "inputs": {"image": "image/a.png"}}])


def test_a_bad_line_names_its_file_and_line(tmp_path):
    good = {**BASE, "turns": [{"human": "q", "assistant": "a"}]}
    bad = {**BASE, "turns": [{"human": "q", "assistant": "a"}, {"human": "q", "assistant": "a", "inputs": {"image": ""}}]}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"r.jsonl:2: turns\[1\].inputs.image"):
        list(read_records(path))
