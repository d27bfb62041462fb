"""Evaluation reports: byte-identical for identical content; an empty task list is still a report."""

from __future__ import annotations

import json

from anyprec.tasks.caching import BaseModelInfo, StageOutput
from anyprec.tasks.evaluate import lm_eval, write_report


def test_report_bytes_depend_on_content_not_key_order(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_report(a, {"bits": {"3": 1.5}, "base": {"news": 2.0}})
    write_report(b, {"base": {"news": 2.0}, "bits": {"3": 1.5}})
    assert a.read_bytes() == b.read_bytes()


def test_no_tasks_gives_an_empty_report_without_loading_a_model(tmp_path):
    base = BaseModelInfo(name="m", location=str(tmp_path / "absent"), sha256="00" * 32)
    packed = StageOutput(stage="packed", path=str(tmp_path / "absent-artifact"), digest="d")
    out = tmp_path / "eval.json"
    report = lm_eval.fn(base, packed, bits=[3], tasks=[], limit=4, out=str(out))
    assert report == json.loads(out.read_text()) == {"base": {}, "bits": {}, "details": {}, "limit": 4}
