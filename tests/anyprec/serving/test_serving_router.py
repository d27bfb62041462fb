"""The :auto router's decisions, and the sampler / stop matcher the scheduler uses per request."""

from __future__ import annotations

import torch

from anyprec.config import RouterConfig
from anyprec.serving.router import Router
from anyprec.serving.sampling import StopMatcher, TextStream, new_rng, sample_token

BITS = [3, 4, 5, 6, 7, 8]


def test_difficulty_grows_with_length_and_cues():
    router = Router(RouterConfig(), BITS)
    easy, cues = router.difficulty("Hello there", 3)
    assert easy < 0.01 and cues == ()
    long_plain, _ = router.difficulty("Hello there", 256)
    hard, cues = router.difficulty("Explain why x + y = 3, in python: def f():", 30)
    assert set(cues) == {"reasoning", "code", "math"}
    assert easy < long_plain < hard <= 1.0
    assert router.difficulty("a summer day", 3)[1] == ()  # 'sum' is a whole-word cue


def test_bits_follow_difficulty_then_drop_under_load_and_climb_back():
    router = Router(RouterConfig(queue_per_bit=2, p95_ms=100.0), BITS)
    hard = "Explain why x + y = 3, in python: def f(): " * 20
    assert router.choose("hi", 2, waiting=0).bits == 3
    assert router.choose(hard, 300, waiting=0).bits == 8
    assert router.choose(hard, 300, waiting=4).bits == 6
    for _ in range(10):
        router.record_latency(0.5)
    loaded = router.choose(hard, 300, waiting=0)
    assert loaded.bits == 7 and loaded.load_drop == 1 and loaded.recent_p95_ms == 500.0
    assert router.choose(hard, 300, waiting=0, latency_ms=1000.0).bits == 8
    for _ in range(40):
        router.record_latency(0.01)
    assert router.choose(hard, 300, waiting=0).bits == 8


def test_client_limits_and_held_bits_bound_the_choice():
    router = Router(RouterConfig(), [3, 5, 8])
    assert router.choose("hi", 2, 0, min_bits=5).bits == 5
    assert router.choose("Explain why, step by step: " * 30, 300, 0, max_bits=6).bits == 5
    assert router.choose("hi", 2, 0).bits == 3


def test_sampling_greedy_seeded_and_top_p():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    assert sample_token(logits, 0.0, 1.0, None) == 1
    draws = [sample_token(logits, 1.0, 1.0, new_rng(s)) for s in range(40)]
    again = [sample_token(logits, 1.0, 1.0, new_rng(s)) for s in range(40)]
    assert draws == again and len(set(draws)) > 1
    assert {sample_token(logits, 1.0, 0.3, new_rng(s)) for s in range(40)} == {1}
    assert {sample_token(logits, 1.0, 0.6, new_rng(s)) for s in range(60)} == {1, 3}


def test_nucleus_is_exact_when_it_spans_more_than_the_first_candidates():
    """A flat 5000-token distribution: the nucleus needs thousands of tokens (the candidate set
    grows), and every draw must come from the exact nucleus of a full sort."""
    logits = torch.randn(5000, generator=torch.Generator().manual_seed(0)) * 0.5
    probs = torch.softmax(logits / 0.8, dim=-1)
    sorted_probs, order = torch.sort(probs, descending=True)
    inside = (torch.cumsum(sorted_probs, 0) - sorted_probs < 0.9).sum().item()
    nucleus = set(order[:inside].tolist())
    assert inside > 8 * 64
    rng = new_rng(1)
    draws = [sample_token(logits, 0.8, 0.9, rng) for _ in range(3000)]
    assert set(draws) <= nucleus and len(set(draws)) > 1000
    # The most likely token is drawn about as often as its renormalised probability says.
    top = order[0].item()
    expected = probs[top].item() / sorted_probs[:inside].sum().item()
    assert abs(draws.count(top) / len(draws) - expected) < 4 * (expected / len(draws)) ** 0.5 + 1e-3


def test_text_stream_equals_the_whole_decode(tiny_tokenizer):
    """Incremental detokenization gives the text of decoding every token at once, also when
    multi-byte characters are split across tokens (held back until whole)."""
    text = "naïve café — 3 € and 4 ½ bits. The council met on Tuesday."
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text) // 4
    stream = TextStream(tiny_tokenizer)
    seen = [stream.add(t) for t in ids]
    assert stream.final() == tiny_tokenizer.decode(ids, skip_special_tokens=True) == text
    assert all(not s.endswith("\ufffd") for s in seen)
    assert all(a == b[:len(a)] for a, b in zip(seen, seen[1:]))
    partial = TextStream(tiny_tokenizer)
    euro = tiny_tokenizer("€", add_special_tokens=False)["input_ids"]
    assert len(euro) > 1  # byte-level pieces of one character
    assert partial.add(euro[0]) == "" and partial.final() == ""


def test_stop_matcher_holds_back_partial_stops_and_cuts_at_the_stop():
    m = StopMatcher(["END"])
    assert m.feed("abc E") == ("abc ", False)
    assert m.feed("abc EN") == ("", False)
    assert m.feed("abc ENX") == ("ENX", False)
    assert m.feed("abc ENX yEND tail") == (" y", True)
    m = StopMatcher([])
    assert m.feed("ab\ufffd") == ("ab", False)
    assert m.feed("abcd") == ("cd", False)
    m = StopMatcher(["zz"])
    m.feed("hello z")
    assert m.flush() == "z"
