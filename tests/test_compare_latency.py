"""benchmarks/compare_latency.py in its quick mode on the tiny build: it runs and writes valid results."""
import json

from benchmarks.compare_latency import CallLog, breakdown, main, percentiles
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


def test_quick_run_writes_json_markdown_and_charts(tiny_build, tmp_path):
    out = tmp_path / "latency.json"
    assert main(["--engines", str(tiny_build[0]), "--backends", "torch,onnxruntime,tensorrt", "--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["backends"] == ["torch", "onnxruntime"] and "tensorrt" in result["unavailable"]
    assert len(result["components"]) == 13 and {r["route"] for r in result["routes"]} == set(ROUTES)
    for row in result["components"]:
        assert row["backends"]["torch"]["ratio_to_torch"] == 1.0 and row["backends"]["onnxruntime"]["median_ms"] > 0
    image = next(r for r in result["routes"] if r["route"] == "text_to_image")["backends"]["onnxruntime"]
    assert image["breakdown_s"]["image_denoise"] > 0 and image["ratio_to_reference"] > 0
    assert result["decode"]["onnxruntime"]["tokens_per_s"] > 0 and result["machine"]["cores"] >= 1
    assert out.with_suffix(".md").read_text().startswith("# Latency")
    assert (tmp_path / "latency_routes.png").read_bytes()[:4] == b"\x89PNG"
