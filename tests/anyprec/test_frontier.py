"""`anyprec frontier`: perplexity against bytes for widths, plans and (when installed) llama.cpp."""

import json
import math

import pytest

from anyprec.cli import main
from anyprec.frontier import FORMAT, plan_targets
from anyprec.packed import artifact_sizes


def test_plan_targets_are_the_fractions_between_the_widths():
    assert plan_targets(3, 8, 0.25) == [3 + k / 4 for k in range(1, 20) if k % 4]
    assert plan_targets(3, 5, 0.5) == [3.5, 4.5]
    with pytest.raises(ValueError, match="--step"):
        plan_targets(3, 8, 1.5)


@pytest.fixture(scope="module")
def report(tiny_artifact, tmp_path_factory):
    out = tmp_path_factory.mktemp("frontier")
    assert main(["frontier", str(tiny_artifact), "--out", str(out), "--max-tokens", "96", "--window", "32",
                 "--step", "0.5", "--no-progress"]) == 0
    return out, json.loads((out / "frontier.json").read_text())


def test_rows_cover_base_widths_and_plans(report, tiny_artifact):
    out, rep = report
    assert rep["format"] == FORMAT and rep["corpora"] == ["wiki", "news"]
    kinds = [r["kind"] for r in rep["rows"]]
    assert kinds.count("base") == 1 and kinds.count("anyprec") == 6 and kinds.count("anyprec plan") == 5
    sizes = artifact_sizes(tiny_artifact)["per_bits"]
    ints = {r["avg_bits"]: r for r in rep["rows"] if r["kind"] == "anyprec"}
    assert {b: r["bytes"] for b, r in ints.items()} == {float(b): s["total"] for b, s in sizes.items()}
    for r in rep["rows"]:
        assert all(math.isfinite(v) and v > 1 for v in r["ppl"].values()), r
        if r["kind"] == "anyprec plan":  # a plan's bytes lie between its neighbouring widths'
            lo, hi = math.floor(r["avg_bits"]), math.ceil(r["avg_bits"])
            assert sizes[lo]["total"] <= r["bytes"] <= sizes[hi]["total"], r
    # without llama-cpp-python (or for a model without a GGUF) its rows are skipped with a note
    assert "llama.cpp" not in kinds and any("llama" in n for n in rep["notes"])
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "frontier.md").read_text()
    assert sum(line.startswith("| ") for line in table.splitlines()) == len(rep["rows"]) + 1  # header + rows


def test_integer_rows_match_anyprec_ppl(report, tiny_artifact, tmp_path):
    _, rep = report
    path = tmp_path / "ppl.json"
    assert main(["ppl", str(tiny_artifact), "--bits", "3", "8", "--corpus", "wiki", "news", "--max-tokens", "96",
                 "--window", "32", "--no-base", "--json", str(path)]) == 0
    ppl = json.loads(path.read_text())["bits"]
    ints = {r["name"]: r["ppl"] for r in rep["rows"] if r["kind"] == "anyprec"}
    for b in ("3", "8"):
        for corpus in ("wiki", "news"):
            assert ints[f"{b}-bit"][corpus] == pytest.approx(ppl[b][corpus], rel=1e-6)


@pytest.fixture(scope="module")
def baselines(tiny_quantized, tmp_path_factory):
    artifact, work = tiny_quantized
    out = tmp_path_factory.mktemp("frontier-baselines")
    assert main(["frontier", str(artifact), "--out", str(out), "--rows", "ours,dedicated,reference",
                 "--work-dir", str(work), "--baseline-bits", "3", "4", "--max-tokens", "96", "--window", "32",
                 "--no-progress"]) == 0
    return out, json.loads((out / "frontier.json").read_text())


def test_dedicated_and_reference_rows(baselines, tiny_quantized):
    artifact, work = tiny_quantized
    out, rep = baselines
    kinds = [r["kind"] for r in rep["rows"]]
    assert kinds.count("anyprec") == 6 and kinds.count("dedicated") == 2 and kinds.count("reference") == 2
    assert "base" not in kinds and "anyprec plan" not in kinds  # only the kinds asked for
    sizes = artifact_sizes(artifact)["per_bits"]
    rows = {r["name"]: r for r in rep["rows"]}
    for method in ("dedicated", "reference"):
        for b in (3, 4):
            row = rows[f"{method} {b}-bit"]
            assert row["bytes"] == sizes[b]["total"] and row["avg_bits"] == b
            assert all(math.isfinite(v) and v > 1 for v in row["ppl"].values())
    # both start from the same weighted Lloyd clustering at the seed width; they part above it
    assert rows["reference 3-bit"]["ppl"] == rows["dedicated 3-bit"]["ppl"]
    assert rows["reference 4-bit"]["ppl"] != rows["dedicated 4-bit"]["ppl"]
    # cached where `anyprec eval` caches its baselines, one file per module and method
    for method in ("dedicated", "reference"):
        assert len(list((work / "baselines" / method).glob("*.safetensors"))) == len(
            json.loads((artifact / "manifest.json").read_text())["modules"])
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baseline_rows_match_anyprec_eval(baselines, tiny_quantized, tmp_path):
    """The same Fisher, cache and token streams: `anyprec eval`'s dedicated perplexity."""
    artifact, work = tiny_quantized
    _, rep = baselines
    path = tmp_path / "eval.json"
    assert main(["eval", str(artifact), "--bits", "4", "--methods", "dedicated", "--tasks", "--corpus", "wiki",
                 "--ppl-max-tokens", "96", "--window", "32", "--work-dir", str(work), "--json", str(path),
                 "--no-progress"]) == 0
    ppl = json.loads(path.read_text())["methods"]["dedicated"]["4"]["ppl_wiki"]
    row = next(r for r in rep["rows"] if r["name"] == "dedicated 4-bit")
    assert row["ppl"]["wiki"] == pytest.approx(ppl, rel=1e-6)


def test_baseline_rows_need_the_work_dir(tiny_artifact, tmp_path, capsys):
    empty = tmp_path / "work"
    empty.mkdir()
    assert main(["frontier", str(tiny_artifact), "--out", str(tmp_path / "out"), "--rows", "ours,dedicated",
                 "--work-dir", str(empty), "--max-tokens", "32"]) != 0
    err = capsys.readouterr().err
    assert "--rows dedicated" in err and "pass --work-dir" in err
    assert not (tmp_path / "out").exists()
    assert main(["frontier", str(tiny_artifact), "--out", str(tmp_path / "out"), "--rows", "ours,vendor"]) != 0
    assert "unknown vendor" in capsys.readouterr().err


def test_foreign_files_in_out_are_not_overwritten(tiny_artifact, tmp_path, capsys):
    (tmp_path / "frontier.md").write_text("someone else's notes")
    assert main(["frontier", str(tiny_artifact), "--out", str(tmp_path), "--max-tokens", "32"]) != 0
    assert "not written by `anyprec frontier`" in capsys.readouterr().err
    assert (tmp_path / "frontier.md").read_text() == "someone else's notes"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # transformers dequantizes the GGUF in Python: minutes on a busy machine
def test_gguf_rows_load_into_the_base_config():
    """The embedded GGUF through load_gguf_model gives the base model's logits (rope_theta kept)."""
    import torch

    from anyprec.frontier import load_gguf_model
    from anyprec.models import find_embedded_gguf, load_model, resolve_model_dir

    base, tok = load_model("default")
    model = load_gguf_model(find_embedded_gguf(), resolve_model_dir("default"))
    assert model.config.to_dict().get("rope_parameters", {}).get("rope_theta", 100000.0) == \
        base.config.to_dict().get("rope_parameters", {}).get("rope_theta", 100000.0)
    ids = tok("The council met on Tuesday to discuss the budget.", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, base(ids).logits, rtol=1e-4, atol=1e-4)
