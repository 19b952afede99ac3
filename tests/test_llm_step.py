"""LlmStep: the merged LLM as one prefill/decode step, against the peft model, HF generate and ONNX Runtime."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from peft import PeftModel
from torch.export import Dim

from train.llm_step import LlmStep, empty_cache, merged_llm
from train.model import load_checkpoint

INPUTS = ["input_ids", "media_token", "media_position", "past_keys", "past_values"]
OUTPUTS = ["logits", "hidden", "present_keys", "present_values"]
# the trained model's logits reach about 10, where float32 rounds at 1e-6 and a 128-wide dot product
# accumulates a few of those: an absolute 1e-5 alone failed by 5% on one logit of 550
LOGITS = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_checkpoint(tiny_dir)


@pytest.fixture(scope="module")
def step(model):
    return LlmStep(merged_llm(model))


def step_args(config, batch, seq, past, positions, seed=0):
    """Random ids, media token and past of the given sizes; `positions` is the media position per row."""
    llm = config["llm"]
    gen = torch.Generator().manual_seed(seed)
    keys, values = empty_cache(config, batch)
    cache_shape = (*keys.shape[:3], past, keys.shape[4])
    return (
        torch.randint(0, llm["vocab_size"], (batch, seq), generator=gen),
        torch.randn(batch, llm["hidden_size"], generator=gen),
        torch.tensor(positions),
        torch.randn(cache_shape, generator=gen),
        torch.randn(cache_shape, generator=gen),
    )


def with_media(model, ids, token, positions):
    """The reference pipeline's prompt embeddings: the media token replaces its row."""
    embeds = model.embed_tokens(ids).clone()
    for row, pos in enumerate(positions):
        if pos >= 0:
            embeds[row, pos] = token[row]
    return embeds


@pytest.fixture(scope="module")
def onnx_path(step, model, tmp_path_factory):
    max_len = model.config["llm"]["max_position_embeddings"]
    # Example sizes above 1: torch.export specializes dimensions whose example size is 0 or 1.
    args = step_args(model.config, batch=2, seq=3, past=4, positions=[1, -1])
    batch, seq, past = Dim("batch", min=1), Dim("seq", min=1, max=max_len), Dim("past", min=0, max=max_len - 1)
    path = tmp_path_factory.mktemp("onnx") / "llm_step.onnx"
    torch.onnx.export(
        step,
        args,
        str(path),
        dynamo=True,
        input_names=INPUTS,
        output_names=OUTPUTS,
        dynamic_shapes={
            "input_ids": {0: batch, 1: seq},
            "media_token": {0: batch},
            "media_position": {0: batch},
            "past_keys": {1: batch, 3: past},
            "past_values": {1: batch, 3: past},
        },
    )
    return path


@pytest.fixture(scope="module")
def session(onnx_path):
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


@torch.no_grad()
def test_merged_llm_matches_the_adapter_and_leaves_the_model_unchanged(model):
    before = {k: v.clone() for k, v in model.llm.state_dict().items()}
    merged = merged_llm(model)
    ids = torch.tensor([[1, 5, 7, 300, 42, 9]])
    assert not any("lora_" in k for k in merged.state_dict())
    assert not merged.training
    torch.testing.assert_close(merged(input_ids=ids).logits, model.llm(input_ids=ids).logits, **LOGITS)
    after = model.llm.state_dict()
    assert isinstance(model.llm, PeftModel) and before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with model.llm.disable_adapter():
        base = model.llm(input_ids=ids).logits
    assert not torch.allclose(base, model.llm(input_ids=ids).logits, atol=1e-3)


@pytest.mark.parametrize("k", [0, 4, 8])
@torch.no_grad()
def test_prefill_with_media_matches_the_reference(model, step, k):
    ids, token, positions, keys, values = step_args(model.config, 1, 9, 0, [k])
    logits, hidden, present_keys, _ = step(ids, token, positions, keys, values)
    ref = model.llm(inputs_embeds=with_media(model, ids, token, [k]), output_hidden_states=True)
    torch.testing.assert_close(hidden, ref.hidden_states[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, ref.logits[:, -1], **LOGITS)
    assert present_keys.shape == (*keys.shape[:3], 9, keys.shape[4])


@torch.no_grad()
def test_media_position_minus_one_leaves_the_embeddings(model, step):
    ids, token, positions, keys, values = step_args(model.config, 2, 6, 0, [-1, -1])
    logits, hidden, _, _ = step(ids, token, positions, keys, values)
    ref = model.llm(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(hidden, ref.hidden_states[-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, ref.logits[:, -1], **LOGITS)


@torch.no_grad()
def test_prefill_then_decode_matches_one_prefill(model, step):
    n, m = 5, 4
    ids, token, positions, keys, values = step_args(model.config, 2, n + m, 0, [1, -1])
    full_logits, full_hidden, full_keys, full_values = step(ids, token, positions, keys, values)
    _, hidden, keys, values = step(ids[:, :n], token, positions, keys, values)
    hiddens = [hidden]
    for i in range(n, n + m):
        logits, hidden, keys, values = step(ids[:, i : i + 1], token, torch.tensor([-1, -1]), keys, values)
        torch.testing.assert_close(logits, step.llm.lm_head(full_hidden[:, i]), **LOGITS)
        hiddens.append(hidden)
    torch.testing.assert_close(torch.cat(hiddens, dim=1), full_hidden, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, full_logits, **LOGITS)
    torch.testing.assert_close(keys, full_keys, atol=1e-5, rtol=0)
    torch.testing.assert_close(values, full_values, atol=1e-5, rtol=0)


@torch.no_grad()
def test_greedy_loop_reproduces_generate(model, step):
    new_tokens = 10
    ids, token, positions, keys, values = step_args(model.config, 1, 8, 0, [2], seed=3)
    embeds = with_media(model, ids, token, [2])
    expected = model.llm.generate(
        inputs_embeds=embeds,
        attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
        do_sample=False,
        max_new_tokens=new_tokens,
        pad_token_id=model.tokenizer.unk_token_id,
        eos_token_id=[],  # None would fall back to the generation config's EOS and could stop early
    )[0].tolist()
    assert len(expected) == new_tokens
    logits, _, keys, values = step(ids, token, positions, keys, values)
    got = []
    for _ in range(new_tokens):
        got.append(int(logits.argmax(-1)))
        logits, _, keys, values = step(torch.tensor([[got[-1]]]), token, torch.tensor([-1]), keys, values)
    assert got == expected


def test_onnx_export_is_a_valid_model(onnx_path, model):
    onnx.checker.check_model(str(onnx_path))
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    assert [i.name for i in graph.input] == INPUTS and [o.name for o in graph.output] == OUTPUTS
    past_keys = graph.input[3].type.tensor_type.shape.dim
    assert past_keys[0].dim_value == model.config["llm"]["num_hidden_layers"] and past_keys[3].dim_param


# None: as many as max_position_embeddings leaves, to check the declared bounds hold.
@pytest.mark.parametrize(
    "batch,seq,past",
    [(1, 7, 0), (2, 1, 9), (1, 1, 0), (1, None, 0), (1, 1, None)],
    ids=["prefill", "decode", "first-token", "longest-prefill", "longest-past"],
)
@torch.no_grad()
def test_onnx_matches_torch(model, step, session, batch, seq, past):
    max_len = model.config["llm"]["max_position_embeddings"]
    seq = max_len - past if seq is None else seq
    past = max_len - seq if past is None else past
    args = step_args(model.config, batch, seq, past, [min(2, seq - 1)] + [-1] * (batch - 1), seed=seq + past)
    got = session.run(OUTPUTS, {name: a.numpy() for name, a in zip(INPUTS, args)})
    for name, ours, ref in zip(OUTPUTS, got, step(*args)):
        np.testing.assert_allclose(ours, ref.numpy(), atol=1e-4, rtol=1e-4, err_msg=name)
