"""Constrained signal-token decoding and the prompt template (pure logic, no model)."""
import pytest

from runtime.conversation import Conversation, Medium, Turn
from runtime.prompt import PromptError, check_fits, conversation_prompt
from runtime.signals import SignalVocab
from train.presets import PROMPT

VOCAB = SignalVocab({"image": [10, 11, 12, 13], "audio": [20, 21, 22]})


def test_started_run_is_forced_to_completion():
    assert VOCAB.forced_next([5, 10]) == 11
    assert VOCAB.forced_next([5, 10, 11, 12]) == 13
    assert VOCAB.forced_next([5, 10, 11, 12, 13]) is None
    assert VOCAB.forced_next([20, 21]) == 22


def test_later_run_tokens_are_banned_outside_a_run():
    assert sorted(VOCAB.banned_outside_run) == [11, 12, 13, 21, 22]


def test_finish_completes_a_truncated_run_and_appends_required_ones():
    assert VOCAB.finish([1, 2, 10, 11], []) == [1, 2, 10, 11, 12, 13]
    assert VOCAB.finish([1, 2], ["audio"]) == [1, 2, 20, 21, 22]
    # an already present run is not repeated
    assert VOCAB.finish([10, 11, 12, 13], ["image"]) == [10, 11, 12, 13]


def test_completed_finds_first_full_runs_and_strip_removes_signal_ids():
    ids = [1, 20, 21, 22, 3, 10, 11, 12, 13, 10, 11, 12, 13]
    assert VOCAB.completed(ids) == {"audio": 1, "image": 5}
    assert VOCAB.completed([10, 11, 12]) == {}
    assert VOCAB.strip(ids) == [1, 3]


def fake_encode(s: str) -> list[int]:
    return [ord(c) for c in s]


def one_turn(text: str, media: int) -> Conversation:
    return Conversation.single(text, {"image": "a.png"} if media else {})


def test_prompt_with_media_places_the_slot_between_the_tags():
    p = conversation_prompt(one_turn("hi", 1), PROMPT, fake_encode, bos_id=1, placeholder_id=0)
    [position] = p.media_positions
    assert p.ids[0] == 1 and p.ids[position] == 0
    left = "".join(map(chr, p.ids[1:position]))
    right = "".join(map(chr, p.ids[position + 1 :]))
    assert left == "### Human: <Img>"
    assert right == "</Img> hi\n### Assistant:"


def test_prompt_without_media_has_no_slot():
    p = conversation_prompt(one_turn("hi", 0), PROMPT, fake_encode, bos_id=1, placeholder_id=0)
    assert p.media_positions == [] and p.answers == []
    assert "".join(map(chr, p.ids[1:])) == "### Human: hi\n### Assistant:"


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_prompt_is_refused(text):
    with pytest.raises(PromptError, match="empty prompt"):
        conversation_prompt(one_turn(text, 0), PROMPT, fake_encode, 1, 0)


def test_too_long_prompt_is_refused():
    check_fits(10, 20, 30)
    with pytest.raises(PromptError, match="prompt too long: 11 tokens"):
        check_fits(11, 20, 30)

