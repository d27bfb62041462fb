"""Dashboards: MLflow child runs -> frame -> Pareto front -> PNG + HTML, checked in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from anyprec.dashboards.compare import load_runs, pareto_front
from anyprec.dashboards.render import render_dashboard

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def synthetic_runs(tracking_uri: str, models=("a", "b"), bits=(3, 4, 5, 6)) -> None:
    """Log child runs shaped like the pipeline's: tag kind=bits, param bits, the metrics."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("anyprec")
    rng = np.random.default_rng(0)
    for model in models:
        with mlflow.start_run(run_name=model, tags={"kind": "pipeline", "model": model}):
            for b in bits:
                with mlflow.start_run(nested=True, tags={"kind": "bits", "model": model}):
                    mlflow.log_param("bits", b)
                    mlflow.log_metrics({
                        "ppl_wiki": float(10 + 40 / b + rng.random()),
                        "bytes_in_memory": float(b * 1_000_000 + rng.integers(0, 1000)),
                        "decode_tok_s": float(100 / b + rng.random()),
                        "gemv_latency_us": float(50 * b + rng.random()),
                    })


@pytest.fixture()
def runs_frame(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    synthetic_runs(uri)
    return load_runs(uri, "anyprec")


def test_load_runs_one_row_per_model_and_bits(runs_frame):
    assert sorted(runs_frame["model"].unique()) == ["a", "b"]
    assert runs_frame.groupby("model")["bits"].apply(sorted).tolist() == [[3, 4, 5, 6]] * 2
    assert {"ppl_wiki", "bytes_in_memory", "decode_tok_s", "gemv_latency_us"} <= set(runs_frame.columns)


def dominated(row, other) -> bool:
    return (other["cost"] <= row["cost"] and other["q"] <= row["q"]
            and (other["cost"] < row["cost"] or other["q"] < row["q"]))


def test_pareto_front_keeps_exactly_the_non_dominated_rows():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"cost": rng.integers(0, 20, 60), "q": rng.integers(0, 20, 60)}).drop_duplicates()
    front = pareto_front(frame, "cost", "q")
    for index, row in frame.iterrows():
        is_dominated = any(dominated(row, other) for _, other in frame.iterrows())
        assert (index in front.index) == (not is_dominated), row.to_dict()


def browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip(f"no headless browser ({', '.join(BROWSERS)}): apt-get install -y chromium")


def test_dashboard_html_shows_every_plot_in_chromium(runs_frame, tmp_path):
    page = render_dashboard(runs_frame, tmp_path / "dash")
    pngs = sorted(p.name for p in page.parent.glob("*.png"))
    assert "pareto.png" in pngs and "ppl_wiki_vs_bits.png" in pngs and len(pngs) == 5
    cmd = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    loaded = re.search(r'data-plots-loaded="(\d+)"', dom)
    assert loaded, dom[:2000]
    assert int(loaded.group(1)) == len(pngs)
    assert f'data-plots-expected="{len(pngs)}"' in dom
    assert dom.split("<tbody>")[1].count("<tr>") == len(runs_frame)  # one row per (model, bits)


def test_empty_frame_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="quantize-eval"):
        render_dashboard(pd.DataFrame(columns=["model", "bits"]), tmp_path)


def test_every_corpus_gets_a_plot_and_the_title_names_what_is_shown(runs_frame, tmp_path):
    frame = runs_frame.assign(ppl_news=runs_frame["ppl_wiki"] * 1.2)
    page = render_dashboard(frame, tmp_path / "dash")
    pngs = {p.name for p in page.parent.glob("*.png")}
    assert {"ppl_wiki_vs_bits.png", "ppl_news_vs_bits.png"} <= pngs
    text = page.read_text()
    assert "<h1>anyprec: 2 base models (a, b), perplexity on news and wiki, speed and memory per bit-width</h1>" in text
    one = render_dashboard(frame[frame["model"] == "a"], tmp_path / "one")
    assert "<h1>anyprec: a, perplexity on news and wiki" in one.read_text()
    assert "other base models" not in one.read_text()


def test_fractional_precisions_sort_between_the_integer_widths(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    synthetic_runs(uri, models=("a",), bits=(3, 4.5, 4, 4.25))
    frame = load_runs(uri, "anyprec")
    assert frame["bits"].tolist() == [3, 4, 4.25, 4.5]
    html = render_dashboard(frame, tmp_path / "dash").read_text()
    assert "4.25" in html and (tmp_path / "dash" / "pareto.png").is_file()
