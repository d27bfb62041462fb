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
