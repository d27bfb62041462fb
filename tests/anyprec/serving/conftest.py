"""A real server on a free loopback port over a copy of the tiny artifact that has a chat template."""

from __future__ import annotations

import shutil

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
MODEL = "tiny"
STORED_PLAN = 4.5


@pytest.fixture(scope="session")
def chat_artifact(tiny_model_dir, tmp_path_factory):
    """The tiny Llama, its tokenizer given a chat template, quantized 3..8 bits (an artifact lists
    and hashes every file it holds, so the template must be there before quantization)."""
    from transformers import AutoTokenizer

    from anyprec.config import CalibrationConfig, QuantizationConfig
    from anyprec.packed import read_manifest
    from anyprec.plans import module_bytes, plan_for, read_objectives, store_plan
    from anyprec.quantize import quantize_model
    from tests.conftest import TINY_CALIB

    root = tmp_path_factory.mktemp("chat_artifact")
    model_dir = root / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(model_dir)
    packed = quantize_model(str(model_dir), root / "packed", CalibrationConfig(**TINY_CALIB), QuantizationConfig(),
                            work_dir=root / "work", progress=False)
    # A stored plan, as `anyprec plan DIR --avg-bits 4.5` adds one: the server lists it.
    manifest = read_manifest(packed)
    widths = list(range(manifest["seed_bits"], manifest["parent_bits"] + 1))
    objectives = read_objectives(packed, manifest)
    store_plan(packed, plan_for(manifest, objectives, widths, avg_bits=STORED_PLAN), {"avg_bits": STORED_PLAN})
    # ... and one for a memory budget (half-way between the 4- and 5-bit codes): served by its name.
    budget = sum(row[4] + row[5] for row in module_bytes(manifest).values()) // 2
    store_plan(packed, plan_for(manifest, objectives, widths, max_bytes=budget), {"max_bytes": budget})
    return packed


@pytest.fixture(scope="module")
def server(chat_artifact):
    """(base url, app state): the app under uvicorn on 127.0.0.1 with 4 slots.

    The transformers engine: its outputs are compared token for token with `generate`."""
    from anyprec.config import ServingConfig
    from anyprec.serving import create_app
    from anyprec.serving.threaded import ThreadedServer

    app = create_app(chat_artifact, serving=ServingConfig(max_batch=4, max_tokens_limit=64), name=MODEL,
                     engine="transformers")
    with ThreadedServer(app) as srv:
        yield srv.url, app.state.anyprec


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)
