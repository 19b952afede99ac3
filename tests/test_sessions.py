"""runtime/sessions.py on its own: which prefix an entry gives back, and its bounds (count, age, bytes)."""
import numpy as np
import pytest

from runtime.conversation import Conversation, Medium, Turn
from runtime.limits import LimitError, Limits
from runtime.request import Request
from runtime.sessions import KVCache, SessionCache


def cache(tokens: int, width: int = 2) -> KVCache:
    """A cache whose entry at position p holds p, so that a cut shows which positions it kept."""
    keys = np.broadcast_to(np.arange(tokens, dtype=np.float32)[None, None, None, :, None], (1, 1, 1, tokens, width)).copy()
    return KVCache(keys, keys + 0.5)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_agreeing_prefix_is_cut_from_the_entry():
    sessions = SessionCache(Limits())
    token = np.ones(2, np.float32)
    sessions.store("a", [1, 5, 0, 6, 7], {2: token}, cache(5))
    length, cut = sessions.reuse("a", [1, 5, 0, 6, 7, 8, 9], {2: token})
    assert length == 5 and cut.keys.shape[3] == 5 and cut.keys[0, 0, 0, :, 0].tolist() == [0, 1, 2, 3, 4]
    # the same ids: the last token is fed again, its logits start the answer
    assert sessions.reuse("a", [1, 5, 0, 6, 7], {2: token})[0] == 4
    # a different medium at the same place: only what comes before it
    assert sessions.reuse("a", [1, 5, 0, 6, 7, 8], {2: token * 2})[0] == 2
    # an edited turn: up to the first different id
    assert sessions.reuse("a", [1, 5, 3, 6, 7, 8], {})[0] == 2
    assert sessions.reuse("b", [1, 5, 0, 6, 7, 8], {2: token}) == (0, None)
    assert (sessions.hits, sessions.misses) == (4, 1)


def test_entries_are_bounded_by_count_age_and_bytes():
    clock = Clock()
    unit = cache(4).keys.nbytes  # an entry of 4 tokens holds 2 units (keys and values), one of 8 holds 4
    sessions = SessionCache(Limits(max_sessions=2, session_ttl_s=10, max_session_bytes=6 * unit), clock)
    for name in "abc":
        sessions.store(name, [1, 2, 3, 4], {}, cache(4))
    assert "a" not in sessions and "b" in sessions and "c" in sessions  # the least recently used went
    clock.now = 5
    assert sessions.reuse("b", [1, 2, 3, 4, 5], {})[0] == 4  # a use renews b
    clock.now = 12
    assert "c" not in sessions and "b" in sessions  # c unused for more than 10 s
    sessions.store("big", list(range(8)), {}, cache(8))  # b and big: 6 units, within the bytes
    assert "b" in sessions and "big" in sessions
    sessions.store("big2", list(range(8)), {}, cache(8))  # 10 units and 3 entries: b, then big go
    assert "b" not in sessions and "big" not in sessions and "big2" in sessions
    sessions.store("huge", list(range(40)), {}, cache(40))  # 20 units never fit: not kept, nothing lost for it
    assert "huge" not in sessions and "big2" in sessions


@pytest.mark.parametrize("session", ["", "a b", "x" * 129, "../etc"])
def test_a_bad_session_id_is_refused(session):
    with pytest.raises(ValueError, match="session id"):
        Request("hi", session=session).check()


def test_conversation_limits_are_named():
    limits = Limits(max_turns=3, max_media=1)

    long = Conversation((Turn.user("a"), Turn.assistant("b"), Turn.user("c"), Turn.assistant("d"), Turn.user("e")))
    with pytest.raises(LimitError, match="5 turns exceed the limit max_turns=3"):
        Request(conversation=long).check(limits)
    two = Conversation((Turn.user("a", [Medium("image", "x.png"), Medium("audio", "y.wav")]),))
    with pytest.raises(LimitError, match="2 input media exceed the limit max_media=1"):
        Request(conversation=two).check(limits)
    with pytest.raises(LimitError, match="prompt too long: 9 tokens exceed the limit max_prompt_tokens=8"):
        Limits(max_prompt_tokens=8).check_prompt_tokens(9)
