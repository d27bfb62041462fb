"""The `anyprec` command line on the tiny artifact: info, ppl, generate, quantize, errors."""

from __future__ import annotations

import json

import pytest

from anyprec.cli import main


def test_info_text_and_json(tiny_artifact, capsys):
    assert main(["info", str(tiny_artifact)]) == 0
    out = capsys.readouterr().out
    assert "codes MiB" in out and "6 separately packed models" in out
    assert "add --verify" in out
    assert main(["info", str(tiny_artifact), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["manifest"]["parent_bits"] == 8
    assert sorted(data["sizes"]["per_bits"], key=int) == ["3", "4", "5", "6", "7", "8"]


def test_ppl_on_text_file_writes_json_with_base(tiny_artifact, tmp_path, capsys):
    text = tmp_path / "sample.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 30, encoding="utf-8")
    out_json = tmp_path / "ppl.json"
    assert main(["ppl", str(tiny_artifact), "--bits", "3", "8", "--text", str(text),
                 "--window", "64", "--json", str(out_json)]) == 0
    data = json.loads(out_json.read_text())
    assert set(data["bits"]) == {"3", "8"}
    base = data["base"]["sample.txt"]
    at8 = data["bits"]["8"]["sample.txt"]
    assert base > 1 and abs(at8 - base) / base < 0.01


def test_ppl_rejects_bits_outside_artifact(tiny_artifact, capsys):
    assert main(["ppl", str(tiny_artifact), "--bits", "2"]) == 2
    assert "--bits 2: outside 3..8; this artifact holds bit-widths 3..8" in capsys.readouterr().err


def test_ppl_rejects_non_utf8_text(tiny_artifact, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00 not utf-8 \xc3")
    with pytest.raises(SystemExit, match="UTF-8"):
        main(["ppl", str(tiny_artifact), "--bits", "8", "--text", str(bad), "--no-base"])


def test_generate_prints_each_precision(tiny_artifact, capsys):
    assert main(["generate", str(tiny_artifact), "--bits", "3", "8", "--prompt", "The cat", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "[3-bit] The cat" in out and "[8-bit] The cat" in out


def test_info_on_a_non_artifact_is_a_clear_error(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "not an anyprec artifact" in capsys.readouterr().err


def test_quantize_rejects_seed_above_parent(tiny_model_dir, tmp_path, capsys):
    code = main(["quantize", str(tiny_model_dir), "--out", str(tmp_path / "x"), "--seed-bits", "5", "--parent-bits", "4"])
    assert code == 2
    assert "--seed-bits 5 must be below --parent-bits 4" in capsys.readouterr().err


def test_quantize_unknown_model_is_a_clear_error(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "cannot resolve model" in capsys.readouterr().err
