"""Emission delays and word time errors matched word to word, also where a word normalises to several words or to none."""

import pytest

from reallm_cli.evaluate import _matched_delays
from reallm_cli.results import Word


def ref(word: str, end: float) -> dict:
    return {"word": word, "start_s": end - 0.3, "end_s": end}


def hyp(text: str, emit: float) -> Word:
    return Word(text, emit - 0.5, emit - 0.2, emit)


def test_delays_pair_matching_words():
    refs = [ref("ask", 1.0), ref("not", 1.5), ref("what", 2.0)]
    hyps = [hyp("ask", 2.0), hyp("north", 2.5), hyp("what", 3.5)]
    assert _matched_delays(refs, hyps) == [1.0, 1.5]


def test_a_word_that_normalises_to_several_counts_once_and_keeps_the_rest_aligned():
    refs = [ref("in", 0.5), ref("1990", 1.2), ref("--", 1.3), ref("twenty-one", 2.0), ref("men", 2.5)]
    hyps = [hyp("in", 1.0), hyp("nineteen", 1.8), hyp("ninety", 2.0), hyp("twenty", 2.6), hyp("one", 2.9),
            hyp("men", 3.0)]
    got = _matched_delays(refs, hyps)
    assert [round(d, 6) for d in got] == [0.5, 0.8, 0.9, 0.5]  # 1990 and twenty-one: shown with their last word


def test_word_time_errors_pair_words_by_their_spoken_form():
    from reallm_cli.evaluate import word_time_errors
    from reallm_cli.results import Word

    ref = [{"word": "Hello,", "start_s": 0.1, "end_s": 0.5}, {"word": "1990", "start_s": 0.5, "end_s": 1.2},
           {"word": "world.", "start_s": 1.2, "end_s": 1.6}, {"word": "bye", "end_s": 2.0}]
    hyp = [Word("hello", 0.14, 0.44, 0.7), Word("nineteen", 0.5, 0.8, 1.0), Word("ninety", 0.8, 1.2, 1.4),
           Word("word", 1.2, 1.6, 1.9), Word("bye", 1.7, 2.0, 2.2)]
    got = word_time_errors(ref, hyp)  # "1990" is two words spoken: no pair; "word" is not "world"; no start for "bye"
    assert got == [pytest.approx((0.04, -0.06))]
    hyp[3] = Word("World", 1.22, 1.5, 1.9)
    assert word_time_errors(ref, hyp) == [pytest.approx((0.04, -0.06)), pytest.approx((0.02, -0.1))]
