"""The server end to end: a real uvicorn on 127.0.0.1, the real `openai` client, the tiny artifact."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

MODEL = "tiny"  # the name the server fixture serves under

N_TOKENS = 12


def _greedy_reference(state, ids: list[int], bits: int, n: int) -> str:
    """The oracle: transformers `generate` at `bits`, greedy, on the same token ids."""
    apm = state.apm
    out = apm.generate(torch.tensor([ids]), precision=bits, max_new_tokens=n, do_sample=False,
                       pad_token_id=apm.tokenizer.eos_token_id)
    new = out[0, len(ids):].tolist()
    return apm.tokenizer.decode(new, skip_special_tokens=True).rstrip("\ufffd")


def _prompt_ids(state, prompt: str) -> list[int]:
    return list(state.apm.tokenizer(prompt)["input_ids"])


def test_models_lists_every_precision_and_auto(client, server):
    ids = [m.id for m in client.models.list().data]
    named = [f"{MODEL}:{n}" for n in server[1].named]
    assert len(named) == 1 and named[0].startswith(f"{MODEL}:plan-max-bytes-")
    assert ids == [f"{MODEL}:{b}bit" for b in server[1].bits] + [f"{MODEL}:4.5bit", *named, f"{MODEL}:auto"]
    assert httpx.get(server[0] + "/health").json()["status"] == "ok"


@pytest.mark.parametrize("bits", [3, 8])
def test_completion_is_the_greedy_output_at_its_precision(client, server, bits):
    prompt = "The quick brown fox"
    raw = client.completions.with_raw_response.create(model=f"{MODEL}:{bits}bit", prompt=prompt,
                                                      max_tokens=N_TOKENS, temperature=0)
    assert raw.headers["x-anyprec-bits"] == str(bits)
    resp = raw.parse()
    assert resp.model == f"{MODEL}:{bits}bit"
    assert resp.choices[0].text == _greedy_reference(server[1], _prompt_ids(server[1], prompt), bits, N_TOKENS)
    assert resp.usage.prompt_tokens == len(_prompt_ids(server[1], prompt))
    assert 1 <= resp.usage.completion_tokens <= N_TOKENS


@pytest.mark.parametrize("bits", [4, 7])
def test_chat_uses_the_tokenizers_template(client, server, bits):
    state = server[1]
    messages = [{"role": "user", "content": "Numbers like 3 and 8"}]
    resp = client.chat.completions.create(model=f"{MODEL}:{bits}bit", messages=messages,
                                          max_tokens=N_TOKENS, temperature=0)
    text = state.apm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = list(state.apm.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert resp.model == f"{MODEL}:{bits}bit"
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == _greedy_reference(state, ids, bits, N_TOKENS)
    assert resp.usage.prompt_tokens == len(ids)


def test_streaming_equals_the_whole_response_and_ends_with_done(client, server):
    kwargs = dict(model=f"{MODEL}:5bit", prompt="A bitplane holds", max_tokens=N_TOKENS, temperature=0)
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens >= 1
    chat = list(client.chat.completions.create(model=f"{MODEL}:5bit", messages=[{"role": "user", "content": "hi"}],
                                               max_tokens=4, temperature=0, stream=True))
    assert chat[0].choices[0].delta.role == "assistant" and chat[-1].choices[0].finish_reason
    with httpx.stream("POST", server[0] + "/v1/completions", json={**kwargs, "stream": True}, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream") and lines[-1] == "data: [DONE]"


def test_eight_concurrent_mixed_precision_requests_equal_single_requests(client):
    prompts = ["The council met", "Quantization maps", "The quick brown", "News: the budget",
               "A bitplane", "Numbers like 3", "The cat sleeps", "Anarchism is"]
    bits = [3, 8, 4, 6, 5, 7, 3, 8]

    def ask(i: int) -> str:
        return client.completions.create(model=f"{MODEL}:{bits[i]}bit", prompt=prompts[i], max_tokens=N_TOKENS,
                                         temperature=0).choices[0].text

    singles = [ask(i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(8)))
    assert together == singles


def test_seeded_sampling_is_reproducible_and_stop_strings_cut(client):
    kwargs = dict(model=f"{MODEL}:6bit", prompt="The quick", max_tokens=N_TOKENS, temperature=1.0, top_p=0.9)
    a = client.completions.create(seed=7, **kwargs).choices[0].text
    assert client.completions.create(seed=7, **kwargs).choices[0].text == a
    greedy = client.completions.create(model=f"{MODEL}:6bit", prompt="The quick", max_tokens=N_TOKENS,
                                       temperature=0).choices[0]
    stop = greedy.text[3:5]
    if len(stop) == 2:
        cut = client.completions.create(model=f"{MODEL}:6bit", prompt="The quick", max_tokens=N_TOKENS,
                                        temperature=0, stop=[stop]).choices[0]
        assert cut.text == greedy.text[: greedy.text.index(stop)] and cut.finish_reason == "stop"


BAD_REQUESTS = [
    ("completions", {"model": "nope", "prompt": "a"}, 404, "model_not_found"),
    ("completions", {"model": f"{MODEL}:2bit", "prompt": "a"}, 400, "precision_not_available"),
    ("completions", {"model": f"{MODEL}:fast", "prompt": "a"}, 404, "model_not_found"),
    ("completions", {"model": f"{MODEL}:2.5bit", "prompt": "a"}, 400, "precision_not_available"),
    ("completions", {"model": f"{MODEL}:8.5bit", "prompt": "a"}, 400, "precision_not_available"),
    ("completions", {"model": f"{MODEL}:3bit", "prompt": [5] * 300}, 400, "context_length_exceeded"),
    ("completions", {"model": f"{MODEL}:3bit", "prompt": "a", "max_tokens": 0}, 400, "invalid_value"),
    ("completions", {"model": f"{MODEL}:3bit", "prompt": "a", "max_tokens": 65}, 400, "invalid_value"),
    ("completions", {"model": f"{MODEL}:3bit", "prompt": "a", "n": 2}, 400, "invalid_value"),
    ("completions", {"model": f"{MODEL}:auto", "prompt": "a", "min_bits": 1, "max_bits": 2}, 400,
     "precision_not_available"),
    ("completions", {"prompt": "a"}, 400, "invalid_value"),
    ("chat/completions", {"model": f"{MODEL}:3bit", "messages": []}, 400, "invalid_value"),
    ("completions", b'{"model": "tiny:3bit", "prompt": ', 400, "invalid_json"),
    ("completions", b"[1, 2]", 400, "invalid_json"),
]


@pytest.mark.parametrize("path,body,status,code", BAD_REQUESTS)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, path, body, status, code,
                                                                     caplog):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{server[0]}/v1/{path}", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]
    assert "Traceback" not in caplog.text
    assert client.completions.create(model=f"{MODEL}:3bit", prompt="ok", max_tokens=2).choices[0].text is not None


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="a", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=f"{MODEL}:8bit", prompt=[7] * 256, max_tokens=2)


def _metric(url: str, name: str, **labels) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server):
    url, state = server
    before = _metric(url, "anyprec_requests_total", status="cancelled")
    body = {"model": f"{MODEL}:8bit", "prompt": "The", "max_tokens": 64, "temperature": 0, "stream": True,
            "stop": ["never-produced-stop"]}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (state.scheduler.active() or
                                           _metric(url, "anyprec_requests_total", status="cancelled") == before):
        time.sleep(0.1)
    assert state.scheduler.active() == 0
    assert _metric(url, "anyprec_requests_total", status="cancelled") == before + 1


def test_auto_reports_its_choice_and_metrics_parse(client, server):
    url = server[0]
    raw = client.completions.with_raw_response.create(model=f"{MODEL}:auto", prompt="Explain why, step by step",
                                                      max_tokens=2, extra_body={"min_bits": 4, "max_bits": 6})
    bits = int(raw.headers["x-anyprec-bits"])
    assert 4 <= bits <= 6 and raw.parse().model == f"{MODEL}:{bits}bit"
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
    for name in ("anyprec_requests", "anyprec_tokens", "anyprec_request_latency_seconds",
                 "anyprec_time_to_first_token_seconds", "anyprec_decode_tokens_per_second",
                 "anyprec_queue_depth", "anyprec_auto_choices", "process_resident_memory_bytes"):
        assert name in families, name
    assert _metric(url, "anyprec_auto_choices_total", bits=str(bits)) >= 1
    assert _metric(url, "anyprec_request_latency_seconds_count", bits="3") >= 1
    assert _metric(url, "anyprec_rejected_requests_total", code="model_not_found") >= 1


def test_generation_stops_at_the_context(client, server):
    ctx = server[1].engine.context_length
    resp = client.completions.create(model=f"{MODEL}:3bit", prompt=[5] * (ctx - 3), max_tokens=50, temperature=0)
    # The prompt leaves room for 3 appended tokens; the 4th is sampled from the last full-context logits.
    assert resp.usage.completion_tokens == 4 and resp.choices[0].finish_reason == "length"
