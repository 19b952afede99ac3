"""Start Triton on a model repository, wait until it is ready, stop it cleanly.

    python triton_repo/serve.py --repo DIR [--address 127.0.0.1] [--grpc-port 8001] [--http-port 8000] \\
        [--metrics-port 8002 | --no-metrics] [--tritonserver PATH] [--log FILE] [--ready-timeout S]

The server is the `tritonserver` binary inside the `nvidia-pytriton` wheel unless `--tritonserver`
names another. That build has only the Python backend, and its stub must match this interpreter;
so each start makes a private backend folder holding the wheel's Python backend and the stub for
this Python version (the installed wheel is never modified), and runs the server with this
environment's `bin` first on PATH and the libraries the stub links against on LD_LIBRARY_PATH.
It listens on loopback unless told otherwise (`--address 0.0.0.0`: every interface): gRPC, HTTP
(KServe v2, with the health endpoints `/v2/health/ready` and `/v2/health/live`) and Prometheus
metrics at `/metrics` on the metrics port (port 0: any free one). A model that fails to
load is reported by name and the server is stopped. Ctrl-C or SIGTERM stops the server and exits.

Each Python model instance is a stub process. When one dies (killed, out of memory), this
server's Python backend (2.51) does not start it again: the request in flight fails with
INTERNAL "Stub process ... is not healthy", and so would every later one. So the server runs in
explicit model-control mode (every model loaded at start) and a watchdog reloads a model whose
stub process has gone, which starts fresh stubs; the next requests are served.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType

import psutil
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from runtime.cli import add_url, make_parser
from triton_repo.client import DEFAULT_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE_S = 30.0  # SIGTERM lets Triton unload every model; past this it is killed
WATCH_S = 0.5  # how often the watchdog looks for dead stub processes
STUB = "triton_python_backend_stub"


class ServerError(RuntimeError):
    """The server did not come up: it exited, a model failed to load, or it was not ready in time."""


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def pytriton_home() -> Path:
    """The `tritonserver` folder inside the installed nvidia-pytriton wheel."""
    import pytriton

    return Path(pytriton.__file__).parent / "tritonserver"


def python_backend(into: Path) -> Path:
    """A backend folder whose `python/` is the wheel's Python backend plus the stub for this interpreter."""
    home = pytriton_home()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub})")
    python = into / "python"
    shutil.copytree(home / "backends" / "python", python, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, python)
    return into


def server_env() -> dict[str, str]:
    """The stub embeds libpython: it must find this interpreter's (LIBDIR), not the system's, and
    the wheel's bundled libraries; models import the project's packages (the repository root)."""
    env = dict(os.environ)
    libs = [str(pytriton_home().parents[1] / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def load_failures(log: str) -> list[str]:
    """'MODEL: reason' for each model the server log says failed to load."""
    found = re.findall(r"failed to load '([^']+)' version \d+: ([^\"\n]*)", log)
    # The log escapes a reason's newlines; the first line is the error, a traceback may follow.
    first_lines = {name: reason.split(r"\n")[0].strip() for name, reason in found}
    return [f"{name}: {reason}" for name, reason in first_lines.items()]


class TritonServer:
    """One tritonserver process on a repository; a context manager that always stops it.

    `start()` returns once the server and every model are ready, or raises `ServerError` naming the
    models that failed to load (with the server stopped).
    """

    def __init__(
        self,
        repo: Path,
        grpc_port: int | None = None,
        http_port: int | None = None,
        address: str = "127.0.0.1",
        binary: Path | None = None,
        log: Path | None = None,
        timeout_s: float = 120.0,
        metrics_port: int | None = None,
    ) -> None:
        """A port of None or 0 is any free one, except that `metrics_port` None means no metrics endpoint.
        `timeout_s`: how long `start()` waits for readiness."""
        self.repo, self.address, self.timeout_s = Path(repo).resolve(), address, timeout_s
        self.grpc_port = grpc_port or free_port(address)
        self.http_port = http_port or free_port(address)
        self.metrics_port = None if metrics_port is None else metrics_port or free_port(address)
        self.binary = Path(binary) if binary else pytriton_home() / "bin" / "tritonserver"
        self.workdir = Path(tempfile.mkdtemp(prefix="tritonserver-"))
        self.log = Path(log) if log else self.workdir / "tritonserver.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts: list[str] = []  # one line per model the watchdog reloaded
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.address}:{self.http_port}"

    def metrics_options(self) -> list[str]:
        if self.metrics_port is None:
            return ["--allow-metrics=false"]
        return ["--allow-metrics=true", "--allow-gpu-metrics=false", f"--metrics-address={self.address}", f"--metrics-port={self.metrics_port}"]

    def command(self) -> list[str]:
        return [
            str(self.binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={python_backend(self.workdir / 'backends')}",
            f"--grpc-address={self.address}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.address}",
            f"--http-port={self.http_port}",
            *self.metrics_options(),
            "--model-control-mode=explicit",  # so that the watchdog can reload a model
            "--load-model=*",
            # Python-backend shared memory regions are named by this prefix: two servers on one
            # machine (a test beside a demo) must not share them.
            f"--backend-config=python,shm-region-prefix-name=any2any_{os.getpid()}_{self.grpc_port}_",
            "--exit-on-error=true",
        ]

    def start(self) -> TritonServer:
        if not self.repo.is_dir():
            raise ServerError(f"{self.repo}: no model repository; make one with triton_repo/build_repo.py")
        if not self.binary.is_file():
            raise ServerError(f"{self.binary}: no tritonserver binary")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=server_env(), start_new_session=True
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self._watchdog = threading.Thread(target=self._watch, name="stub-watchdog", daemon=True)
        self._watchdog.start()
        return self

    def stubs(self) -> dict[int, str]:
        """pid -> model name of every live Python-backend stub of this server (argv[1] is
        REPO/MODEL/VERSION/model.py)."""
        found = {}
        try:
            children = psutil.Process(self.process.pid).children()
        except psutil.NoSuchProcess:
            return found
        for child in children:
            try:
                argv = child.cmdline()
                if argv and argv[0].endswith(STUB) and child.status() != psutil.STATUS_ZOMBIE:
                    found[child.pid] = Path(argv[1]).parents[1].name
            except (psutil.NoSuchProcess, psutil.AccessDenied, IndexError):
                continue
        return found

    def _watch(self) -> None:
        known = self.stubs()
        while not self._stopping.wait(WATCH_S):
            current = self.stubs()
            dead = sorted({model for pid, model in known.items() if pid not in current})
            for model in dead:
                self._reload(model)
            known = self.stubs() if dead else current

    def _reload(self, model: str) -> None:
        """Load `model` again: Triton replaces its instances, each with a new stub process."""
        if self._stopping.is_set() or self.process.poll() is not None:
            return
        with grpcclient.InferenceServerClient(self.grpc_url) as client:
            try:
                # Loading a loaded model whose config is unchanged does nothing, and unloading it
                # first would take down the ensemble that uses it (NOT_FOUND) until the load is
                # done. Its config with one parameter added is a change: Triton loads new
                # instances and swaps them in, while the ensemble stays up.
                config = client.get_model_config(model, as_json=True)["config"]
                config.setdefault("parameters", {})["reloads"] = {"string_value": str(len(self.restarts) + 1)}
                client.load_model(model, config=json.dumps(config))
                line = f"{model}: a stub process died; model reloaded"
            except InferenceServerException as e:
                line = f"{model}: a stub process died; reload failed: {e.message()}"
        self.restarts.append(line)
        print(f"tritonserver: {line}", file=sys.stderr, flush=True)

    def _wait_ready(self) -> None:
        client = grpcclient.InferenceServerClient(self.grpc_url)
        deadline = time.monotonic() + self.timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise ServerError(self._failure(f"tritonserver exited with status {self.process.returncode}"))
                try:
                    if client.is_server_ready():
                        return
                except InferenceServerException:
                    pass  # not listening yet
                time.sleep(0.25)
        finally:
            client.close()
        raise ServerError(self._failure(f"tritonserver was not ready within {self.timeout_s:.0f} s"))

    def _failure(self, what: str) -> str:
        """`what`, then the models the log says failed to load, or else the log's last lines."""
        log = self.log_text()
        failures = load_failures(log)
        if failures:
            return f"{what}; models that failed to load: " + "; ".join(failures)
        return what + ":\n" + "\n".join(log.strip().splitlines()[-15:])

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM (Triton unloads its models and exits), then SIGKILL after a grace period."""
        self._stopping.set()
        if self._watchdog is not None:
            self._watchdog.join()
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if not self._exits_after_sigterm():
                # The whole session: Python-backend stubs are children of the server.
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)  # the backend copy, and the log unless --log was given

    def _exits_after_sigterm(self) -> bool:
        """Whether Triton exits by itself within STOP_GRACE_S. After a watchdog reload it cannot:
        the retired instance whose stub died stays a live model until Triton's own exit timeout
        (30 s), so once every stub has exited (every model here is a Python-backend one, the
        ensemble aside) nothing is left to unload and waiting longer only delays the kill."""
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            try:
                self.process.wait(WATCH_S)
                return True
            except subprocess.TimeoutExpired:
                if self.restarts and not self.stubs():
                    return False
        return False

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


# The front ends (OpenAI API, web demo) run one request at a time per instance of each role.
FRONT_END_INSTANCES = "llm=1,media=1"


def add_deployment_args(p: argparse.ArgumentParser, what: str, port: int) -> None:
    """`--engines BUILD` (start Triton here) or `--url HOST:PORT` (attach to a running one), for the
    commands that stand in front of the deployment and talk to it over gRPC; and where `what` (their
    own server) listens, and how long one of its answers may take."""
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--engines", type=Path, help="a build: write its model repository and start Triton on loopback, stopped on exit")
    add_url(where, None, "a running Triton's gRPC address, instead of --engines")
    p.add_argument("--instances", default=FRONT_END_INSTANCES, help="ROLE=N,... for the repository --engines writes (build_repo.py)")
    p.add_argument("--triton-log", type=Path, help="with --engines: the server's log file (default: a temporary file)")
    p.add_argument("--host", default="127.0.0.1", help=f"address {what} binds (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--request-timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds one answer may take (the gRPC deadline)")


@contextmanager
def deployment(args: argparse.Namespace, timeout_s: float = 300.0) -> Iterator[str]:
    """The gRPC address of the deployment `add_deployment_args` named: `--url` as given, or a Triton
    started on loopback on a repository written for `--engines` into a temporary folder; both the
    server and the folder are gone on leaving. SIGTERM raises KeyboardInterrupt, in either case, so
    that it unwinds through here."""
    signal.signal(signal.SIGTERM, _interrupt)
    if args.url is not None:
        yield args.url
        return
    from triton_repo.build_repo import build_repo, parse_instances  # not at the top: it imports runtime's heavy parts

    with tempfile.TemporaryDirectory(prefix="any2any-repo-") as tmp:
        build_repo(args.engines, Path(tmp) / "repo", parse_instances(args.instances))
        with TritonServer(Path(tmp) / "repo", log=args.triton_log, timeout_s=timeout_s) as server:
            yield server.grpc_url


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--repo", type=Path, required=True, help="a model repository (triton_repo/build_repo.py)")
    p.add_argument("--address", default="127.0.0.1", help="address every endpoint binds (0.0.0.0: every interface)")
    p.add_argument("--grpc-port", type=int, default=8001, help="0: any free port")
    p.add_argument("--http-port", type=int, default=8000, help="0: any free port")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics at /metrics; 0: any free port")
    p.add_argument("--no-metrics", action="store_true", help="no metrics endpoint")
    p.add_argument("--tritonserver", type=Path, help="a tritonserver binary (default: the nvidia-pytriton one)")
    p.add_argument("--log", type=Path, help="server log file (default: a temporary file)")
    p.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for the server and every model to be ready")
    args = p.parse_args(argv)
    server = TritonServer(
        args.repo, args.grpc_port, args.http_port, args.address, args.tritonserver, args.log, args.ready_timeout,
        None if args.no_metrics else args.metrics_port,
    )
    # SIGTERM as Ctrl-C: either one unwinds through `finally`, which stops the server (it runs in
    # its own session, so a terminal's Ctrl-C reaches only this launcher).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.start()
        metrics = "" if server.metrics_port is None else f"\nmetrics: {server.address}:{server.metrics_port}/metrics"
        print(f"grpc: {server.grpc_url}\nhttp: {server.http_url}{metrics}\nready; Ctrl-C stops the server", flush=True)
        while server.process.poll() is None:
            time.sleep(0.2)
        print(f"error: tritonserver exited with status {server.process.returncode}", file=sys.stderr)
        return 1
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopping", flush=True)
        return 0
    finally:
        server.stop()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
