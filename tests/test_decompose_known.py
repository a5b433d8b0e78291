"""Known answers of the TagOOD decomposition (``tagood.detectors.tagood.decompose``), worked out by hand in each test:
min-max normalisation of maps whose minimum is not 0, the keep-the-best-token fallback at ``tau >= 1``, tag slots
that are not kept, ragged token means (one kept token, none, chunked), the tag rule, the single top tag and the
oracle tokens."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tagood.core.types import TagAttention, TokenSet
from tagood.detectors.tagood.decompose import (
    TagRule,
    mean_tokens,
    minmax,
    oracle_mask,
    select_tokens,
    token_mask,
    top_tag,
)


def test_minmax_of_maps_whose_minimum_is_not_zero():
    maps = np.array([[2.0, 3.0, 4.0, 6.0],  # (x - 2) / 4
                     [-5.0, -1.0, -3.0, -4.0],  # (x + 5) / 4
                     [7.0, 7.0, 7.0, 7.0]])  # constant: all ones
    expected = np.array([[0.0, 0.25, 0.5, 1.0], [0.0, 1.0, 0.5, 0.25], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(minmax(maps), expected, rtol=0, atol=1e-15)
    # any leading shape: each map along the last axis on its own
    np.testing.assert_allclose(minmax(maps.reshape(3, 1, 4)), expected.reshape(3, 1, 4), rtol=0, atol=1e-15)


def test_token_mask_normalises_each_kept_tag_between_its_own_min_and_max():
    # tag 0 [10, 11, 12, 14] -> [0, .25, .5, 1]; tag 1 [3, 3.6, 4, 3] -> [0, .6, 1, 0]; max -> [0, .6, 1, 1]
    maps = np.array([[[10.0, 11.0, 12.0, 14.0], [3.0, 3.6, 4.0, 3.0]]])
    mask, has = token_mask(maps, np.array([[True, True]]), tau=0.55)
    assert mask.tolist() == [[False, True, True, True]] and has.tolist() == [True]
    # 0.6 is not above 0.6 (up to rounding: tag 1's 0.6 is 0.6 / 1.0 computed in float64, 0.59999...)
    assert token_mask(maps, np.array([[True, True]]), tau=0.61)[0].tolist() == [[False, False, True, True]]
    # tag 0 alone: [0, .25, .5, 1] > 0.3 keeps tokens 2 and 3; a ratio to max (x / 14) would keep all four
    assert token_mask(maps, np.array([[True, False]]), tau=0.3)[0].tolist() == [[False, False, True, True]]


def test_tags_that_are_not_kept_do_not_vote():
    maps = np.array([[[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 9.0]],
                     [[0.0, 0.0, 0.0, 9.0], [0.0, 1.0, 0.0, 0.0]]])
    keep = np.array([[True, False], [False, True]])
    mask, has = token_mask(maps, keep, tau=0.5)
    assert mask.tolist() == [[False, True, False, False], [False, True, False, False]] and has.tolist() == [True, True]


def test_tau_of_one_or_more_keeps_each_images_best_token_only():
    maps = np.array([[[1.0, 5.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0]],  # best token 1 (the unkept tag is ignored)
                     [[4.0, 0.0, 1.0, 2.0], [0.0, 0.0, 9.0, 0.0]],  # both kept: tokens 0 and 2 reach 1 -> first, 0
                     [[0.0, 1.0, 2.0, 3.0], [3.0, 0.0, 0.0, 0.0]]])  # no kept tag: all tokens
    keep = np.array([[True, False], [True, True], [False, False]])
    for tau in (1.0, 1.5, 7.0):
        mask, has = token_mask(maps, keep, tau)
        assert mask.tolist() == [[False, True, False, False], [True, False, False, False], [True] * 4], tau
        assert has.tolist() == [True, True, False]
    # an image that keeps tokens above tau is left alone while its neighbour falls back to its best token
    two = np.array([[[0.0, 1.0, 2.0, 4.0]], [[5.0, 5.0, 5.0, 5.0]]])  # [0, .25, .5, 1] and a constant map (all 1)
    mask, _ = token_mask(two, np.array([[True], [True]]), tau=0.4)
    assert mask.tolist() == [[False, False, True, True], [True, True, True, True]]
    mask, _ = token_mask(two, np.array([[True], [True]]), tau=1.0)
    assert mask.tolist() == [[False, False, False, True], [True, False, False, False]]


def test_fallback_never_picks_a_token_whose_value_is_not_a_number():
    # an infinite attention value normalises to inf / inf = NaN there and 0 elsewhere: no token is above tau, and the
    # fallback keeps the first finite token (the NaN one compares as not a number, never as the best)
    maps = np.array([[[1.0, 2.0, np.inf, 3.0]]])
    with np.errstate(invalid="ignore"):
        mask, has = token_mask(maps, np.array([[True]]), tau=0.5)
    assert mask.tolist() == [[True, False, False, False]] and has.tolist() == [True]


def test_select_tokens_keeps_values_positions_and_offsets():
    values = np.arange(12, dtype=np.float32).reshape(2, 3, 2)  # 2 images, 3 tokens, 2 dims
    toks = TokenSet.from_dense(values)
    mask = np.array([[False, True, True], [True, False, False]])
    sel = select_tokens(toks, mask)
    assert sel.offsets.tolist() == [0, 2, 3] and sel.positions.tolist() == [1, 2, 0]
    np.testing.assert_array_equal(sel.values, [[2, 3], [4, 5], [6, 7]])
    ragged = TokenSet(toks.values[:5], np.array([0, 3, 5]), toks.positions[:5])
    with pytest.raises(ValueError, match="all T tokens"):
        select_tokens(ragged, mask)


def test_token_means_of_one_token_no_token_and_many_in_chunks():
    # image 0: one token; image 1: none; image 2: three tokens; image 3: two tokens
    values = np.array([[3.0, -1.0], [1.0, 2.0], [4.0, 4.0], [7.0, 0.0], [10.0, 10.0], [20.0, -10.0]])
    offsets = np.array([0, 1, 1, 4, 6])
    toks = TokenSet(values, offsets, np.zeros(len(values), dtype=np.int64))
    expected = np.array([[3.0, -1.0], [0.0, 0.0], [(1 + 4 + 7) / 3, (2 + 4 + 0) / 3], [15.0, 0.0]])
    for chunk in (1, 2, 3, 4096):
        np.testing.assert_allclose(mean_tokens(toks, chunk=chunk), expected, rtol=1e-15, atol=0, err_msg=str(chunk))
    # a token set cut out of a larger one (offsets not starting at 0 inside a chunk) gives the same means
    sel = select_tokens(TokenSet.from_dense(np.array([[[1.0, 1.0], [5.0, 3.0]], [[2.0, 0.0], [6.0, 8.0]]])),
                        np.array([[False, True], [True, True]]))
    np.testing.assert_allclose(mean_tokens(sel, chunk=1), [[5.0, 3.0], [4.0, 4.0]], rtol=1e-15)


def test_tag_rule_keeps_tags_above_threshold_in_the_top_k_and_the_vocabulary():
    ids = np.array([[4, 2, 0, 1], [1, 3, 4, 0]])
    probs = np.array([[0.5, 0.2, 0.9, 0.0, 0.7], [0.1, 0.3, 0.0, 0.6, 0.2]])
    attn = TagAttention(ids, np.zeros((2, 4, 3)))
    # slot probabilities: [.7, .9, .5, .2] and [.3, .6, .2, .1]
    assert TagRule(0.25, 4).kept(attn, probs).tolist() == [[True, True, True, False], [True, True, False, False]]
    assert TagRule(0.25, 2).kept(attn, probs).tolist() == [[True, True, False, False], [True, True, False, False]]
    assert TagRule(0.3, 9).kept(attn, probs).tolist() == [[True, True, True, False], [False, True, False, False]]
    per_tag = np.array([0.4, 0.35, 0.95, 0.5, 0.8])  # slot thresholds [.8, .95, .4, .35] and [.35, .5, .8, .4]
    assert TagRule(per_tag, 4).kept(attn, probs).tolist() == [[False, False, True, False], [False, True, False, False]]
    allowed = np.array([1, 4])
    assert TagRule(0.0, 4).kept(attn, probs, allowed).tolist() == [[True, False, False, True], [True, False, True, False]]


def test_tag_rule_key_names_the_threshold_and_top_k():
    assert TagRule(0.25, 3).key() == "thr=0.25,top_k=3"
    assert TagRule().key() == "thr=0.0,top_k=10"
    a, b = TagRule(np.array([0.1, 0.2]), 5), TagRule(np.array([0.1, 0.3]), 5)
    assert a.key().startswith("thr=pertag") and a.key().endswith(",top_k=5")
    assert a.key() == TagRule(np.array([0.1, 0.2]), 5).key() and a.key() != b.key()
    digest = a.key()[len("thr=pertag"):-len(",top_k=5")]
    assert re.fullmatch("[0-9a-f]{1,8}", digest), digest  # the hash cut to 32 bits, in hex


def test_top_tag_keeps_the_most_likely_kept_slot_only():
    ids = np.array([[4, 2, 0], [1, 3, 4], [0, 1, 2], [3, 0, 2]])
    probs = np.array([[0.5, 0.2, 0.9, 0.0, 0.7],  # slots: .7, .9, .5
                      [0.1, 0.3, 0.0, 0.6, 0.2],  # .3, .6, .2
                      [0.4, 0.4, 0.1, 0.0, 0.0],  # .4, .4, .1 (a tie: the first slot)
                      [0.9, 0.0, 0.0, 0.1, 0.0]])  # .1, .9, 0
    keep = np.array([[True, False, True],  # the best slot (1) is not kept: slot 0 (.7 > .5)
                     [True, True, True],  # slot 1
                     [True, True, False],  # tie .4 / .4: slot 0
                     [False, False, False]])  # nothing kept: nothing
    out = top_tag(keep, TagAttention(ids, np.zeros((4, 3, 2))), probs)
    assert out.dtype == bool and out.tolist() == [[True, False, False], [False, True, False], [True, False, False],
                                                   [False, False, False]]


def test_oracle_mask_is_the_marked_tokens_and_all_tokens_of_an_unmarked_image():
    oracle = np.array([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    mask, has = oracle_mask(oracle, 4)
    assert mask.dtype == bool and mask.tolist() == [[False, True, True, False], [True] * 4, [True, False, False, False]]
    assert has.tolist() == [True, True, True]
    assert oracle.tolist()[1] == [0, 0, 0, 0]  # the caller's array is not written
    with pytest.raises(ValueError, match="4 tokens"):
        oracle_mask(np.ones((2, 3), bool), 4)
    with pytest.raises(ValueError, match="do not match"):
        oracle_mask(np.ones(4, bool), 4)


def test_float32_maps_are_normalised_in_float64():
    """The cache holds float32 attention; the rule compares in float64. Token 1's attention is float32(0.6) =
    0.6000000238..., so its normalised value 0.3000000119... is above tau = 0.3 (in float32 arithmetic it would be
    float32(0.3) and compare equal to tau cast to float32: the token would be lost)."""
    maps = np.array([[[0.0, 0.6, 2.0]]], dtype=np.float32)
    mask, _ = token_mask(maps, np.array([[True]]), tau=0.3)
    assert float(maps[0, 0, 1]) / 2.0 > 0.3 and mask.tolist() == [[False, True, True]]


def test_tag_rule_vocabulary_is_on_top_of_threshold_and_top_k():
    ids = np.array([[4, 2, 0, 1], [1, 3, 4, 0]])
    probs = np.array([[0.5, 0.2, 0.9, 0.0, 0.7], [0.1, 0.3, 0.0, 0.6, 0.2]])  # slots .7 .9 .5 .2 and .3 .6 .2 .1
    attn = TagAttention(ids, np.zeros((2, 4, 3)))
    allowed = np.array([0, 1, 4])
    # allowed slots: [T, F, T, T] and [T, F, T, T]; above 0.25: [T, T, T, F] and [T, T, F, F]; top 3 of 4
    assert TagRule(0.25, 3).kept(attn, probs, allowed).tolist() == [[True, False, True, False], [True, False, False, False]]
