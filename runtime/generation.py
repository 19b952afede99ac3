"""Text generation on the `llm` engine: prefill, one-token decode, constrained sampling, streaming.

It reproduces the reference pipeline (train/reference.py) on any backend: `generate_ids` (HF
`generate` with `SignalConstraint` and `StopOnText`), then `vocab.finish`, then the last-layer
hidden states at each complete signal-token run that `signal_conditions` takes from one full
forward pass. Here those states are collected from the decode steps instead, so the prompt and
the answer go through the LLM once. Batch size is 1 throughout.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import torch

from runtime.backends import Engine, Engines
from runtime.limits import Limits
from runtime.manifest import Build
from runtime.conversation import Conversation, Medium, Turn
from runtime.prompt import PromptIds, check_fits, conversation_prompt
from runtime.sessions import KVCache, SessionCache
from runtime.signals import SignalVocab
from runtime.stop import ShouldStop, check

LLM_INPUTS = ("input_ids", "media_token", "media_position", "past_keys", "past_values")
LLM_OUTPUTS = ("logits", "hidden", "present_keys", "present_values")
# transformers' GenerationConfig default. The reference never sets top_k, so its sampling keeps
# only the 50 best tokens before top-p; matching it keeps the sampled distribution the same.
HF_TOP_K = 50


class Tokenizer:
    """A build's `tokenizer.json` through the `tokenizers` library alone.

    `encode` and `decode` equal transformers' `encode(text, add_special_tokens=False)` and
    `decode(ids, skip_special_tokens=True)` for a fast tokenizer; transformers' optional
    `clean_up_tokenization_spaces` is not applied (it is off by default, and transformers itself
    skips it for BPE models such as LLaMA's).
    """

    def __init__(self, folder: Path) -> None:
        folder = Path(folder)
        self.backend = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = json.loads((folder / "tokenizer_config.json").read_text())
        self.bos_id, self.eos_id, self.unk_id = (
            self._special_id(folder, config, key) for key in ("bos_token", "eos_token", "unk_token")
        )

    @classmethod
    def from_build(cls, build: Build) -> Tokenizer:
        return cls(build.path(build.data["constants"]["tokenizer"]))

    def _special_id(self, folder: Path, config: dict[str, Any], key: str) -> int:
        token = config.get(key)
        # transformers writes a special token either as its text or as a serialised AddedToken.
        content = token.get("content") if isinstance(token, dict) else token
        token_id = None if content is None else self.backend.token_to_id(content)
        if token_id is None:
            raise ValueError(f"{folder}: tokenizer_config.json names no {key} that tokenizer.json knows ({token!r})")
        return token_id

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)


# One engine call: last-position logits (V,), last-layer post-norm states of the fed tokens (S, H),
# and the cache that now includes them.
Step = tuple[np.ndarray, np.ndarray, KVCache]


@dataclass(frozen=True)
class Generation:
    ids: list[int]  # generated ids, stop-trimmed and `finish`ed (an EOS that ended generation is kept)
    text: str  # visible text: signal and special tokens dropped, stripped
    signal_hidden: dict[str, np.ndarray]  # modality -> (1, N, H) states at its first complete run
    reused: int = 0  # prompt tokens taken from the session's cache instead of prefilled
    prompt_tokens: int = 0  # the prompt's length


def constrain(logits: np.ndarray, generated: Sequence[int], vocab: SignalVocab) -> np.ndarray:
    """The reference's SignalConstraint: a started run is forced on, later run tokens are banned outside one."""
    forced = vocab.forced_next(generated)
    scores = logits.astype(np.float32, copy=True)
    if forced is None:
        scores[vocab.banned_outside_run] = -np.inf
    else:
        scores[np.arange(scores.size) != forced] = -np.inf
    return scores


def warp(scores: np.ndarray, temperature: float, top_p: float, top_k: int = HF_TOP_K) -> np.ndarray:
    """HF's sampling warpers in HF's order: temperature, then top-k, then top-p (filtered scores are -inf)."""
    scores = scores / np.float32(temperature)
    k = min(top_k, scores.size)
    scores[scores < np.partition(scores, -k)[-k]] = -np.inf  # ties with the k-th best stay, as in HF
    if top_p < 1.0:
        # As TopPLogitsWarper: drop the low tail whose total probability is at most 1 - top_p,
        # i.e. keep the smallest head reaching top_p, and never drop the best token.
        order = np.argsort(scores, kind="stable")
        probs = softmax(scores[order])
        drop = np.cumsum(probs) <= 1 - top_p
        drop[-1] = False
        scores[order[drop]] = -np.inf
    return scores


def softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max())
    return e / e.sum()


def sample(scores: np.ndarray, temperature: float, top_p: float, rng: torch.Generator) -> int:
    """Greedy (first maximum, as torch.argmax) when temperature is 0, else a draw from the warped
    distribution made as HF makes it (float32 softmax, torch.multinomial), so that the same seed
    draws the same tokens as the reference wherever the two backends' logits agree."""
    if temperature == 0:
        return int(np.argmax(scores))
    probs = torch.softmax(torch.from_numpy(warp(scores, temperature, top_p)), dim=-1)
    return int(torch.multinomial(probs, 1, generator=rng))


def settled(text: str, stop: str) -> str:
    """`text` less any tail that a later token could still change or turn into the stop marker."""
    # Byte-level decoding shows an unfinished UTF-8 sequence as U+FFFD until its last byte arrives.
    text = text.rstrip("\ufffd")
    for k in range(len(stop) - 1, 0, -1):
        if text.endswith(stop[:k]):
            return text[:-k]
    return text


class TextStream:
    """Feeds `on_text` the visible text piece by piece as it settles.

    Guarantees: every piece is non-empty; no piece ever contains the stop marker or a signal
    token's text; the concatenation of all pieces is exactly the final visible text before
    `.strip()` (`Generation.text` is that, stripped). A piece is held back while it is a trailing
    U+FFFD (a character whose bytes are still arriving) or a tail that could be the start of the
    stop marker ("#" or "##"); such a tail is released once the next token shows otherwise, or at
    the end. This relies on a decoder where appending tokens only rewrites trailing U+FFFDs,
    which byte-level BPE (and SentencePiece byte fallback) satisfy.
    """

    def __init__(self, on_text: Callable[[str], None] | None, stop: str) -> None:
        self.on_text, self.stop, self.sent = on_text, stop, ""

    def _emit(self, upto: str) -> None:
        """Send what `upto` adds to the text sent so far (`upto` extends it, or is not longer)."""
        if len(upto) > len(self.sent):
            if self.on_text is not None:
                self.on_text(upto[len(self.sent) :])
            self.sent = upto

    def update(self, text: str) -> None:
        """`text`: the visible text so far, known not to contain the stop marker."""
        self._emit(settled(text, self.stop))

    def close(self, text: str) -> None:
        """`text`: the final visible text."""
        assert text.startswith(self.sent), "streamed text diverged from the final text"
        self._emit(text)


class LlmGenerator:
    """The `llm` engine as a generator, configured by the build's config (sizes, defaults, template, tokens)."""

    def __init__(
        self, engine: Engine, config: dict[str, Any], tokenizer: Tokenizer, context: int | None = None,
        sessions: SessionCache | None = None,
    ) -> None:
        """`context`: the tokens the engine holds, when fewer than the model's context; `sessions`:
        where a request's session keeps its KV cache (none: every request prefills in full)."""
        if tuple(engine.input_names) != LLM_INPUTS or tuple(engine.output_names) != LLM_OUTPUTS:
            raise ValueError(
                f"llm engine has inputs {engine.input_names} and outputs {engine.output_names}; "
                f"this runtime drives {list(LLM_INPUTS)} -> {list(LLM_OUTPUTS)}"
            )
        self.engine, self.config, self.tokenizer, self.sessions = engine, config, tokenizer, sessions
        self.context = min(config["llm"]["max_position_embeddings"], context or math.inf)
        self.vocab = SignalVocab({m: list(ids) for m, ids in config["tokens"]["signal_ids"].items()})
        self.stop = config["prompt"]["stop"]
        llm = config["llm"]
        self.hidden_size = llm["hidden_size"]
        head_dim = llm["hidden_size"] // llm["num_attention_heads"]
        self.empty = np.zeros((llm["num_hidden_layers"], 1, llm["num_key_value_heads"], 0, head_dim), np.float32)

    @classmethod
    def from_engines(cls, engines: Engines, sessions: SessionCache | None = None) -> LlmGenerator:
        """From a `runtime.backends.Engines` set: its llm engine, its build's config and tokenizer;
        the context is what the engine's cache range holds (a prompt, then one token per step)."""
        past = engines.build.component("llm")["dims"]["past"][-1]
        return cls(engines["llm"], engines.build.config, Tokenizer.from_build(engines.build), past + 1, sessions)

    def prompt(self, conversation: Conversation, limits: Limits | None = None) -> PromptIds:
        """The template around the conversation, tokenised as the reference does (the unk id holds
        each media slot); an assistant turn with ids is its generated text, signal runs included.
        The conversation is checked first (an assistant's media must be its own runs' output), the
        prompt's length against `limits` after."""
        conversation.check(self.vocab)
        bos = self.config["tokens"]["bos_id"]
        prompt = conversation_prompt(
            conversation, self.config["prompt"], self.tokenizer.encode, bos, self.tokenizer.unk_id, self.answer_text
        )
        if limits is not None:
            limits.check_prompt_tokens(len(prompt.ids))
        return prompt

    def build_prompt(self, text: str, media: int = 0) -> PromptIds:
        """One user turn of `text` with `media` input media (their modality does not change the ids)."""
        return self.prompt(Conversation((Turn.user(text, [Medium("image", Path())] * int(media)),)))

    def answer_text(self, ids: Sequence[int]) -> str:
        """Generated ids as the answer's text in a later prompt: signal runs written out, EOS dropped."""
        return self.tokenizer.decode(ids)

    def text_of(self, ids: Sequence[int]) -> str:
        """Visible text of generated ids, before `.strip()`."""
        return self.tokenizer.decode(self.vocab.strip(ids))

    def _forward(
        self, ids: Sequence[int], cache: KVCache, media_token: np.ndarray | None = None, media_position: int | None = None
    ) -> Step:
        """Feed `ids` after the cached tokens: one engine call, the cache's present becomes the next past."""
        out = self.engine.run(
            {
                "input_ids": np.asarray([ids], np.int64),
                # Position -1 matches no token, so the placeholder token's value is never read.
                "media_token": np.zeros((1, self.hidden_size), np.float32) if media_token is None else media_token,
                "media_position": np.asarray([-1 if media_position is None else media_position], np.int64),
                "past_keys": cache.keys,
                "past_values": cache.values,
            }
        )
        return out["logits"][0], out["hidden"][0], KVCache(out["present_keys"], out["present_values"])

    def prefill(
        self,
        ids: Sequence[int],
        media_tokens: np.ndarray | None = None,
        media_positions: Sequence[int] | None = None,
        past: KVCache | None = None,
    ) -> Step:
        """The prompt `ids` after the `past` tokens (none: all of it), media tokens in place.

        `media_tokens` (N, H) are those of the `media_positions` (indices into `ids`) past the
        cached tokens, in order.
        The llm engine takes one media token per call, so the prompt is fed in chunks, each holding
        at most one media position, one call each on the growing cache: causal attention makes that
        the computation of one call over the whole prompt."""
        cache = past or KVCache(self.empty, self.empty)
        start = cache.keys.shape[3]
        positions = [p for p in media_positions or () if p >= start]
        tokens = np.zeros((0, self.hidden_size), np.float32) if media_tokens is None else np.asarray(media_tokens, np.float32)
        if len(tokens) != len(positions):
            raise ValueError(f"{len(tokens)} media tokens for {len(positions)} media positions past the cache")
        bounds = [start, *positions[1:], len(ids)]
        step = None
        for k, (begin, end) in enumerate(zip(bounds, bounds[1:])):
            media = (tokens[k : k + 1], positions[k] - begin) if k < len(positions) else (None, None)
            step = self._forward(ids[begin:end], cache, *media)
            cache = step[2]
        return step

    def decode_one_token(self, token: int, cache: KVCache) -> Step:
        return self._forward([token], cache)

    def _settings(
        self, max_new_tokens: int | None, temperature: float | None, top_p: float | None
    ) -> tuple[int, float, float]:
        """The request's values, the build's `generation` defaults where not given (as the reference's Request)."""
        gen = self.config["generation"]
        max_new = gen["max_new_tokens"] if max_new_tokens is None else max_new_tokens
        temperature = gen["temperature"] if temperature is None else temperature
        top_p = gen["top_p"] if top_p is None else top_p
        if max_new < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
        if not 0 <= top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {top_p}")
        return max_new, temperature, top_p

    def _check(self, prompt: PromptIds, media_tokens: np.ndarray | None, max_new: int, required: Sequence[str]) -> None:
        """Everything that can be refused before the first engine call."""
        unknown = [m for m in required if m not in self.vocab.runs]
        if unknown:
            raise ValueError(f"unknown output modality {unknown[0]!r}; known: {', '.join(self.vocab.runs)}")
        given = 0 if media_tokens is None else len(media_tokens)
        if given != len(prompt.media_positions):
            raise ValueError(f"{given} media tokens for a prompt with {len(prompt.media_positions)} media slots")
        reserved = max_new + sum(len(run) for run in self.vocab.runs.values())
        check_fits(len(prompt.ids), reserved, self.context)

    def generate(
        self,
        prompt: PromptIds,
        media_tokens: np.ndarray | None = None,
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int = 0,
        required: Sequence[str] = (),
        on_text: Callable[[str], None] | None = None,
        should_stop: ShouldStop | None = None,
        session: str | None = None,
    ) -> Generation:
        """Generate as the reference does; `media_tokens` (N, H) are the tokens of the prompt's N
        media positions, in order. With a `session` (and `sessions` to keep them in), the prefix
        that the session's cache holds is not fed again, and the cache is kept for the next turn.

        Stops, as HF generate with the reference's criteria, after the token that reaches
        `max_new_tokens`, that is the EOS id (kept in `ids`, as HF returns it), or that makes the
        visible text contain the stop marker (dropped again with the reference's trimming loop).
        `should_stop` is asked before every engine call; a reason it names raises `runtime.stop.Stopped`.
        """
        max_new, temperature, top_p = self._settings(max_new_tokens, temperature, top_p)
        self._check(prompt, media_tokens, max_new, required)
        rng = torch.Generator().manual_seed(seed)
        stream = TextStream(on_text, self.stop)
        tokens = np.zeros((0, self.hidden_size), np.float32) if media_tokens is None else np.asarray(media_tokens, np.float32)
        media = dict(zip(prompt.media_positions, tokens))
        reused, past = self.sessions.reuse(session, prompt.ids, media) if session and self.sessions else (0, None)
        check(should_stop)
        new_media = tokens[[p >= reused for p in prompt.media_positions]]
        logits, _, cache = self.prefill(prompt.ids, new_media, prompt.media_positions, past)
        ids: list[int] = []
        hidden: list[np.ndarray] = []  # hidden[i] is the state of ids[i], produced when ids[i] is fed
        while True:
            ids.append(sample(constrain(logits, ids, self.vocab), temperature, top_p, rng))
            text = self.text_of(ids)
            if ids[-1] == self.tokenizer.eos_id or self.stop in text or len(ids) == max_new:
                break
            stream.update(text)
            check(should_stop)
            logits, h, cache = self.decode_one_token(ids[-1], cache)
            hidden.append(h[0])
        # The stop marker first shows with the last token, so this drops at most that unfed token:
        # every state in `hidden` still belongs to `ids`.
        while ids and self.stop in self.text_of(ids):
            ids.pop()
        ids = self.vocab.finish(ids, required)
        runs = self.vocab.completed(ids)
        if runs and len(ids) > len(hidden):
            # The last sampled token and any appended run tokens were never fed: one chunk does it.
            _, h, cache = self._forward(ids[len(hidden) :], cache)
            hidden.extend(h)
        signal_hidden = {
            m: np.stack(hidden[start : start + len(self.vocab.runs[m])])[None] for m, start in runs.items()
        }
        if session and self.sessions:
            self.sessions.store(session, [*prompt.ids, *ids[: len(hidden)]], media, cache)  # every fed token
        text = self.text_of(ids)
        stream.close(text)
        return Generation(ids, text.strip(), signal_hidden, reused, len(prompt.ids))
