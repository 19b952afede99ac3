"""benchmarks/op_profile.py on the tiny build: both profilers read, attention lined up on both sides."""
import json

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from benchmarks.op_profile import ATTENTION, main, op_group, ort_ops, torch_ops
from runtime.backends import TorchEngine


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
    assert "Conv" in result["backends"]["onnxruntime"]["ops_ms"] and "mkldnn_convolution" in result["backends"]["torch"]["ops_ms"]
    assert out.with_suffix(".md").read_text().startswith("# Op profile: sd_unet")
    assert main(["--engines", str(tiny_build[0]), "--component", "nope"]) == 2
    assert "'nope' is not in" in capsys.readouterr().err


HEAVY, LIGHT = 512, 4  # a matrix product millions of times the work of the other op


def _two_branch_onnx(path):
    """Y = X @ W (heavy) and Z = -V (light): two branches no optimiser can fuse."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Neg", ["v"], ["z"])]
    io = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    graph = helper.make_graph(nodes, "g", [io("x", [HEAVY, HEAVY]), io("w", [HEAVY, HEAVY]), io("v", [LIGHT])],
                              [io("y", [HEAVY, HEAVY]), io("z", [LIGHT])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def _feeds():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((HEAVY, HEAVY), np.float32), "w": rng.standard_normal((HEAVY, HEAVY), np.float32),
            "v": np.ones(LIGHT, np.float32)}


def _io():
    names = {"x": [HEAVY, HEAVY], "w": [HEAVY, HEAVY], "v": [LIGHT]}
    return {"name": "two", "inputs": [{"name": n, "dtype": "float32", "shape": s} for n, s in names.items()],
            "outputs": [{"name": "y", "dtype": "float32", "shape": [HEAVY, HEAVY]}, {"name": "z", "dtype": "float32", "shape": [LIGHT]}],
            "dims": {}}


def test_ort_profile_puts_the_time_on_the_node_that_spends_it(tmp_path):
    _two_branch_onnx(tmp_path / "two.onnx")
    ops = ort_ops(tmp_path / "two.onnx", _io(), 1, _feeds(), runs=3)
    assert set(ops) == {"MatMul", "Neg"} and ops["MatMul"] > 5 * ops["Neg"] > 0


def test_torch_profile_puts_the_time_on_the_op_that_spends_it():
    class Two(torch.nn.Module):
        def forward(self, x, w, v):
            return x @ w, -v

    ops = torch_ops(TorchEngine(Two(), _io()), _feeds(), runs=3)
    assert {"mm", "neg"} <= set(ops) and ops["mm"] > 5 * ops["neg"] > 0
