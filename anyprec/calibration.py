"""Calibration and held-out text from corpora shipped with gensim (no network).

Corpora (`Corpus`):
- "wiki": the shortened English Wikipedia dump in gensim's test data, parsed with
  `extract_pages` + `filter_wiki`, cleaned to plain-text paragraphs; redirects,
  disambiguation pages and pages under MIN_DOC_CHARS are dropped. Cached as JSON under
  `cache_dir()/corpora/` because parsing the bz2 takes seconds.
- "news": gensim's `lee_background.cor`, 299 ABC news articles, one per line.

Documents are split once, deterministically, into a calibration part and a held-out part
(`split_documents`), so perplexity is never measured on calibration text.
"""

from __future__ import annotations

import bz2
import hashlib
import importlib.util
import json
import logging
import re
from enum import Enum
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa
import torch
from pandera.typing import Series

from anyprec.env import cache_dir
from anyprec.fileio import write_text_atomic

logger = logging.getLogger(__name__)

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_FILE = "lee_background.cor"
MIN_DOC_CHARS = 500
WIKI_CACHE_VERSION = 1


class Corpus(str, Enum):
    """Local text corpora usable for calibration and held-out evaluation."""

    WIKI = "wiki"
    NEWS = "news"


def _corpus(corpus: str | Corpus) -> Corpus:
    try:
        return Corpus(corpus)
    except ValueError:
        raise ValueError(f"unknown corpus {corpus!r}; choose one of {[c.value for c in Corpus]}") from None


def _gensim_data(name: str) -> Path:
    """Path of a file in gensim's bundled test data, found without importing gensim (slow)."""
    spec = importlib.util.find_spec("gensim")
    path = Path(spec.submodule_search_locations[0]) / "test" / "test_data" / name if spec else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"gensim test data file {name} not found: install gensim (pip install gensim)")
    return path


def clean_wiki_text(markup: str) -> str:
    """Wiki markup -> plain paragraphs separated by blank lines (headings kept as lines)."""
    from gensim.corpora.wikicorpus import filter_wiki

    text = filter_wiki(markup).replace("\xa0", " ")
    text = re.sub(r"'{2,}", "", text)  # bold / italic quote marks
    text = re.sub(r"^=+\s*(.*?)\s*=+\s*$", r"\1", text, flags=re.MULTILINE)
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [re.sub(r"[ \t]+", " ", line).strip() for line in block.splitlines()]
        lines = [line for line in lines if re.search(r"[A-Za-z]", line)]
        if lines:
            paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _parse_wiki(path: Path) -> list[str]:
    """Parse the bz2 dump into cleaned article texts, in dump order."""
    from gensim.corpora.wikicorpus import extract_pages

    docs = []
    with bz2.BZ2File(path) as handle:
        for title, markup, _pageid in extract_pages(handle):
            if markup.lstrip().lower().startswith("#redirect") or "(disambiguation)" in title:
                continue
            text = clean_wiki_text(markup)
            if len(text) >= MIN_DOC_CHARS:
                docs.append(text)
    return docs


def _wiki_documents() -> list[str]:
    """Cleaned wiki articles, from the JSON cache when it matches the source file."""
    source = _gensim_data(WIKI_FILE)
    key = {"version": WIKI_CACHE_VERSION, "source": source.name, "size": source.stat().st_size}
    cache_file = cache_dir() / "corpora" / f"wiki-v{WIKI_CACHE_VERSION}.json"
    if cache_file.is_file():
        cached = json.loads(cache_file.read_text())
        if cached.get("key") == key:
            return cached["docs"]
    docs = _parse_wiki(source)
    write_text_atomic(cache_file, json.dumps({"key": key, "docs": docs}))
    return docs


def load_documents(corpus: str | Corpus) -> list[str]:
    """All documents of a corpus as plain-text strings, in source order."""
    if _corpus(corpus) is Corpus.WIKI:
        return _wiki_documents()
    lines = _gensim_data(NEWS_FILE).read_text(encoding="utf-8", errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip()]


def _doc_key(doc: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{doc}".encode()).hexdigest()


def split_documents(docs: list[str], eval_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split docs into (calibration, held-out), deterministically and without overlap.

    Exact duplicate documents are dropped first (so no text can land on both sides).
    Each document is ranked by sha256(seed, text); the round(eval_fraction * n) lowest
    ranks are held out. A document's side depends only on its text, the seed and the
    cut-off, not on list order. Both parts keep the source order.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    unique = list(dict.fromkeys(docs))
    n_eval = round(eval_fraction * len(unique))
    held = set(sorted(unique, key=lambda d: _doc_key(d, seed))[:n_eval])
    return [d for d in unique if d not in held], [d for d in unique if d in held]


def heldout_split(inputs: dict) -> tuple[float, int]:
    """(eval_fraction, seed) of the split an artifact's calibration set was drawn from, read
    from its manifest `inputs` (CalibrationConfig's defaults where they are not recorded)."""
    from anyprec.config import CalibrationConfig

    default, calib = CalibrationConfig(), inputs.get("calibration", {})
    return calib.get("eval_fraction", default.eval_fraction), calib.get("seed", default.seed)


def heldout_text(corpus: str | Corpus, eval_fraction: float = 0.2, seed: int = 0) -> str:
    """The held-out documents of a corpus joined with blank lines (for perplexity)."""
    return "\n\n".join(split_documents(load_documents(corpus), eval_fraction, seed)[1])


def _stream_windows(token_lists: list[list[int]], n_samples: int, seq_len: int, rng, eos: int | None) -> torch.Tensor:
    """Fallback: concatenate documents (EOS between) and draw distinct non-overlapping windows."""
    stream = [t for tokens in token_lists for t in (tokens + ([eos] if eos is not None else []))]
    n_windows = len(stream) // seq_len
    if n_windows < n_samples:
        raise ValueError(
            f"calibration text has {len(stream)} tokens = {n_windows} windows of {seq_len}, fewer than "
            f"n_samples={n_samples}; lower n_samples or seq_len, or use a larger corpus"
        )
    windows = torch.tensor(stream[: n_windows * seq_len], dtype=torch.int64).view(n_windows, seq_len)
    return windows[torch.from_numpy(rng.permutation(n_windows)[:n_samples])]


def build_calibration(
    tokenizer,
    corpus: str | Corpus = Corpus.WIKI,
    n_samples: int = 100,
    seq_len: int = 512,
    seed: int = 0,
    eval_fraction: float = 0.2,
) -> torch.Tensor:
    """Calibration token ids: int64[n_samples, seq_len], from the calibration split only.

    As docs/ALGORITHM.md section 1: each row is the first seq_len tokens of a distinct calibration
    document with at least seq_len tokens, documents drawn by a permutation seeded with
    `seed`. If fewer than n_samples such documents exist (the gensim wiki calibration
    split has fewer than 100 of 512 SmolLM2 tokens), falls back, with a logged warning, to concatenating
    all calibration documents (EOS between them) into one stream and drawing n_samples
    distinct non-overlapping seq_len windows of it with the same seeded generator.
    Tokens use the tokenizer's default special tokens (e.g. a leading BOS).
    """
    calib_docs, _ = split_documents(load_documents(corpus), eval_fraction, seed)
    token_lists = [list(ids) for ids in tokenizer(calib_docs, verbose=False)["input_ids"]]
    rng = np.random.default_rng(seed)
    eligible = [i for i, tokens in enumerate(token_lists) if len(tokens) >= seq_len]
    if len(eligible) >= n_samples:
        chosen = rng.permutation(eligible)[:n_samples]
        ids = torch.tensor([token_lists[i][:seq_len] for i in chosen], dtype=torch.int64)
    else:
        logger.warning(
            "corpus %r: only %d of %d calibration documents have >= %d tokens (need %d); "
            "drawing non-overlapping windows from the concatenated calibration documents instead",
            _corpus(corpus).value, len(eligible), len(token_lists), seq_len, n_samples,
        )
        ids = _stream_windows(token_lists, n_samples, seq_len, rng, tokenizer.eos_token_id)
    validate_calibration(ids, len(tokenizer), min_rows=n_samples)
    return ids


def calibration_hash(ids: torch.Tensor) -> str:
    """sha256 of a calibration set's dtype, shape and token ids."""
    array = np.ascontiguousarray(ids.detach().cpu().numpy())
    digest = hashlib.sha256(f"{array.dtype}{list(array.shape)}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


class CalibrationRows(pa.DataFrameModel):
    """One row per calibration sequence: what must hold before compute is spent on it."""

    row: Series[int] = pa.Field(ge=0, unique=True)
    length: Series[int] = pa.Field(ge=2)
    min_id: Series[int] = pa.Field(ge=0)
    max_id: Series[int] = pa.Field(ge=0)
    vocab_size: Series[int] = pa.Field(gt=0)
    row_hash: Series[str] = pa.Field(unique=True)

    @pa.dataframe_check
    def ids_below_vocab(cls, df: pd.DataFrame) -> pd.Series:
        """Every token id must index the embedding: max_id < vocab_size."""
        return df["max_id"] < df["vocab_size"]


def _row_summary(ids: torch.Tensor, vocab_size: int) -> pd.DataFrame:
    """Per-row summary frame of ids: int64[n, L] for the CalibrationRows schema."""
    array = ids.detach().cpu().numpy()
    return pd.DataFrame({
        "row": np.arange(array.shape[0], dtype=np.int64),
        "length": np.full(array.shape[0], array.shape[1], dtype=np.int64),
        "min_id": array.min(axis=1).astype(np.int64),
        "max_id": array.max(axis=1).astype(np.int64),
        "vocab_size": np.full(array.shape[0], vocab_size, dtype=np.int64),
        "row_hash": [hashlib.sha256(r.tobytes()).hexdigest()[:16] for r in array],
    })


_HINTS = {
    "ids_below_vocab": "token id >= vocab_size (tokenizer/model mismatch?)",
    "field_uniqueness": "duplicate rows (calibration samples must be distinct)",
    "greater_than_or_equal_to(0)": "negative token id",
}


def _schema_failures(frame: pd.DataFrame) -> list[str]:
    """Every CalibrationRows failure, one line per failed check, with the offending rows."""
    try:
        CalibrationRows.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
        lines = []
        for (context, column, check), group in cases.groupby(
            ["schema_context", "column", "check"], dropna=False, sort=False
        ):
            if context != "Column" and lines and lines[-1][0] == check:
                continue  # a dataframe check is reported once per column: keep one line
            rows = sorted({int(i) for i in group["index"].dropna()})
            where = f"rows {rows[:10]}{' ...' if len(rows) > 10 else ''}" if rows else "whole set"
            label = column if context == "Column" else "rows"
            hint = _HINTS.get(str(check), "")
            lines.append((check, f"{label}: check {check} failed at {where}" + (f": {hint}" if hint else "")))
        return [line for _, line in lines]
    return []


def validate_calibration(ids: torch.Tensor, vocab_size: int, min_rows: int = 1) -> None:
    """Check a calibration set ids: int64[n >= min_rows, L >= 2] before using it.

    Checks dtype, shape and row count directly, then a pandera schema over a per-row
    summary (ids within [0, vocab_size), no duplicate rows). Raises one ValueError listing
    every failure found.
    """
    failures = []
    if not isinstance(ids, torch.Tensor):
        raise ValueError(f"calibration ids must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype != torch.int64:
        failures.append(f"dtype is {ids.dtype}, expected torch.int64")
    if ids.ndim != 2:
        failures.append(f"shape is {list(ids.shape)}, expected [n_samples, seq_len]")
    elif ids.shape[0] < min_rows:
        failures.append(f"{ids.shape[0]} rows, fewer than the {min_rows} required")
    if ids.ndim == 2 and ids.numel() > 0 and not ids.is_floating_point():
        failures += _schema_failures(_row_summary(ids.to(torch.int64), vocab_size))
    if failures:
        raise ValueError("invalid calibration set:\n  - " + "\n  - ".join(failures))
