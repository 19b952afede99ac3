"""int8 post-training quantization for the CPU engines, calibrated on real inputs.

- `calibration_requests` + `record_calibration`: requests of every task drawn (seeded) from the
  synthetic world's training split, run through the pipeline on an fp32 build; every engine call's
  feeds are recorded (the encoders' clips, the LLM's prefill and decode steps with their KV cache,
  the projectors' signal hidden states, every denoising step's latents). `pick_samples` draws a
  seeded subset per component; `save_samples`/`load_samples` keep them (safetensors) beside the
  engine, so a rebuild is reproducible and the calibration set is part of the build.
- `quantize_openvino`: NNCF post-training quantization of an ONNX into an OpenVINO IR.
- `quantize_onnxruntime`: ONNX Runtime static QDQ quantization of the convolutions and matmuls.
- `compress_openvino`: NNCF weight-only int8 of an ONNX into an OpenVINO IR, with no calibration.

Both take the layers to keep in fp32 (`excluded`, ONNX node names from `quantizable_layers`): the
build's per-layer fallback (export/build_engines.py) leaves out the layers nearest an output that
int8 breaks. The same samples give the same quantized model (both are deterministic given the data),
and the samples come from the seed.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from runtime.backends import Engines
from runtime.request import Request

Feeds = dict[str, np.ndarray]
SAMPLES_FILE = "calibration.safetensors"
SAMPLES_PER_COMPONENT = 32  # NNCF's own default subset is 300; the tiny engines' range settles well before 32
REQUESTS_PER_TASK = 8
# NNCF's transformer model type quantizes only the inputs of the weighted ops (matmuls, convolutions),
# with SmoothQuant: on every tiny component it keeps more than the default, which also quantizes the
# additions and normalisations (the SD VAE decoder: cosine 0.997 against 0.959, and 0.991 with every
# non-weighted op ignored).
# the ops int8 computes: convolutions and the attention/MLP projections (and attention's own matmuls)
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def calibration_requests(world: Path, seed: int, per_task: int = REQUESTS_PER_TASK) -> list[Request]:
    """`per_task` requests of each evaluation task from the world's training split (never held out),
    drawn by `seed`: X→text asks to describe a training medium, text→X asks for a training caption."""
    from train import synthetic
    from train.data.records import read_records
    from train.evaluate import TASKS

    rng = np.random.default_rng(seed)
    records = [r for r in read_records(world / synthetic.RECORDS_FILE) if r.split == "train"]
    requests = []
    for given, asked in TASKS.values():
        pool = [r for r in records if (given in r.inputs if given else r.target == asked and not r.inputs)]
        if not pool:
            raise ValueError(f"{world}: no training record for {given or 'text'} -> {asked or 'text'} to calibrate on")
        for i in rng.choice(len(pool), size=min(per_task, len(pool)), replace=False):
            r = pool[int(i)]
            if given:
                requests.append(Request(synthetic.DESCRIBE[given][0], files={given: world / r.inputs[given]}, seed=seed))
            else:
                requests.append(Request(synthetic.REQUEST[asked][0].format(r.caption), output=asked, seed=seed))
    return requests


class RecordingEngines:
    """An `Engines` whose engines keep a copy of every call's feeds, per component."""

    def __init__(self, engines: Engines) -> None:
        self.engines, self.build = engines, engines.build
        self.calls: dict[str, list[Feeds]] = {}

    def __getitem__(self, name: str) -> Any:
        engine, calls = self.engines[name], self.calls.setdefault(name, [])

        class Recorded:
            input_names, output_names = engine.input_names, engine.output_names

            def run(self, feeds: Feeds) -> Feeds:
                calls.append({n: np.array(feeds[n]) for n in engine.input_names})
                return engine.run(feeds)

        return Recorded()


def record_calibration(fp32_build: Path, requests: list[Request], progress: bool = True) -> dict[str, list[Feeds]]:
    """Every engine call's feeds while an fp32 onnxruntime build answers `requests`, per component."""
    from runtime.pipeline import Any2AnyPipeline

    recorder: list[RecordingEngines] = []
    pipeline = Any2AnyPipeline(fp32_build, "onnxruntime", wrap=lambda e: recorder.append(RecordingEngines(e)) or recorder[0])
    for req in tqdm(requests, desc="calibration requests", unit="request", disable=not progress):
        pipeline(req)
    return recorder[0].calls


def pick_samples(calls: list[Feeds], seed: int, count: int = SAMPLES_PER_COMPONENT) -> list[Feeds]:
    """`count` of a component's recorded calls, drawn by `seed`, in call order."""
    if not calls:
        return []
    chosen = np.random.default_rng(seed).choice(len(calls), size=min(count, len(calls)), replace=False)
    return [calls[int(i)] for i in sorted(chosen)]


def save_samples(samples: list[Feeds], path: Path) -> Path:
    save_file({f"{i:04d}/{n}": np.ascontiguousarray(v) for i, feeds in enumerate(samples) for n, v in feeds.items()}, str(path))
    return path


def load_samples(path: Path) -> list[Feeds]:
    flat = load_file(str(path))
    samples: dict[int, Feeds] = {}
    for key in sorted(flat):
        index, name = key.split("/", 1)
        samples.setdefault(int(index), {})[name] = flat[key]
    return [samples[i] for i in sorted(samples)]


def quantizable_layers(onnx: Path) -> list[str]:
    """The names of `onnx`'s nodes int8 would compute (`QUANTIZED_OPS`), in graph (topological) order."""
    import onnx as onnx_lib

    graph = onnx_lib.load(str(onnx), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in QUANTIZED_OPS]


def quantize_openvino(onnx: Path, samples: list[Feeds], out: Path, excluded: list[str]) -> Path:
    """NNCF post-training int8 quantization of `onnx`, calibrated on `samples`, saved as an OpenVINO IR
    at `out` (.xml beside its .bin); the `excluded` ONNX nodes stay fp32. Activation ranges are the
    samples' min and max (NNCF's default averages each sample's, which clips the rare large
    activations a tiny LLM's hidden states depend on: its hidden-state cosine drops from 0.985 to 0.957)."""
    import nncf
    import openvino as ov
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    model = ov.Core().read_model(str(onnx))
    # OpenVINO names a Gemm's matmul after the node, with its bias split off
    names = [*excluded, *(f"{n}/WithoutBiases" for n in excluded)]
    quantized = nncf.quantize(
        model,
        nncf.Dataset(samples),
        subset_size=len(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(names=names, validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX),
    )
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return out


def compress_openvino(onnx: Path, out: Path) -> Path:
    """NNCF weight-only int8 (per output channel, asymmetric) of every convolution and matmul weight of
    `onnx`, saved as an OpenVINO IR at `out`; activations stay in the compiled model's precision. It
    runs no inference, so it fits where calibrating does not: NNCF's post-training quantization of
    ZeroScope's full-width UNet held 23.9 GB on the 24 GB machine and was killed."""
    import nncf
    import openvino as ov

    compressed = nncf.compress_weights(ov.Core().read_model(str(onnx)), mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(compressed, str(out), compress_to_fp16=False)
    return out


def _reader(samples: list[Feeds]) -> Any:
    """ONNX Runtime's CalibrationDataReader over recorded feeds."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(samples)

        def get_next(self) -> Feeds | None:
            return next(self.samples, None)

    return Reader()


def quantize_onnxruntime(onnx: Path, samples: list[Feeds], out: Path, excluded: list[str]) -> Path:
    """ONNX Runtime static int8 quantization (QDQ, per-channel symmetric weights, asymmetric uint8
    activations, min-max calibration on `samples`) of `onnx`'s convolutions and matmuls into `out`;
    the `excluded` nodes stay fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from export.onnx_export import EXTERNAL_DATA_BYTES, onnx_bytes

    quantize_static(
        str(onnx),
        str(out),
        _reader(samples),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        # a full-width graph (and its calibration copy) passes protobuf's 2 GiB: weights beside it
        use_external_data_format=onnx_bytes(onnx) > EXTERNAL_DATA_BYTES,
    )
    return out


QUANTIZERS: dict[str, Callable[[Path, list[Feeds], Path, list[str]], Path]] = {
    "openvino": quantize_openvino,
    "onnxruntime": quantize_onnxruntime,
}
