"""Corpora, deterministic split, calibration sampling and the calibration schema."""

from __future__ import annotations

import logging

import pytest
import torch

from anyprec import calibration as cal


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ANYPREC_CACHE", str(tmp_path_factory.getbasetemp() / "anyprec-cache"))


@pytest.fixture(scope="module")
def news():
    return cal.load_documents("news")


def test_news_corpus_is_one_article_per_line(news):
    assert len(news) > 200
    assert all(doc == doc.strip() and "\n" not in doc for doc in news)


def test_wiki_corpus_is_clean_and_cached(tmp_path_factory):
    docs = cal.load_documents("wiki")
    assert len(docs) > 50
    assert all(len(d) >= cal.MIN_DOC_CHARS for d in docs)
    joined = "\n".join(docs)
    for markup in ("#REDIRECT", "'''", "[[", "{{", "==", "<ref"):
        assert markup not in joined, markup
    assert list((tmp_path_factory.getbasetemp() / "anyprec-cache" / "corpora").glob("wiki-*.json"))
    assert cal.load_documents("wiki") == docs


def test_unknown_corpus_is_named():
    with pytest.raises(ValueError, match="'c4'.*wiki"):
        cal.load_documents("c4")


def test_split_is_deterministic_disjoint_and_complete(news):
    calib, held = cal.split_documents(news, eval_fraction=0.2, seed=0)
    assert (calib, held) == cal.split_documents(news, eval_fraction=0.2, seed=0)
    assert not set(calib) & set(held)
    assert set(calib) | set(held) == set(news)
    assert len(held) == round(0.2 * len(set(news)))
    # the side a document lands on does not depend on list order
    assert set(cal.split_documents(news[::-1], 0.2, 0)[1]) == set(held)
    assert set(cal.split_documents(news, 0.2, seed=1)[1]) != set(held)


def test_split_rejects_bad_fraction(news):
    with pytest.raises(ValueError, match="eval_fraction"):
        cal.split_documents(news, eval_fraction=1.0)


def test_heldout_text_holds_only_heldout_docs(news):
    calib, held = cal.split_documents(news)
    text = cal.heldout_text("news")
    assert text == "\n\n".join(held)
    assert not any(doc in text for doc in calib)


def test_rows_are_prefixes_of_distinct_calibration_docs(tiny_tokenizer, news):
    ids = cal.build_calibration(tiny_tokenizer, "news", n_samples=12, seq_len=48, seed=0)
    assert ids.dtype == torch.int64 and ids.shape == (12, 48)
    assert torch.equal(ids, cal.build_calibration(tiny_tokenizer, "news", n_samples=12, seq_len=48, seed=0))
    assert not torch.equal(ids, cal.build_calibration(tiny_tokenizer, "news", n_samples=12, seq_len=48, seed=3))
    calib, held = cal.split_documents(news)
    prefixes = {tuple(t[:48]): i for i, t in enumerate(tiny_tokenizer(calib)["input_ids"]) if len(t) >= 48}
    held_prefixes = {tuple(t[:48]) for t in tiny_tokenizer(held)["input_ids"]}
    sources = [prefixes.get(tuple(row.tolist())) for row in ids]
    assert None not in sources and len(set(sources)) == 12
    assert not {tuple(row.tolist()) for row in ids} & held_prefixes


def test_falls_back_to_stream_windows_with_a_warning(tiny_tokenizer, news, caplog):
    calib, _ = cal.split_documents(news)
    n = len(calib) + 5  # more rows than documents: only the stream can serve them
    with caplog.at_level(logging.WARNING, logger="anyprec.calibration"):
        ids = cal.build_calibration(tiny_tokenizer, "news", n_samples=n, seq_len=16, seed=0)
    assert "windows" in caplog.text
    assert ids.shape == (n, 16)
    eos = [tiny_tokenizer.eos_token_id]
    stream = torch.tensor([t for toks in tiny_tokenizer(calib)["input_ids"] for t in toks + eos])
    windows = stream[: len(stream) // 16 * 16].view(-1, 16)
    offsets = [int(torch.nonzero((windows == row).all(dim=1))[0]) for row in ids]
    assert len(set(offsets)) == n  # distinct, aligned, hence non-overlapping windows


def test_too_little_text_is_a_clear_error(tiny_tokenizer):
    with pytest.raises(ValueError, match="fewer than n_samples"):
        cal.build_calibration(tiny_tokenizer, "news", n_samples=50, seq_len=200_000)


def test_validate_accepts_a_good_set():
    ids = torch.arange(40, dtype=torch.int64).view(4, 10)
    cal.validate_calibration(ids, vocab_size=40, min_rows=4)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.arange(40).view(4, 10).float(), "dtype"),
        (torch.arange(40), "shape"),
        (torch.arange(20).view(2, 10), "fewer than"),
        (torch.arange(40).view(4, 10) + 1, "ids_below_vocab"),
        (torch.arange(40).view(4, 10) - 1, "min_id"),
        (torch.zeros(4, 10, dtype=torch.int64), "row_hash"),
    ],
)
def test_validate_rejects_bad_sets(ids, message):
    with pytest.raises(ValueError, match=message):
        cal.validate_calibration(ids, vocab_size=40, min_rows=4)


def test_validate_lists_every_failure():
    ids = torch.arange(40).view(4, 10)
    ids[1] = ids[0]
    ids[3, 0] = 99
    with pytest.raises(ValueError) as err:
        cal.validate_calibration(ids, vocab_size=40, min_rows=5)
    text = str(err.value)
    assert "row_hash" in text and "ids_below_vocab" in text and "fewer than the 5" in text
    assert "[3]" in text  # the offending row is named


def test_calibration_hash_tracks_content():
    ids = torch.arange(40).view(4, 10)
    same = torch.arange(40).view(4, 10)
    assert cal.calibration_hash(ids) == cal.calibration_hash(same)
    same[2, 3] += 1
    assert cal.calibration_hash(ids) != cal.calibration_hash(same)
    assert cal.calibration_hash(ids) != cal.calibration_hash(ids.view(5, 8))


def test_heldout_split_reads_the_artifact_inputs_else_the_config_defaults():
    from anyprec.config import CalibrationConfig

    assert cal.heldout_split({"calibration": {"eval_fraction": 0.35, "seed": 7}}) == (0.35, 7)
    default = CalibrationConfig()
    assert cal.heldout_split({}) == (default.eval_fraction, default.seed)
