"""Start a front end (the OpenAI API, the web demo) as a user runs it, for the tests that drive it."""
import os
import re
import subprocess
import time
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 300  # the repository written, Triton's models loaded, on 2 busy cores


def start_front_end(argv: list[str], ready_url: str, log: IO[str]) -> tuple[subprocess.Popen, str]:
    """The process, started from the checkout (Triton's Python models import this checkout's code),
    once `ready_url` answers 200, and the gRPC address of the Triton it started."""
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + START_TIMEOUT_S
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(ready_url, timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(1)
    log.seek(0)
    text = log.read()
    assert proc.poll() is None and "triton: " in text, text[-3000:]
    return proc, re.search(r"triton: (\S+)", text).group(1)
