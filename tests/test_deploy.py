"""The deployment beyond this machine: a model repository that moves with its engines (served by a
real Triton after the move), the container recipe (hadolint) and the Kubernetes manifests
(kubernetes-validate, offline schemas). Building the image and running a cluster cannot be done here."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from runtime.pipeline import Any2AnyPipeline
from triton_repo.build_repo import build_repo, parse_instances
from triton_repo.client import Any2AnyClient
from triton_repo.demo import route_request
from triton_repo.serve import TritonServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
K8S = ROOT / "deploy" / "k8s"
SEED = 4
ROUTE = "text_to_image"


def _text_files(folder: Path) -> list[Path]:
    return [p for pattern in ("*.pbtxt", "*.json", "*.py") for p in folder.rglob(pattern)]


@pytest.fixture(scope="module")
def moved(tiny_build, tmp_path_factory):
    """A repository written beside a copy of the build, then the two moved together to another
    folder; the original place is gone, so nothing can still be read from there."""
    base = tmp_path_factory.mktemp("deploy")
    shutil.copytree(tiny_build[0], base / "here" / "engines" / "tiny")
    build_repo(base / "here" / "engines" / "tiny", base / "here" / "triton_models", parse_instances("llm=1,media=1"))
    build_repo(base / "here" / "engines" / "tiny", base / "here" / "native", native=True)
    (base / "here").rename(base / "there")
    return base


def test_the_moved_repository_names_no_old_path(moved):
    for folder in ("triton_models", "native"):
        for f in _text_files(moved / "there" / folder):
            assert str(moved / "here") not in f.read_text(), f
    record = json.loads((moved / "there" / "triton_models" / "repo.json").read_text())
    assert record["engines"] == os.path.join("..", "engines", "tiny")
    link = moved / "there" / "native" / "sd_unet" / "1"
    assert not os.path.isabs(os.readlink(link)) and (link / "model.opt.onnx").is_file()


def test_the_moved_repository_serves_the_same_answers(moved, tiny_build, sample_inputs):
    req = route_request(ROUTE, sample_inputs, SEED, steps=2)
    want = Any2AnyPipeline(tiny_build[0], "onnxruntime")(req)
    with TritonServer(moved / "there" / "triton_models", timeout_s=150, metrics_port=0) as server:
        with Any2AnyClient(server.grpc_url, timeout_s=120) as client:
            got = client.infer(req)
        http = f"http://{server.http_url}"
        for probe in ("/v2/health/ready", "/v2/health/live"):  # what the Kubernetes probes ask
            assert urllib.request.urlopen(http + probe, timeout=10).status == 200
        metrics = urllib.request.urlopen(f"http://{server.address}:{server.metrics_port}/metrics", timeout=10).read().decode()
    assert got.token_ids == want.token_ids and got.text == want.text
    assert got.media.keys() == want.media.keys() == {"image"}
    np.testing.assert_array_equal(got.media["image"], want.media["image"])
    assert re.search(r'nv_inference_request_success\{model="any2any",version="1"\} 1', metrics)


def test_a_mount_point_is_named_as_given_and_must_be_absolute(tiny_build, tmp_path):
    build_repo(tiny_build[0], tmp_path / "mounted", engines_at="/engines/tiny")
    assert json.loads((tmp_path / "mounted" / "repo.json").read_text())["engines"] == "/engines/tiny"
    assert 'string_value: "/engines/tiny"' in (tmp_path / "mounted" / "llm" / "config.pbtxt").read_text()
    with pytest.raises(ValueError, match="--engines-at must be an absolute path"):
        build_repo(tiny_build[0], tmp_path / "relative", engines_at="engines/tiny")


def test_a_repository_for_a_backend_the_build_cannot_serve_is_refused(tiny_build, tmp_path):
    with pytest.raises(RuntimeError, match="holds engines for onnxruntime: they serve onnxruntime, onnxruntime-cuda, onnxruntime-trt"):
        build_repo(tiny_build[0], tmp_path / "trt", backend="tensorrt")
    with pytest.raises(ValueError, match="--backend is one of onnxruntime, onnxruntime-cuda, onnxruntime-trt, tensorrt, openvino, not 'torch'"):
        build_repo(tiny_build[0], tmp_path / "torch", backend="torch")


def test_the_dockerfile_is_on_a_pinned_ngc_triton_and_lints_clean():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3$", dockerfile, re.M)
    lint = subprocess.run([str(BIN / "hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0 and lint.stdout == "", lint.stdout + lint.stderr
    broken = subprocess.run([str(BIN / "hadolint"), "-"], input="FROM ubuntu\nRUN pip install numpy\n", capture_output=True, text=True, timeout=60)
    assert broken.returncode != 0 and "DL3006" in broken.stdout  # the linter does find things


def _third_party_imports(paths: list[Path]) -> set[str]:
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names}


def test_the_image_installs_what_the_served_code_imports_pinned():
    wanted = [line.strip() for line in (ROOT / "deploy" / "requirements-server.txt").read_text().splitlines() if line.strip() and not line.startswith("#")]
    pins = {line.split("==")[0].lower() for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line}
    assert [name for name in wanted if name.lower() not in pins] == []
    served = [*(ROOT / "runtime").glob("*.py"), *(ROOT / "triton_repo" / "models").glob("*.py")]
    served += [ROOT / "triton_repo" / name for name in ("served.py", "protocol.py")]
    provided = {"PIL": "pillow", "onnxruntime": "onnxruntime-gpu"}
    # the container's own, the TensorRT plans' bindings (NGC's image), and the torch backend's training code (not served)
    elsewhere = {"triton_python_backend_utils", "tensorrt", "train", "runtime", "triton_repo"}
    missing = {m for m in _third_party_imports(served) - elsewhere if provided.get(m, m) not in wanted}
    assert missing == set()


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(path)], capture_output=True, text=True, timeout=120)


def _render(overlay: str, tmp_path: Path) -> tuple[Path, list[dict]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (for kustomize) is not installed; the base manifests are still validated one by one")
    rendered = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=120, check=True).stdout
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered)
    return path, list(yaml.safe_load_all(rendered))


@pytest.mark.parametrize("name", ["base/volume.yaml", "base/deployment.yaml", "base/service.yaml", "loader.yaml"])
def test_each_manifest_validates(name):
    done = _validate(K8S / name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_validator_refuses_a_broken_manifest(tmp_path):
    doc = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    doc["spec"]["replicas"] = "two"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(doc))
    assert _validate(tmp_path / "broken.yaml").returncode != 0


@pytest.mark.parametrize("overlay", ["base", "gpu"])
def test_the_kustomized_deployment_validates_and_probes_triton(overlay, tmp_path):
    path, docs = _render(overlay, tmp_path)
    done = _validate(path)
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service", "PersistentVolumeClaim"}
    deployment = kinds["Deployment"]["spec"]
    assert deployment["replicas"] > 1
    pod = deployment["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert {p["name"] for p in kinds["Service"]["spec"]["ports"]} == set(ports)
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)["persistentVolumeClaim"]["claimName"]
    assert claim == kinds["PersistentVolumeClaim"]["metadata"]["name"]
    gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
    assert gpus == (1 if overlay == "gpu" else None)
