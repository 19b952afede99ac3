"""The conversation type and its prompt: the one template the runtime and training share."""
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from runtime.conversation import Conversation, ConversationError, Medium, Turn, read_conversation, write_conversation
from runtime.prompt import PromptError, conversation_prompt
from runtime.signals import SignalVocab
from train.batches import IGNORE, Tokens
from train.presets import PROMPT

VOCAB = SignalVocab({"image": [10, 11, 12, 13], "audio": [20, 21, 22]})


def chars(s: str) -> list[int]:
    return [ord(c) for c in s]


def text_of(ids, slot=0) -> str:
    return "".join("@" if i == slot else chr(i) for i in ids)


def test_every_medium_has_its_own_span_at_its_place_in_its_turn():
    conversation = Conversation((
        Turn.user("compare", [Medium("image", Path("a.png")), Medium("audio", Path("b.wav"))]),
        Turn.assistant("they differ"),
        Turn.user("and this?", [Medium("video", Path("c.mp4"))]),
    ))
    p = conversation_prompt(conversation, PROMPT, chars, bos_id=1, placeholder_id=0)
    assert p.ids[0] == 1
    assert text_of(p.ids[1:]) == (
        "### Human: <Img>@</Img> <Img>@</Img> compare\n### Assistant: they differ\n###"
        " Human: <Img>@</Img> and this?\n### Assistant:"
    )
    assert [p.ids[i] for i in p.media_positions] == [0, 0, 0] and len(p.media_positions) == 3
    start, end = p.answers[0]
    assert text_of(p.ids[start:end]) == " they differ\n###"


def test_an_assistant_turn_with_ids_is_its_generated_text():
    conversation = Conversation((Turn.user("draw"), Turn.assistant("ignored", ids=[65, 66]), Turn.user("again")))
    p = conversation_prompt(conversation, PROMPT, chars, 1, 0, answer_text=lambda ids: " " + "".join(map(chr, ids)) + "\n")
    assert " AB\n### Human: again" in text_of(p.ids)
    assert "ignored" not in text_of(p.ids)


def test_an_empty_later_turn_is_refused():
    with pytest.raises(PromptError, match="turn 3: empty text"):
        conversation_prompt(Conversation((Turn.user("a"), Turn.assistant("b"), Turn.user(" "))), PROMPT, chars, 1, 0)


@pytest.fixture(scope="module")
def tokens(tiny_dir, tiny_model):
    return Tokens(AutoTokenizer.from_pretrained(tiny_dir / "tokenizer"), tiny_model.config)


def test_training_keeps_its_token_ids_for_single_turn_records(tokens):
    """The ids the training template gave before conversations: segments tokenised on their own."""
    enc, unk = tokens.encode, tokens.tokenizer.unk_token_id
    q, a = "what is in this picture?", "a red circle on the left of a blue background"
    ids, labels, positions = tokens.dialogue([{"human": q, "assistant": a}], ["image"])
    answer = enc(" " + a + "\n###")
    assert ids == [1, *enc("### Human: <Img>"), unk, *enc("</Img> " + q + "\n### Assistant:"), *answer]
    assert positions == [1 + len(enc("### Human: <Img>"))]
    assert labels == [IGNORE] * (len(ids) - len(answer)) + answer
    ids, _, positions = tokens.dialogue([{"human": q, "assistant": "[IMG0][IMG1][IMG2][IMG3]"}])
    assert ids == [1, *enc("### Human: " + q + "\n### Assistant:"), *enc(" [IMG0][IMG1][IMG2][IMG3]\n###")]
    assert positions == []


def test_training_multi_turn_records_keep_their_ids(tokens):
    enc = tokens.encode
    turns = [{"human": "hello", "assistant": "hi"}, {"human": "and now?", "assistant": "now too"}]
    ids, labels, _ = tokens.dialogue(turns)
    second = enc(" Human: and now?\n### Assistant:")
    assert ids == [1, *enc("### Human: hello\n### Assistant:"), *enc(" hi\n###"), *second, *enc(" now too\n###")]
    assert sum(label != IGNORE for label in labels) == len(enc(" hi\n###")) + len(enc(" now too\n###"))


@pytest.mark.parametrize(
    "turns, message",
    [
        ((), "empty conversation"),
        ((Turn("system", "x"),), "turn 1: unknown role 'system'"),
        ((Turn.assistant("x"),), "turn 1: a assistant turn where a user turn belongs"),
        ((Turn.user("a"), Turn.user("b")), "turn 2: a user turn where a assistant turn belongs"),
        ((Turn.user("a"), Turn.assistant("b")), "the last turn is the assistant's"),
        ((Turn.user("a", [Medium("depth", Path("d"))]),), "turn 1: unknown input modality 'depth'"),
        ((Turn.user("a"), Turn.assistant("b", media=[Medium("image", Path("i.png"))]), Turn.user("c")),
         "turn 2: assistant media need the turn's ids"),
        ((Turn.user("a"), Turn.assistant("b", ids=[5, 20, 21, 22], media=[Medium("image", Path("i.png"))]), Turn.user("c")),
         "turn 2: its image is not its own output"),
        ((Turn.user("a"), Turn.assistant("b", ids=[5], media=[Medium("text", Path("t"))]), Turn.user("c")),
         "turn 2: an assistant turn cannot have produced 'text' media"),
    ],
)
def test_bad_conversations_are_refused_by_rule(turns, message):
    with pytest.raises(ConversationError, match=message.replace("(", r"\(").replace("?", r"\?")):
        Conversation(turns).check(VOCAB)


def test_an_assistant_turn_keeps_the_media_its_own_runs_produced():
    ok = Conversation((Turn.user("a"), Turn.assistant("b", [5, 10, 11, 12, 13], [Medium("image", Path("i.png"))]), Turn.user("c")))
    ok.check(VOCAB)


def test_a_conversation_file_round_trips_with_relative_paths(tmp_path):
    (tmp_path / "media").mkdir()
    conversation = Conversation((
        Turn.user("look", [Medium("image", tmp_path / "media" / "a.png")]),
        Turn.assistant("a circle", [5, 10, 11, 12, 13], [Medium("image", tmp_path / "out" / "image.png")]),
        Turn.user("and?"),
    ))
    path = tmp_path / "conversation.json"
    write_conversation(path, conversation)
    assert '"path": "media/a.png"' in path.read_text()
    assert read_conversation(path) == conversation


@pytest.mark.parametrize(
    "data, message",
    [
        ([], "a conversation is a JSON object"),
        ({"turns": [], "x": 1}, "unknown conversation field 'x'"),
        ({"turns": [{"role": "user", "txt": "a"}]}, "turn 1: unknown field 'txt'"),
        ({"turns": [{"role": "user", "text": "a", "media": ["a.png"]}]}, "turn 1: media is a list"),
        ({"turns": [{"role": "assistant", "text": "a", "ids": ["1"]}]}, "turn 1: ids is a list of integers"),
    ],
)
def test_malformed_json_is_refused(data, message):
    with pytest.raises(ConversationError, match=message):
        Conversation.from_dict(data)
