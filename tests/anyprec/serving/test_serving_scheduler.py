"""The scheduler on a real engine: end-of-sequence handling, ignore_eos, and slots freed on finish."""

from __future__ import annotations

import queue

import pytest
import torch

from anyprec.engine import TransformersEngine
from anyprec.runtime import load_anyprec
from anyprec.serving.metrics import ServerMetrics
from anyprec.serving.scheduler import GenRequest, Scheduler

PROMPT = [5, 17, 42]


@pytest.fixture(scope="module")
def apm(tiny_artifact):
    return load_anyprec(tiny_artifact)


def _run(apm, eos_ids: set[int], **kwargs) -> list:
    engine = TransformersEngine(apm, max_batch=2)
    sched = Scheduler(engine, apm.tokenizer, eos_ids, ServerMetrics())
    events: queue.Queue = queue.Queue()
    sched.start()
    try:
        sched.submit(GenRequest(PROMPT, 4, 6, events.put, **kwargs))
        out = [events.get(timeout=60)]
        while out[-1].kind == "text":
            out.append(events.get(timeout=60))
    finally:
        sched.stop()
    assert sched.active() == 0 and not engine._slots
    return out


def test_eos_ends_the_request_unless_ignore_eos(apm):
    first = _run(apm, set())
    assert first[-1].finish_reason == "length" and first[-1].usage["completion_tokens"] == 6
    # Make the first greedy token the end-of-sequence token: the request stops right there...
    with torch.inference_mode():
        first_token = int(apm(input_ids=torch.tensor([PROMPT]), precision=4).logits[0, -1].argmax())
    stopped = _run(apm, {first_token})
    assert stopped[-1].finish_reason == "stop" and stopped[-1].usage["completion_tokens"] == 1
    # ... unless the client asked to ignore it.
    ignored = _run(apm, {first_token}, ignore_eos=True)
    assert ignored[-1].finish_reason == "length" and ignored[-1].usage["completion_tokens"] == 6
