"""Time to first token of a conversation's third turn, with and without the session's KV cache.

    python benchmarks/conversation_ttft.py --engines engines/tiny [--backend onnxruntime] [--runs 10] \\
        [--threads 0] [--json benchmarks/results/conversation_ttft.json] [--quick]

Turn 1 gives a picture and a sound, turn 2 asks a follow-up, turn 3 gives a video. Turn 3 is
answered with one new token (its time to first token), N times each way, interleaved:
`full`, the whole conversation prefilled (no session, as NExT-GPT's own inference, which disables
the cache), and `reuse`, the same request in a session whose cache holds turns 1 and 2 (restored,
untimed, before every timed call). Each way is timed end to end (the in-process pipeline: reading
and encoding the media, the prefill, one token) and for the LLM alone (prefill and one token on
media tokens computed beforehand). Prints the medians and their ratio; writes JSON and Markdown.
"""
from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.compare_latency import percentiles
from benchmarks.machine import describe_machine, thread_budget
from benchmarks.report import save_report
from runtime.cli import add_backend, make_parser
from runtime.conversation import Conversation, Medium, Turn
from runtime.inputs import prepare_media
from runtime.pipeline import Any2AnyPipeline
from runtime.request import Request
from train.demo import write_sample_inputs

SESSION = "ttft"
TURNS = (
    ("describe this picture and this sound", ("image", "audio")),
    ("what colour is the background?", ()),
    ("and what is in this video?", ("video",)),
)


def conversation(pipeline: Any2AnyPipeline, files: dict[str, Path], max_new: int) -> tuple[Conversation, Conversation]:
    """Up to turn 2 (what the session caches, with turn 2's answer), and up to turn 3; the answers are the model's."""
    user = [Turn.user(text, [Medium(m, files[m]) for m in media]) for text, media in TURNS]
    turn1 = Conversation((user[0],))
    turn2 = turn1.then(pipeline(Request(conversation=turn1, max_new_tokens=max_new)).turn()).then(user[1])
    turn3 = turn2.then(pipeline(Request(conversation=turn2, max_new_tokens=max_new)).turn()).then(user[2])
    return turn2, turn3


def timed(call: Callable[[], Any], prime: Callable[[], Any] | None = None) -> float:
    if prime is not None:
        prime()
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def measure(pipeline: Any2AnyPipeline, files: dict[str, Path], runs: int, max_new: int, progress: bool) -> dict[str, Any]:
    turn2, turn3 = conversation(pipeline, files, max_new)
    llm = pipeline.llm
    prompt = llm.prompt(turn3)
    tokens = pipeline.encode(prepare_media(pipeline.config["imagebind"], turn3.inputs()))

    def restore() -> None:
        """The session as it stood after turn 2's answer (the same answer: seeded)."""
        pipeline(Request(conversation=turn2, max_new_tokens=max_new, session=SESSION))

    ways = {
        ("end_to_end", "full"): (lambda: pipeline(Request(conversation=turn3, max_new_tokens=1)), None),
        ("end_to_end", "reuse"): (lambda: pipeline(Request(conversation=turn3, max_new_tokens=1, session=SESSION)), restore),
        ("llm", "full"): (lambda: llm.generate(prompt, tokens, max_new_tokens=1), None),
        ("llm", "reuse"): (lambda: llm.generate(prompt, tokens, max_new_tokens=1, session=SESSION), restore),
    }
    for call, prime in ways.values():  # warm-up
        timed(call, prime)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in ways}
    for _ in tqdm(range(runs), desc="turn 3 TTFT", disable=not progress):
        for key, (call, prime) in ways.items():
            times[key].append(timed(call, prime))
    restore()
    reused = pipeline(Request(conversation=turn3, max_new_tokens=1, session=SESSION)).reused_tokens
    rows = []
    for scope in ("end_to_end", "llm"):
        full, reuse = percentiles(times[(scope, "full")]), percentiles(times[(scope, "reuse")])
        rows.append({"scope": scope, "full": full, "reuse": reuse, "ratio": full["median_ms"] / reuse["median_ms"]})
    return {"prompt_tokens": len(prompt.ids), "reused_tokens": reused, "media": len(tokens), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Time to first token, turn 3 of a conversation",
        "",
        f"{result['prompt_tokens']} prompt tokens, {result['media']} media, of which the session's cache held "
        f"{result['reused_tokens']} tokens; {result['backend']}, {result['runs']} runs each way.",
        "",
        "| scope | full prefill median ms | with the session median ms | ratio |",
        "|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['scope']} | {row['full']['median_ms']:.1f} | {row['reuse']['median_ms']:.1f} | {row['ratio']:.2f}× |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--engines", type=Path, required=True, help="a build folder with manifest.json")
    add_backend(p)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores)")
    p.add_argument("--runs", type=int, default=10, help="timed runs each way")
    p.add_argument("--max-new-tokens", type=int, default=24, help="the length of the answers to turns 1 and 2")
    p.add_argument("--json", type=Path, default=Path("benchmarks/results/conversation_ttft.json"))
    p.add_argument("--quick", action="store_true", help="two runs each way: a smoke test")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    threads = thread_budget(args.threads)
    pipeline = Any2AnyPipeline(args.engines, args.backend, threads)
    runs = 2 if args.quick else args.runs
    with tempfile.TemporaryDirectory() as scratch:
        files = write_sample_inputs(Path(scratch), pipeline.config["imagebind"]["audio"]["sample_rate"])
        result = measure(pipeline, files, runs, args.max_new_tokens, not args.quiet)
    result = {"backend": args.backend, "runs": runs, "machine": describe_machine(threads), **result}
    text = markdown(result)
    save_report(args.json, result, text, args.engines)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
