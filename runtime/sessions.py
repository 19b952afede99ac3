"""Sessions: a conversation's KV cache kept between its turns, so a follow-up prefills only what is new.

An entry holds, per session id, the tokens the LLM has seen (the last prompt and the answer fed
after it), the media tokens at their positions and the cache of keys and values. A follow-up's
prompt starts with that conversation; the longest prefix on which both agree (same ids, same media
tokens at the same places) is taken from the entry and only the rest is fed. Causal attention makes
that the same computation as a full prefill. An entry that is gone (evicted, expired, another
process's) or does not match is a full prefill, with the same answer.

Bounded by `Limits.max_sessions`, `session_ttl_s` (since last use) and `max_session_bytes` (keys
and values of all entries); the least recently used go first. Shared by the in-process runtime and
the Triton Python models (each model instance is its own process and keeps its own sessions).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from runtime.limits import Limits


@dataclass(frozen=True)
class KVCache:
    keys: np.ndarray  # (L, 1, KV, P, D): every token fed so far
    values: np.ndarray


@dataclass(frozen=True)
class Entry:
    tokens: tuple[int, ...]  # every token in the cache, in order
    media: dict[int, np.ndarray]  # position -> the (H,) media token fed there
    cache: KVCache
    used: float

    @property
    def nbytes(self) -> int:
        return self.cache.keys.nbytes + self.cache.values.nbytes


class SessionCache:
    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.clock = limits, clock
        self.entries: OrderedDict[str, Entry] = OrderedDict()  # least recently used first
        self.lock = threading.Lock()  # a Python model may serve requests from several threads
        self.hits = self.misses = 0

    def reuse(self, session: str, ids: Sequence[int], media: dict[int, np.ndarray]) -> tuple[int, KVCache | None]:
        """How many leading tokens of `ids` (with `media` tokens at their positions) the session's
        entry holds, and its cache cut to them; (0, None) when none. At least the last token is
        left to feed: its logits start the answer."""
        with self.lock:
            self._expire()
            entry = self.entries.get(session)
            length = 0 if entry is None else _common(entry, ids, media)
            if length == 0:
                self.misses += 1
                return 0, None
            self.hits += 1
            self.entries[session] = replace(entry, used=self.clock())
            self.entries.move_to_end(session)
            cut = KVCache(entry.cache.keys[:, :, :, :length], entry.cache.values[:, :, :, :length])
            return length, cut

    def store(self, session: str, tokens: Sequence[int], media: dict[int, np.ndarray], cache: KVCache) -> None:
        """Keep `cache` (holding `tokens`) as the session's entry, evicting to stay within the limits."""
        entry = Entry(tuple(tokens), {p: np.array(t, copy=True) for p, t in media.items()}, cache, self.clock())
        with self.lock:
            self.entries.pop(session, None)
            if entry.nbytes > self.limits.max_session_bytes:
                return
            self.entries[session] = entry
            self._expire()
            while len(self.entries) > self.limits.max_sessions or self._bytes() > self.limits.max_session_bytes:
                self.entries.popitem(last=False)

    def __contains__(self, session: str) -> bool:
        with self.lock:
            self._expire()
            return session in self.entries

    def _bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def _expire(self) -> None:
        oldest = self.clock() - self.limits.session_ttl_s
        for session in [s for s, e in self.entries.items() if e.used < oldest]:
            del self.entries[session]


def _common(entry: Entry, ids: Sequence[int], media: dict[int, np.ndarray]) -> int:
    """The length of the prefix that `entry` and the prompt agree on, short of the prompt's last token."""
    limit = min(len(entry.tokens), len(ids) - 1)
    length = 0
    while length < limit and entry.tokens[length] == ids[length]:
        length += 1
    for position in sorted(set(entry.media) | set(media)):
        if position >= length:
            break
        mine, theirs = entry.media.get(position), media.get(position)
        if mine is None or theirs is None or not np.array_equal(mine, theirs.reshape(mine.shape)):
            return position
    return length
