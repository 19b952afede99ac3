"""runtime/generation.py against the PyTorch reference on the tiny build: tokenizer, greedy ids,
text and signal hidden states, forced runs, stop marker, streaming, sampling, refusals."""
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from runtime.backends import Engine, Engines
from runtime.generation import LlmGenerator, TextStream, Tokenizer, settled, warp
from runtime.manifest import Build, read_manifest
from runtime.preprocess import image_to_tensor
from runtime.prompt import PromptError
from runtime.request import Request
from train.synthetic import shape_image

Bias = dict[int, dict[int, float]]  # engine call index (0: prefill) -> token id -> added logit


@pytest.fixture(scope="module")
def llm_build(tiny_build) -> Build:
    return read_manifest(tiny_build[0])


@pytest.fixture(scope="module")
def generator(llm_build) -> LlmGenerator:
    return LlmGenerator.from_engines(Engines(llm_build, "onnxruntime"))


@pytest.fixture(scope="module")
def torch_generator(llm_build) -> LlmGenerator:
    return LlmGenerator.from_engines(Engines(llm_build, "torch"))


class Spy:
    """An engine that counts its calls and adds `bias[k]` to the logits of call k."""

    def __init__(self, engine: Engine, bias: Bias | None = None) -> None:
        self.engine, self.bias, self.calls = engine, bias or {}, 0
        self.input_names, self.output_names = engine.input_names, engine.output_names

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.engine.run(feeds)
        logits = out["logits"].copy()
        for token, value in self.bias.get(self.calls, {}).items():
            logits[:, token] += value
        self.calls += 1
        return {**out, "logits": logits}


def spied(generator: LlmGenerator, bias: Bias | None = None) -> tuple[LlmGenerator, Spy]:
    spy = Spy(generator.engine, bias)
    return LlmGenerator(spy, generator.config, generator.tokenizer), spy


@contextmanager
def biased_reference(reference, bias: Bias) -> Iterator[None]:
    """The same bias on the reference: HF generate calls lm_head once per generated token."""
    calls = iter(range(10**6))

    def hook(module, inputs, logits):
        extra = bias.get(next(calls), {})
        if extra:
            logits = logits.clone()
            logits[..., list(extra)] += torch.tensor(list(extra.values()))
        return logits

    handle = reference.model.llm.get_base_model().lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def reference_answer(
    reference, text: str, token: np.ndarray | None, max_new: int, required: list[str], bias: Bias | None = None
):
    """Greedy ids (`generate_ids` + `finish`), text and the last-layer states at each complete run."""
    runs_len = sum(len(r) for r in reference.vocab.runs.values())
    prompt = reference.build_prompt(text, token is not None, max_new + runs_len)
    embeds = reference.prompt_embeds(prompt, reference.encode([]) if token is None else torch.from_numpy(token))
    with biased_reference(reference, bias or {}):
        ids = reference.generate_ids(embeds, Request(text, max_new_tokens=max_new, temperature=0.0))
    ids = reference.vocab.finish(ids, required)
    # As signal_conditions: one forward pass over prompt + answer.
    with torch.no_grad():
        full = torch.cat([embeds, reference.model.embed_tokens(torch.tensor([ids]))], dim=1)
        states = reference.model.llm(inputs_embeds=full, output_hidden_states=True).hidden_states[-1]
    hidden = {
        m: states[:, embeds.shape[1] + s : embeds.shape[1] + s + len(reference.vocab.runs[m])].numpy()
        for m, s in reference.vocab.completed(ids).items()
    }
    return prompt, ids, reference.text_of(ids).strip(), hidden


def image_token(reference) -> np.ndarray:
    size = reference.config["imagebind"]["vision"]["image_size"]
    clips = image_to_tensor(shape_image("red", "white", 96), size)[None, None, :, None]
    return reference.encode([("image", clips)]).numpy()


def random_token(hidden: int) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((1, hidden)).astype(np.float32)


# prompt, media token ("image": the real ImageBind token of a synthetic image), max_new_tokens, required
CASES = {
    "short": ("what colour is the sky?", None, 5, []),
    # ends by itself (the stop marker, trimmed) after a self-started audio run
    "stop_after_own_run": ("let me hear the sound of a low tone at c", None, 110, []),
    "image_in_video_out": ("describe this", "image", 40, ["video"]),
    "random_token_image_out": ("show me a red circle", "random", 24, ["image"]),
    "run_at_the_limit": ("describe this", None, 10, ["audio"]),  # cut at the limit, the required run appended
}


@pytest.fixture(scope="module")
def media_tokens(reference) -> dict[str | None, np.ndarray | None]:
    return {None: None, "image": image_token(reference), "random": random_token(reference.config["llm"]["hidden_size"])}


@pytest.fixture(scope="module")
def expected(reference, media_tokens) -> dict[str, tuple]:
    return {
        name: reference_answer(reference, text, media_tokens[media], max_new, required)
        for name, (text, media, max_new, required) in CASES.items()
    }


def check_same(got, want) -> None:
    _, ids, text, hidden = want
    assert got.ids == ids
    assert got.text == text
    assert sorted(got.signal_hidden) == sorted(hidden)
    for m, h in hidden.items():
        assert got.signal_hidden[m].shape == h.shape
        np.testing.assert_allclose(got.signal_hidden[m], h, atol=1e-4, rtol=0)


def test_tokenizer_matches_transformers(llm_build):
    folder = llm_build.path(llm_build.data["constants"]["tokenizer"])
    ours, theirs = Tokenizer(folder), AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert (ours.bos_id, ours.eos_id, ours.unk_id) == (theirs.bos_token_id, theirs.eos_token_id, theirs.unk_token_id)
    texts = ["### Human: <Img>", "a red circle on a blue background", " héllo wörld 🎉 [IMG0] </Img>[AUD3]x"]
    texts += ["", "\n### Assistant:", "##"]
    for text in texts:
        assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)
    vocab = len(theirs)
    rng = np.random.default_rng(0)
    id_lists = [rng.integers(0, vocab, size=rng.integers(0, 24)).tolist() for _ in range(500)]
    id_lists += [[0, 1, 2], [384, 385, 386, 421], [74, 130], [130], list(range(vocab))]  # specials, added, split UTF-8
    for ids in id_lists:
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("case", list(CASES))
def test_onnxruntime_greedy_equals_the_reference(generator, expected, media_tokens, case):
    text, media, max_new, required = CASES[case]
    prompt = generator.build_prompt(text, media is not None)
    assert prompt == expected[case][0]
    got = generator.generate(prompt, media_tokens[media], max_new_tokens=max_new, temperature=0.0, required=required)
    check_same(got, expected[case])


def test_the_cases_cover_stops_natural_runs_and_appended_runs(expected, generator):
    ids, text, hidden = expected["stop_after_own_run"][1:]
    assert len(ids) < 110 and "audio" in hidden and generator.stop not in text
    at_limit = expected["run_at_the_limit"][1]
    run = generator.vocab.runs["audio"]
    assert len(at_limit) == CASES["run_at_the_limit"][2] + len(run) and at_limit[-len(run):] == run
    assert expected["image_in_video_out"][1][-24:] == generator.vocab.runs["video"]


@pytest.mark.parametrize("case", ["stop_after_own_run", "image_in_video_out"])
def test_torch_backend_greedy_equals_the_reference(torch_generator, expected, media_tokens, case):
    text, media, max_new, required = CASES[case]
    prompt = torch_generator.build_prompt(text, media is not None)
    got = torch_generator.generate(
        prompt, media_tokens[media], max_new_tokens=max_new, temperature=0.0, required=required
    )
    check_same(got, expected[case])


def test_a_started_run_comes_out_whole_and_stray_run_tokens_never_appear(generator, reference):
    runs = generator.vocab.runs
    # [IMG0] pushed at token 2, [IMG2] pushed inside the run, [VID5] and [AUD7] pushed outside any run.
    bias = {2: {runs["image"][0]: 1e4}, 3: {runs["image"][2]: 1e4}}
    bias |= {8: {runs["video"][5]: 1e4}, 9: {runs["audio"][7]: 1e4}}
    biased, _ = spied(generator, bias)
    text = "make the sound of a bell"
    got = biased.generate(biased.build_prompt(text, False), max_new_tokens=16, temperature=0.0)
    assert got.ids[2:6] == runs["image"] and generator.vocab.completed(got.ids) == {"image": 2}
    banned = set(generator.vocab.banned_outside_run)
    assert not banned & set(got.ids[:2] + got.ids[6:])
    check_same(got, reference_answer(reference, text, None, 16, [], bias))


def test_stop_marker_ends_generation_and_is_trimmed_like_the_reference(generator, reference):
    hash1, hash2 = generator.tokenizer.encode("#")[0], generator.tokenizer.encode("##")[0]
    bias = {3: {hash1: 1e4}, 4: {hash2: 1e4}}  # "#" then "##": the marker spans two tokens
    biased, spy = spied(generator, bias)
    text = "what colour is the sky?"
    pieces: list[str] = []
    prompt = biased.build_prompt(text, False)
    got = biased.generate(prompt, max_new_tokens=30, temperature=0.0, on_text=pieces.append, required=["image"])
    want = reference_answer(reference, text, None, 30, ["image"], bias)
    check_same(got, want)
    # Generation stopped on the token that completed "###"; the trimmed answer keeps the first "#".
    assert got.ids[:4] == want[1][:4] and got.ids[3] == hash1 and got.ids[4:] == generator.vocab.runs["image"]
    assert spy.calls == 5 + 1  # prefill, tokens 0..3 fed, then the image run in one chunk
    assert "".join(pieces) == generator.text_of(got.ids) and not any("###" in p for p in pieces)


def test_streaming_pieces_arrive_early_and_add_up_to_the_text(generator):
    runs = generator.vocab.runs
    tokenizer = generator.tokenizer
    hashes = [i for i in tokenizer.backend.get_vocab().values() if "#" in tokenizer.decode([i])]
    # words until step 40 whatever the trained model would say: a run at step 6, no end before 40
    bias = {step: {token: -1e4 for token in [*hashes, tokenizer.eos_id]} for step in range(40)}
    bias |= {6: {runs["video"][0]: 1e4}, 40: {tokenizer.encode("#")[0]: 1e4}}
    biased, spy = spied(generator, bias)
    pieces: list[tuple[int, str]] = []
    got = biased.generate(
        biased.build_prompt("show me a red circle", False), max_new_tokens=60, temperature=0.0,
        on_text=lambda piece: pieces.append((spy.calls, piece)),
    )
    assert got.ids[6:30] == runs["video"]
    streamed = "".join(p for _, p in pieces)
    assert streamed == generator.text_of(got.ids) and streamed.strip() == got.text
    assert pieces[0][0] < spy.calls // 2 and len({step for step, _ in pieces}) > 5
    assert all(p and "###" not in p and "[VID" not in p and "[IMG" not in p for _, p in pieces)


def test_text_stream_holds_back_marker_starts_and_unfinished_characters(generator):
    assert settled("ab#", "###") == "ab" and settled("ab##", "###") == "ab" and settled("a#b", "###") == "a#b"
    assert settled("ab\ufffd", "###") == "ab" and settled("a#\ufffd", "###") == "a"
    ids = generator.tokenizer.encode("héllo wörld 🎉 a#b ## c é#")
    pieces: list[str] = []
    stream = TextStream(pieces.append, "###")
    for k in range(1, len(ids) + 1):
        stream.update(generator.tokenizer.decode(ids[:k]))
    stream.close(generator.tokenizer.decode(ids))
    assert "".join(pieces) == "héllo wörld 🎉 a#b ## c é#" and not any("\ufffd" in p for p in pieces)


def test_warpers_match_transformers():
    rng = np.random.default_rng(1)
    for temperature, top_p in [(1.0, 1.0), (0.7, 0.9), (1.3, 0.5), (0.4, 0.01), (1.0, 0.0)]:
        scores = (rng.standard_normal(422) * 3).astype(np.float32)
        scores[rng.integers(0, 422, 20)] = -np.inf  # banned tokens, as the constraint leaves them
        ref = torch.from_numpy(scores)[None]
        warpers = [TemperatureLogitsWarper(temperature), TopKLogitsWarper(50)]
        for warper in warpers + ([TopPLogitsWarper(top_p)] if top_p < 1 else []):
            ref = warper(None, ref)
        np.testing.assert_allclose(warp(scores, temperature, top_p), ref[0].numpy(), rtol=1e-6)


def test_sampling_is_seeded_and_a_tiny_top_p_is_greedy(generator, llm_build):
    prompt = generator.build_prompt("show me a red circle", False)
    run = lambda gen=generator, **kw: gen.generate(prompt, max_new_tokens=20, **kw).ids  # noqa: E731
    first = run(temperature=1.0, top_p=1.0, seed=7)
    np.random.seed(1)  # neither the global generators nor an earlier request's draws may leak in
    torch.manual_seed(1)
    run(temperature=1.0, top_p=1.0, seed=8)
    # the seed alone decides: a fresh generator over fresh engines, after other draws, answers the same
    assert run(LlmGenerator.from_engines(Engines(llm_build, "onnxruntime", threads=1)), temperature=1.0, top_p=1.0, seed=7) == first
    assert len({tuple(run(temperature=1.0, top_p=1.0, seed=s)) for s in range(4)}) > 1
    assert run(temperature=1.0, top_p=1e-6, seed=3) == run(temperature=0.0)


@pytest.mark.parametrize(
    "make, kwargs, error",
    [
        (lambda g: g.build_prompt("red " * 500, False), {}, PromptError),
        (lambda g: g.build_prompt("red circle", False), {"max_new_tokens": 500}, PromptError),
        (lambda g: g.build_prompt("red circle", False), {"required": ["smell"]}, ValueError),
        (lambda g: g.build_prompt("red circle", True), {}, ValueError),  # a media slot but no token
    ],
)
def test_refused_before_any_engine_call(generator, make: Callable, kwargs, error):
    counted, spy = spied(generator)
    with pytest.raises(error):
        counted.generate(make(counted), temperature=0.0, **kwargs)
    assert spy.calls == 0
