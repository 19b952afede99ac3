"""benchmarks/compare_latency.py in its quick mode on the tiny build: it runs and writes valid results."""
import json

import pytest

from benchmarks import compare_latency
from benchmarks.compare_latency import CallLog, breakdown, interleaved, main, percentiles
from train.demo import ROUTES


def test_percentiles_and_breakdown_rules():
    stats = percentiles([0.001] * 9 + [0.011])
    assert stats["median_ms"] == 1.0 and stats["runs"] == 10 and stats["p99_ms"] > stats["p90_ms"] > 1.0
    config = {"decoders": {"image": {"name": "sd"}, "audio": {"name": "audioldm"}}}
    log = CallLog([("imagebind_vision", 0.0, 0.1), ("llm", 0.1, 0.2), ("llm", 0.3, 0.05), ("llm", 0.35, 0.05),
                   ("projector_image", 0.4, 0.01), ("sd_unet", 0.41, 0.3), ("sd_unet", 0.71, 0.3), ("sd_vae_decoder", 1.01, 0.1)])
    stages = breakdown(log, 0.0, config)
    assert stages["encode"] == 0.1 and stages["prefill"] == 0.2 and abs(stages["decode"] - 0.1) < 1e-12
    assert stages["decode_tokens"] == 2 and abs(stages["time_to_first_token"] - 0.3) < 1e-12
    assert abs(stages["image_denoise"] - 0.6) < 1e-12 and stages["image_vae_decoder"] == 0.1


def test_interleaved_times_each_call_round_robin(monkeypatch):
    """On a clock that only the calls advance: each time is its own call's and nothing else's."""
    clock, order = [0.0], []

    def call(name, seconds):
        def run():
            order.append(name)
            clock[0] += seconds

        return run

    monkeypatch.setattr(compare_latency.time, "perf_counter", lambda: clock[0])
    times = interleaved({"slow": call("slow", 0.03), "fast": call("fast", 0.003)}, runs=4, warmup=1)
    assert order == ["slow", "fast"] * 5
    assert times == {"slow": [pytest.approx(0.03)] * 4, "fast": [pytest.approx(0.003)] * 4}


def test_quick_run_writes_json_markdown_and_charts(tiny_build, sample_inputs, tmp_path):
    out = tmp_path / "latency.json"
    folder = str(sample_inputs["image"].parent)  # --inputs: files written before, as a GPU machine without an MP4 encoder takes them
    argv = ["--engines", str(tiny_build[0]), "--backends", "torch,onnxruntime,tensorrt", "--quick", "--json", str(out)]
    assert main(argv + ["--inputs", folder, "--precision", "fp16"]) == 0
    result = json.loads(out.read_text())
    assert result["backends"] == ["torch", "onnxruntime"] and "tensorrt" in result["unavailable"]
    assert result["precision"] == "fp16"  # asked of the GPU backends; the CPU ones stay fp32 (test_backends_compute_in)
    # a throughput figure over the same fixed number of tokens everywhere, whenever the model would stop
    assert {d["tokens"] for d in result["decode"].values()} == {16}
    assert len(result["components"]) == 13 and {r["route"] for r in result["routes"]} == set(ROUTES)
    for row in result["components"]:
        torch_ms, ort = row["backends"]["torch"]["median_ms"], row["backends"]["onnxruntime"]
        assert torch_ms > 0 and ort["ratio_to_torch"] == pytest.approx(ort["median_ms"] / torch_ms)
    image = next(r for r in result["routes"] if r["route"] == "text_to_image")["backends"]["onnxruntime"]
    assert image["breakdown_s"]["image_denoise"] > 0 and image["ratio_to_reference"] > 0
    assert result["decode"]["onnxruntime"]["tokens_per_s"] > 0 and result["machine"]["cores"] >= 1
    assert out.with_suffix(".md").read_text().startswith("# Latency")
    assert (tmp_path / "latency_routes.png").read_bytes()[:4] == b"\x89PNG"


def test_decode_throughput_counts_exactly_the_asked_tokens(tiny_build):
    from benchmarks.compare_latency import engine_decode
    from benchmarks.machine import open_pipeline

    gen = open_pipeline(tiny_build[0], "onnxruntime", threads=1).llm
    calls = []
    run = gen.engine.run
    gen.engine.run = lambda feeds: (calls.append(feeds["input_ids"].shape[1]), run(feeds))[1]
    prompt = list(gen.build_prompt("hi", False).ids)
    assert engine_decode(gen, prompt, 5) == 5 and calls == [len(prompt), 1, 1, 1, 1, 1]


def test_missing_sample_inputs_are_named(tmp_path):
    from train.demo import existing_sample_inputs

    (tmp_path / "image.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="audio.wav.*video.mp4"):
        existing_sample_inputs(tmp_path)
