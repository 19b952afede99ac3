"""The OpenAI-compatible API as a user starts it (`python triton_repo/openai_api.py --engines BUILD`),
on a real Triton over loopback, driven by the official `openai` client. Every answer is checked
against the deployment's own client (`Any2AnyClient.chat`) on the same Triton: the HTTP layer must
carry the conversation and the settings unchanged, and hand back the same text, ids and media."""
import base64
import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import openai
import psutil
import pytest
import soundfile
from PIL import Image

from runtime.conversation import Conversation, Medium, Turn
from front_end import start_front_end
from triton_repo.client import Any2AnyClient
from triton_repo.serve import free_port

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "serving-chat.md"
DOC_ADDRESS = "127.0.0.1:8080"  # the address the document's examples use


@pytest.fixture(scope="module")
def api(tiny_build, tmp_path_factory):
    """The API process, its base URL, the gRPC address of the Triton it started, and the folder
    it reads local media from."""
    tmp = tmp_path_factory.mktemp("openai_api")
    local = tmp / "local"
    local.mkdir()
    port = free_port()
    log = (tmp / "api.log").open("w+")
    argv = [sys.executable, str(ROOT / "triton_repo" / "openai_api.py"), "--engines", str(tiny_build[0]), "--port", str(port),
            "--allowed-local-media-path", str(local)]
    base = f"http://127.0.0.1:{port}/v1"
    proc, grpc = start_front_end(argv, f"{base}/models", log)
    yield {"base": base, "grpc": grpc, "proc": proc, "local": local, "log": log}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)


@pytest.fixture(scope="module")
def oai(api):
    return openai.OpenAI(base_url=api["base"], api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def direct(api):
    with Any2AnyClient(api["grpc"], 300) as c:
        yield c


def data_url(path, mime):
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


def image_message(url, text="describe this image"):
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]}


def test_models_lists_the_one_model(oai):
    assert [m.id for m in oai.models.list().data] == ["any2any"]


def test_an_image_as_a_data_url_is_described_then_a_follow_up_is_answered(oai, direct, sample_inputs):
    image = sample_inputs["image"]
    messages = [image_message(data_url(image, "image/png"))]
    first = oai.chat.completions.create(model="any2any", messages=messages)
    conversation = Conversation((Turn.user("describe this image", [Medium("image", image)]),))
    want = direct.chat(conversation)
    message = first.choices[0].message
    assert first.object == "chat.completion" and first.choices[0].finish_reason == "stop"
    assert message.content == want.text and message.model_extra["token_ids"] == want.token_ids and want.text
    assert first.usage.prompt_tokens == want.prompt_tokens > 0 and first.usage.completion_tokens == len(want.token_ids)
    assert first.usage.total_tokens == want.prompt_tokens + len(want.token_ids) and first.usage.prompt_tokens_details.cached_tokens == 0

    # The follow-up, as an OpenAI client sends it: the answer's text back as the assistant turn ...
    question = {"role": "user", "content": "what colour is the background?"}
    plain = oai.chat.completions.create(model="any2any", messages=[*messages, {"role": "assistant", "content": message.content}, question])
    want_plain = direct.chat(conversation.then(Turn.assistant(want.text)).then(Turn.user(question["content"])))
    assert plain.choices[0].message.content == want_plain.text and want_plain.text
    # ... and with the ids the model generated, which make the history the model's own tokens.
    exact = {"role": "assistant", "content": message.content, "token_ids": message.model_extra["token_ids"]}
    follow = oai.chat.completions.create(model="any2any", messages=[*messages, exact, question])
    want_follow = direct.chat(conversation.then(want.turn()).then(Turn.user(question["content"])))
    assert follow.choices[0].message.content == want_follow.text and "background" in want_follow.text


def test_a_streamed_answer_comes_as_openai_chunks_then_done(oai, api, sample_inputs):
    messages = [image_message(data_url(sample_inputs["image"], "image/png"))]
    whole = oai.chat.completions.create(model="any2any", messages=messages)
    chunks = list(oai.chat.completions.create(model="any2any", messages=messages, stream=True))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces).strip() == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop" and all(c.usage is None for c in chunks)
    # asked for, the usage comes as OpenAI sends it: one last chunk without choices
    counted = list(oai.chat.completions.create(model="any2any", messages=messages, stream=True, stream_options={"include_usage": True}))
    assert [bool(c.choices) for c in counted[-2:]] == [True, False] and counted[-1].usage == whole.usage
    # on the wire: server-sent events ending with OpenAI's terminator
    body = {"model": "any2any", "messages": messages, "stream": True}
    with httpx.stream("POST", f"{api['base']}/chat/completions", json=body, timeout=300) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    r = httpx.post(f"{api['base']}/chat/completions", json={**body, "stream": False, "stream_options": {"include_usage": True}}, timeout=60)
    assert r.status_code == 400 and "only allowed when stream is true" in r.json()["error"]["message"]


def test_an_image_answer_is_a_png_in_the_media_field(oai, direct):
    prompt = "show me a red circle in the centre of a blue background"
    got = oai.chat.completions.create(model="any2any", messages=[{"role": "user", "content": prompt}],
                                      modalities=["text", "image"], extra_body={"steps": 2})
    want = direct.chat(Conversation((Turn.user(prompt),)), output="image", steps=2)
    [media] = got.choices[0].message.model_extra["media"]
    assert media["modality"] == "image" and media["mime_type"] == "image/png"
    picture = Image.open(io.BytesIO(base64.b64decode(media["data"])))
    assert picture.format == "PNG"
    np.testing.assert_array_equal(np.asarray(picture.convert("RGB")), want.media["image"])


def test_an_audio_answer_is_a_wav_in_message_audio(oai, direct):
    prompt = "make the sound of a bell"
    got = oai.chat.completions.create(model="any2any", messages=[{"role": "user", "content": prompt}],
                                      modalities=["text", "audio"], audio={"format": "wav", "voice": "alloy"}, extra_body={"steps": 2})
    want = direct.chat(Conversation((Turn.user(prompt),)), output="audio", steps=2)
    audio = got.choices[0].message.audio
    assert audio.transcript == want.text == got.choices[0].message.content and audio.id
    wave, rate = soundfile.read(io.BytesIO(base64.b64decode(audio.data)), dtype="float32")
    assert soundfile.info(io.BytesIO(base64.b64decode(audio.data))).format == "WAV"
    assert rate == direct.media_meta()["audio"]["sample_rate"] and wave.shape == want.media["audio"].shape
    np.testing.assert_allclose(wave, want.media["audio"], atol=1 / 2**14)  # 16-bit PCM


def test_a_local_file_is_read_only_under_the_allowed_folder(oai, api, sample_inputs, tmp_path):
    inside = api["local"] / "picture.png"
    inside.write_bytes(sample_inputs["image"].read_bytes())
    by_path = oai.chat.completions.create(model="any2any", messages=[image_message(inside.as_uri())])
    by_data = oai.chat.completions.create(model="any2any", messages=[image_message(data_url(inside, "image/png"))])
    assert by_path.choices[0].message.content == by_data.choices[0].message.content
    with pytest.raises(openai.BadRequestError, match="outside --allowed-local-media-path"):
        oai.chat.completions.create(model="any2any", messages=[image_message(sample_inputs["image"].resolve().as_uri())])


@pytest.mark.parametrize(
    "content, message",
    [
        ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@not base64@@"}}], "not valid base64"),
        ([{"type": "image_url", "image_url": {"url": "data:image/png,plain"}}], "not a base64 data URL"),
        ([{"type": "image_url", "image_url": {"url": "data:text/plain;base64,aGk="}}], "MIME type 'text/plain' is not a image"),
        ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}], "fetches nothing from the network"),
        ([{"type": "input_audio", "input_audio": {"data": "aGk=", "format": "aiff"}}], "'aiff' is not one of wav"),
        ([{"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}},
          {"type": "text", "text": "x"}], "messages0_content0_image.png: cannot decode image"),
        ([{"type": "text", "text": "   "}], "empty prompt"),
        ([{"type": "refusal", "refusal": "no"}], "'refusal' is not one of text"),
    ],
)
def test_bad_input_is_refused_with_400_and_openai_error_json(content, message, oai, direct):
    with pytest.raises(openai.BadRequestError) as refused:
        oai.chat.completions.create(model="any2any", messages=[{"role": "user", "content": content}])
    error = refused.value.body
    assert refused.value.status_code == 400 and message in error["message"], error
    assert error["type"] == "invalid_request_error" and set(error) == {"message", "type", "param", "code"}
    assert oai.chat.completions.create(model="any2any", messages=[{"role": "user", "content": "hi"}], max_tokens=4).choices


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"messages": [{"role": "user", "content": "hi"}], "tools": []}, 400, "unsupported field 'tools'"),
        ({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}, 400, "no system prompt"),
        ({"messages": [{"role": "user", "content": "hi"}], "modalities": ["image", "audio"]}, 400, "one output medium"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n: "),
        ({"messages": [{"role": "user", "content": "hi"}], "steps": 0}, 400, "--steps must be at least 1"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 99}, 400, "limit max_temperature"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "where a user turn belongs"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}, 404, "model 'gpt-4o' does not exist"),
    ],
)
def test_refusals_of_the_body_have_openai_error_json(body, status, message, api):
    for stream in (False, True):  # a stream refused before it starts is a plain error answer
        r = httpx.post(f"{api['base']}/chat/completions", json={"model": "any2any", **body, "stream": stream}, timeout=120)
        assert r.status_code == status and message in r.json()["error"]["message"], (stream, r.text)
    r = httpx.post(f"{api['base']}/chat/completions", content=b"{not json", headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def _doc_blocks(language):
    from doc_commands import fenced

    return fenced(DOC, (language,))


def test_the_documented_openai_client_examples_run(api, sample_inputs, tmp_path):
    """docs/serving-chat.md's `py` blocks, run against this server from a folder where the demo ran."""
    inputs = tmp_path / "outputs" / "demo" / "inputs"
    inputs.mkdir(parents=True)
    for path in sample_inputs.values():
        (inputs / path.name).write_bytes(path.read_bytes())
    blocks = _doc_blocks("py")
    assert blocks
    for block in blocks:
        code = block.replace(DOC_ADDRESS, api["base"].removeprefix("http://").removesuffix("/v1"))
        run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{block}\n{run.stderr[-3000:]}"


def test_the_documented_curl_exchange_runs(api, sample_inputs, tmp_path):
    """docs/serving-chat.md's curl commands, run by bash against this server."""
    inputs = tmp_path / "outputs" / "demo" / "inputs"
    inputs.mkdir(parents=True)
    for path in sample_inputs.values():
        (inputs / path.name).write_bytes(path.read_bytes())
    blocks = [b for b in _doc_blocks("bash") if "curl" in b]
    assert blocks
    for block in blocks:
        script = "set -euo pipefail\n" + block.replace(DOC_ADDRESS, api["base"].removeprefix("http://").removesuffix("/v1"))
        run = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"{block}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
        for line in filter(None, run.stdout.splitlines()):
            if line.startswith("{"):
                assert "error" not in json.loads(line), line


def test_sigterm_stops_the_api_and_the_triton_it_started(api):
    proc = api["proc"]
    children = psutil.Process(proc.pid).children(recursive=True)
    assert any("tritonserver" in c.name() for c in children)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    api["log"].seek(0)
    assert api["log"].read().rstrip().endswith("stopped")
