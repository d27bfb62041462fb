"""The Prefect summary of a flow run: one row per bit-width, links to MLflow and the dashboard."""

from __future__ import annotations

from anyprec.tasks.publish import summary_markdown

REPORTS = {
    "ppl": {"bits": {"3": {"news": 40.0, "wiki": 30.0}, "4": {"news": 25.0, "wiki": 22.0}}},
    "eval": {"bits": {"3": {"a": 0.5, "b": 0.7}, "4": {"a": 0.6, "b": 0.8}}},
    "bench": {"bits": {"3": {"decode_tok_s": 30.0, "gemv_latency_us": 500.0}}},
}
RUN = {"parent_run_id": "abc123", "compare_url": "http://127.0.0.1:5000/#/compare-runs?runs=x", "reused": False}


def test_summary_has_a_row_per_bit_width_and_the_links():
    text = summary_markdown("tiny", REPORTS, RUN, "/r/tiny/dashboard/index.html", "2")
    lines = text.splitlines()
    assert lines[0] == "## tiny: any-precision artifact, registered version 2"
    assert "| bits | ppl news | ppl wiki | mean acc | decode tok/s | GEMV us |" in lines
    assert "| 3 | 40.000 | 30.000 | 0.600 | 30.0 | 500.0 |" in lines
    assert "| 4 | 25.000 | 22.000 | 0.700 |  |  |" in lines
    assert RUN["compare_url"] in text and "abc123" in text and "/r/tiny/dashboard/index.html" in text
    assert "reused" not in text
    assert "reused" in summary_markdown("tiny", REPORTS, {**RUN, "reused": True}, "/d", "2")
