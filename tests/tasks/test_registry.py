"""The registered pyfunc: one artifact answers requests at the bit-width each one asks for."""

from __future__ import annotations

import torch
from mlflow.pyfunc import PythonModelContext

from anyprec.runtime import load_anyprec
from anyprec.tasks.registry import ARTIFACT_KEY, AnyPrecisionPyfunc, GenerationRequest

PROMPT = "The quick brown fox"


def _greedy(apm, bits: int | None, tokens: int) -> str:
    ids = apm.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = apm.generate(ids, precision=bits, max_new_tokens=tokens, do_sample=False)
    return apm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_predict_generates_at_each_requests_bit_width(tiny_artifact):
    model = AnyPrecisionPyfunc()
    model.load_context(PythonModelContext(artifacts={ARTIFACT_KEY: str(tiny_artifact)}, model_config={}))
    requests = [GenerationRequest(prompt=PROMPT, bits=3, max_new_tokens=4), GenerationRequest(prompt=PROMPT)]
    texts = model.predict(None, requests)
    apm = load_anyprec(tiny_artifact)
    assert texts == [_greedy(apm, 3, 4), _greedy(apm, None, 16)]
    assert model.apm.current_precision == 8  # a request's bit-width does not become the default
