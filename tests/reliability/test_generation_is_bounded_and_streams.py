"""Promise: `anyprec generate` never runs past the model's context (--max-new-tokens is capped,
with a note saying so), prints text as it is generated, and refuses prompts it cannot serve.
"""

from __future__ import annotations

import io
import sys

from anyprec.cli import generation_budget, main
from anyprec.errors import EXIT_INPUT
from anyprec.runtime import AnyPrecisionModel

from .conftest import assert_short_error

CONTEXT = 256  # max_position_embeddings of the tiny Llama


def test_the_budget_fits_prompt_and_output_in_the_context(capsys):
    assert generation_budget(10, 32, CONTEXT) == 32
    assert generation_budget(10, 100_000, CONTEXT) == CONTEXT - 10
    assert "--max-new-tokens 100000 capped to 246" in capsys.readouterr().err
    assert generation_budget(10, 100_000, None) == 100_000


def test_a_huge_max_new_tokens_is_capped_at_the_context(tiny_artifact, tiny_tokenizer, monkeypatch, capsys):
    asked = []
    real_generate = AnyPrecisionModel.generate

    def recording(self, *args, **kwargs):
        out = real_generate(self, *args, **kwargs)
        asked.append((kwargs["max_new_tokens"], out.shape[1]))
        return out

    monkeypatch.setattr(AnyPrecisionModel, "generate", recording)
    assert main(["generate", str(tiny_artifact), "--bits", "3", "--prompt", "The cat",
                 "--max-new-tokens", "100000"]) == 0
    captured = capsys.readouterr()
    prompt_tokens = len(tiny_tokenizer("The cat")["input_ids"])
    assert f"capped to {CONTEXT - prompt_tokens}" in captured.err
    (budget, total), = asked
    assert budget == CONTEXT - prompt_tokens and total <= CONTEXT


def test_text_is_printed_while_it_is_generated(tiny_artifact, monkeypatch):
    events: list[str] = []
    real_generate = AnyPrecisionModel.generate

    class Recorder(io.StringIO):
        def write(self, text: str) -> int:
            if text.strip():
                events.append("text")
            return super().write(text)

    def recording(self, *args, **kwargs):
        out = real_generate(self, *args, **kwargs)
        events.append("generate returned")
        return out

    monkeypatch.setattr(AnyPrecisionModel, "generate", recording)
    monkeypatch.setattr(sys, "stdout", Recorder())
    assert main(["generate", str(tiny_artifact), "--bits", "8", "--prompt", "The cat", "--max-new-tokens", "24"]) == 0
    before = events[: events.index("generate returned")]
    assert before.count("text") >= 3, "the continuation arrives in pieces before generation ends"


def test_a_prompt_longer_than_the_context_is_refused(tiny_artifact, capsys):
    assert main(["generate", str(tiny_artifact), "--bits", "3", "--prompt", "The cat sat. " * 200]) == EXIT_INPUT
    assert_short_error(capsys.readouterr().err, "--prompt is", f"context is {CONTEXT}", "shorten the prompt")


def test_a_non_positive_max_new_tokens_is_refused(tiny_artifact, capsys):
    assert main(["generate", str(tiny_artifact), "--prompt", "The", "--max-new-tokens", "0"]) == EXIT_INPUT
    assert_short_error(capsys.readouterr().err, "--max-new-tokens 0")
