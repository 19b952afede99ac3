"""benchmarks/op_profile.py on the tiny build: both profilers read, attention lined up on both sides."""
import json

from benchmarks.op_profile import ATTENTION, main, op_group


def test_attention_kernels_of_both_libraries_share_one_group():
    names = ["aten::_scaled_dot_product_flash_attention_for_cpu", "aten::scaled_dot_product_attention", "MultiHeadAttention", "Attention"]
    assert {op_group(n) for n in names} == {ATTENTION}
    assert op_group("aten::mkldnn_convolution") == "mkldnn_convolution" and op_group("Conv") == "Conv"


def test_unet_profile_on_both_backends(tiny_build, tmp_path, capsys):
    out = tmp_path / "op_profile.json"
    assert main(["--engines", str(tiny_build[0]), "--component", "sd_unet", "--runs", "2", "--threads", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for name, backend in result["backends"].items():
        assert backend["median_ms"] > 0 and backend["attention_ms"] > 0, name
        assert abs(sum(backend["ops_ms"].values()) - backend["profiled_ms"]) < 1e-6
    assert "Conv" in result["backends"]["onnxruntime"]["ops_ms"] and "mkldnn_convolution" in result["backends"]["torch"]["ops_ms"]
    assert out.with_suffix(".md").read_text().startswith("# Op profile: sd_unet")
    assert main(["--engines", str(tiny_build[0]), "--component", "nope"]) == 2
    assert "'nope' is not in" in capsys.readouterr().err
