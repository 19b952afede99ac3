"""The main job on the Triton deployment: engines, model repository, server, one gRPC request per route.

    python triton_repo/demo.py [--checkpoint train/checkpoints/tiny] [--engines engines/tiny] \\
        [--repo outputs/triton_repo] [--out outputs/demo] [--seed 0] [--instances ROLE=N,...]

1. builds the engines from the checkpoint (incremental: seconds when they are up to date);
2. writes the model repository for them;
3. starts tritonserver on free loopback ports (its log: OUT/tritonserver.log);
4. sends one gRPC request per route of `train.demo.ROUTES`, with the sample inputs written to
   OUT/inputs/, and saves each answer in OUT/<route>/ as the runtime CLI does;
5. stops the server, also after an error or Ctrl-C.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from tritonclient.utils import InferenceServerException

from export.build_engines import build, print_table
from runtime.cli import make_parser
from runtime.manifest import read_manifest
from runtime.request import Request
from runtime.response import write_response
from train.demo import ROUTES, write_sample_inputs
from triton_repo.build_repo import build_repo, parse_instances
from triton_repo.client import Any2AnyClient
from triton_repo.serve import ServerError, TritonServer

# The requests go one at a time: more instances than one per role would only slow the start.
DEMO_INSTANCES = "llm=1,media=1"


def route_request(route: str, files: dict[str, Path], seed: int, steps: int | None = None) -> Request:
    """The request of one `train.demo.ROUTES` entry, on the sample input files."""
    prompt, inputs, output = ROUTES[route]
    return Request(prompt, {m: files[m] for m in inputs}, output=output, seed=seed, steps=steps)


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--checkpoint", type=Path, default=Path("train/checkpoints/tiny"))
    p.add_argument("--engines", type=Path, default=Path("engines/tiny"))
    p.add_argument("--repo", type=Path, default=Path("outputs/triton_repo"))
    p.add_argument("--out", type=Path, default=Path("outputs/demo"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--instances", default=DEMO_INSTANCES, help="ROLE=N,... for build_repo.py")
    args = p.parse_args(argv)
    start = time.perf_counter()
    outcomes = build(args.checkpoint, args.engines, progress=False)
    print_table(outcomes)
    print(f"engines: {args.engines} ({time.perf_counter() - start:.1f} s)")
    models = build_repo(args.engines, args.repo, parse_instances(args.instances))
    print(f"repository: {args.repo} ({len(models)} models)")
    args.out.mkdir(parents=True, exist_ok=True)
    rate = read_manifest(args.engines).config["imagebind"]["audio"]["sample_rate"]
    files = write_sample_inputs(args.out / "inputs", rate)
    start = time.perf_counter()
    try:
        with TritonServer(args.repo, log=args.out / "tritonserver.log") as server:
            print(f"server: grpc {server.grpc_url}, ready in {time.perf_counter() - start:.1f} s")
            with Any2AnyClient(server.grpc_url) as client:
                meta = client.media_meta()
                for route in ROUTES:
                    req = route_request(route, files, args.seed)
                    began = time.perf_counter()
                    resp = client.infer(req)
                    took = time.perf_counter() - began
                    extra = {"prompt": req.prompt, "seed": req.seed, "route": route, "backend": "triton", "num_tokens": len(resp.token_ids)}
                    body = write_response(args.out / route, resp.text, resp.media, meta, extra)
                    print(f"{route:15s} {took:5.2f}s text={resp.text[:40]!r} media={sorted(body['media'].values())}")
    except (ServerError, InferenceServerException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"server stopped; answers in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
