"""should_stop: the token and denoising loops stop at the next step, on the tiny build's engines."""
import pytest

from runtime.pipeline import Any2AnyPipeline
from runtime.request import Request
from runtime.stop import Stopped, check, deadline, first_of


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def stop_at(ask: int):
    """A should_stop that names a reason the `ask`-th time it is asked, and counts the asks."""
    asked = []

    def should_stop():
        asked.append(1)
        return "enough" if len(asked) >= ask else None

    return should_stop, asked


class Counting:
    """An engine that counts its runs."""

    def __init__(self, engine):
        self.engine, self.runs = engine, 0
        self.input_names, self.output_names = engine.input_names, engine.output_names

    def run(self, feeds):
        self.runs += 1
        return self.engine.run(feeds)


@pytest.fixture(scope="module")
def pipeline(tiny_build):
    return Any2AnyPipeline(tiny_build[0], "onnxruntime")


def test_deadline_names_itself_once_its_time_has_passed():
    clock = Clock()
    should_stop = deadline(2.5, clock)
    clock.now += 2.4
    assert should_stop() is None
    clock.now += 0.1
    assert should_stop() == "deadline of 2.5 s exceeded"
    with pytest.raises(Stopped, match="deadline of 2.5 s exceeded") as stopped:
        check(should_stop)
    assert stopped.value.reason == "deadline of 2.5 s exceeded"
    assert first_of(None, lambda: None, lambda: "cancelled", should_stop)() == "cancelled"
    check(None)
    check(first_of())


def test_token_loop_stops_at_the_next_step(pipeline):
    llm = pipeline.llm
    counting = Counting(llm.engine)
    llm.engine = counting
    try:
        should_stop, asked = stop_at(4)
        with pytest.raises(Stopped, match="enough"):
            llm.generate(llm.build_prompt("tell me a long story", False), max_new_tokens=40, should_stop=should_stop)
    finally:
        llm.engine = counting.engine
    # Asked before the prefill and before each decode step: three engine calls, none after the stop.
    assert (len(asked), counting.runs) == (4, 3)


def test_denoising_loop_stops_at_the_next_step(pipeline):
    steps = []
    should_stop, asked = stop_at(6)
    decoder = pipeline.decoders["image"]
    embeds = pipeline.project("image", pipeline.llm.generate(
        pipeline.llm.build_prompt("show me", False), max_new_tokens=4, required=["image"]
    ).signal_hidden["image"])
    with pytest.raises(Stopped, match="enough"):
        decoder.generate(embeds, 0, 50, on_step=lambda done, total: steps.append(done), should_stop=should_stop)
    assert steps == [1, 2, 3, 4, 5] and len(asked) == 6


def test_pipeline_stops_between_stages_and_steps(pipeline):
    should_stop, asked = stop_at(1)
    with pytest.raises(Stopped):
        pipeline(Request("show me a red circle", output="image"), should_stop=should_stop)
    assert len(asked) == 1  # before the LLM: no token was generated
    assert pipeline(Request("hi", max_new_tokens=3), should_stop=lambda: None).token_ids
