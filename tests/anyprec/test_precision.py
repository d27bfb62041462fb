"""The one precision boundary (anyprec.precision): parsing, resolving, one error, checked once."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from anyprec.cli import main
from anyprec.errors import EXIT_INPUT, PrecisionError, UsageError
from anyprec.plans import Plan
from anyprec.precision import loadable_bits, parse_precision, precision_label, resolve_precision
from anyprec.runtime import load_anyprec


def test_parse_precision_turns_what_was_typed_into_numbers_or_names():
    assert [parse_precision(v) for v in ("4", "4.0", 4.0, 4, " 5 ")] == [4, 4, 4, 4, 5]
    assert all(type(parse_precision(v)) is int for v in ("4", 4.0))
    assert parse_precision("4.5") == 4.5 and parse_precision(4.25) == 4.25
    assert parse_precision("plan-avg-bits-4.5") == "plan-avg-bits-4.5"
    assert parse_precision(True) is True  # not a width: refused by the resolver, not turned into 1
    assert loadable_bits(["3", "8"]) == [3, 8]
    assert loadable_bits(["3", "4.5"]) is None and loadable_bits(None) is None


@pytest.fixture
def ids():
    return torch.tensor([[1, 5, 9, 2, 7, 3]])


@pytest.fixture(scope="module")
def planned(tiny_artifact, tmp_path_factory):
    """A copy of the tiny artifact with a stored plan for 4.25 and a plan file for 5.5."""
    art = tmp_path_factory.mktemp("precision") / "art"
    shutil.copytree(tiny_artifact, art)
    assert main(["plan", str(art), "--avg-bits", "4.25"]) == 0
    assert main(["plan", str(art), "--avg-bits", "5.5", "--out", str(art.parent / "p55.json")]) == 0
    return art


def test_every_form_resolves_against_an_artifact(planned):
    assert resolve_precision(planned, "4") == 4 and resolve_precision(planned, 8.0) == 8
    stored = json.loads((planned / "plan-avg-bits-4.25.json").read_text())["modules"]
    for value in ("4.25", 4.25, "plan-avg-bits-4.25", "plan-avg-bits-4.25.json"):
        plan = resolve_precision(planned, value)
        assert isinstance(plan, Plan) and plan.bits == stored, value
    from_file = resolve_precision(planned, str(planned.parent / "p55.json"))
    assert from_file.avg_bits <= 5.5 and precision_label(from_file) == "5.5"
    assert precision_label(4) == "4"
    # a server takes stored plans by name but never a path on its disk
    assert resolve_precision(planned, "plan-avg-bits-4.25", allow_files=False).bits == stored
    for path in (str(planned.parent / "p55.json"), planned.parent / "p55.json"):
        with pytest.raises(PrecisionError, match="not accepted here|neither a bit-width nor a stored plan;"):
            resolve_precision(planned, path, flag="model", allow_files=False)


@pytest.mark.parametrize("value, reason", [
    ("9.5", "9.5 is outside the loaded bit-widths 3..8"),
    ("9", "9 bits is not loaded;"),
    ("2", "2 bits is not loaded;"),
    ("four", "neither a bit-width nor a stored plan nor a file"),
    (True, "give a number of bits"),
])
def test_one_error_names_the_flag_the_value_and_what_the_model_holds(planned, value, reason):
    with pytest.raises(PrecisionError, match=reason) as info:
        resolve_precision(planned, value, flag="--bits")
    message = str(info.value)
    assert message.startswith(f"--bits {value}") and "bit-widths 3..8" in message
    assert "stored plans plan-avg-bits-4.25" in message
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)
    assert info.value.exit_code == EXIT_INPUT


def test_the_api_accepts_strings_and_trusts_what_the_boundary_returned(planned, ids):
    apm = load_anyprec(planned)
    resolver = apm._state.resolve
    plan = resolve_precision(apm, "4.25")
    calls = []
    original = resolver._resolve
    resolver._resolve = lambda value: (calls.append(value), original(value))[1]
    try:
        with torch.inference_mode():
            by_plan = apm(ids, precision=plan).logits
            apm.set_precision(plan)
            assert apm.current_plan is plan and apm.current_precision == 4.25
            out = apm.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=2)
        assert calls == []  # a Plan this boundary returned is not resolved or checked again
        foreign = Plan(dict(plan.bits), 4.25, plan.avg_bits, plan.quantized_bytes)
        with torch.inference_mode():
            assert torch.equal(apm(ids, precision=foreign).logits, by_plan)
        assert len(calls) == 1  # a Plan built elsewhere is checked
        with torch.inference_mode():
            assert torch.equal(apm.generate(ids, precision="plan-avg-bits-4.25", max_new_tokens=3, do_sample=False,
                                            pad_token_id=2), out)
    finally:
        resolver._resolve = original
        apm.set_precision(8)
    bad = dict(plan.bits)
    bad[next(iter(bad))] = 9
    with pytest.raises(PrecisionError, match=r"^precision Plan: plan gives .* 9 bits"):
        apm.generate(ids, precision=Plan(bad, 4.25, 0.0, 0), max_new_tokens=1)


def test_generate_cli_runs_a_fractional_precision(planned, capsys):
    assert main(["generate", str(planned), "--bits", "3", "4.25", "plan-avg-bits-4.25", "--prompt", "the cat",
                 "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "[3-bit] the cat" in out and "[4.25-bit] the cat" in out and "[plan-avg-bits-4.25] the cat" in out
    by_plan = out.split("[4.25-bit] ")[1].split("[plan-avg-bits-4.25] ")
    assert by_plan[0] == by_plan[1]  # the stored plan for 4.25, by number or by name: the same text
    assert main(["generate", str(planned), "--bits", "4", "nine", "--prompt", "the cat"]) == EXIT_INPUT
    assert "error: --bits 'nine' is neither a bit-width" in capsys.readouterr().err


def test_info_prints_the_bytes_of_a_plan(planned, capsys):
    assert main(["info", str(planned), "--bits", "4", "4.25", "--json"]) == 0
    chosen = json.loads(capsys.readouterr().out)["precisions"]
    stored = json.loads((planned / "plan-avg-bits-4.25.json").read_text())
    assert chosen["4.25"]["quantized"] == stored["quantized_bytes"]
    assert chosen["4"]["total"] < chosen["4.25"]["total"] < resolve_info(planned, 5)


def resolve_info(art, bits):
    from anyprec.packed import artifact_sizes

    return artifact_sizes(art)["per_bits"][bits]["total"]
