"""A few classic RASP programs (after Weiss et al. 2021 and tracr's library)."""

from __future__ import annotations

from tcomp.rasp.language import (
    Aggregate,
    Comparison,
    Map,
    Select,
    SelectorWidth,
    SequenceMap,
    SOp,
    indices,
    tokens,
)


def length() -> SOp:
    """The input length at every position."""
    return SelectorWidth(Select(tokens, tokens, Comparison.TRUE), name="length")


def reverse() -> SOp:
    """The input reversed."""
    opp = SequenceMap(lambda i, n: n - i - 1, indices, length(), name="opp_index")
    flip = Select(indices, opp, Comparison.EQ, name="flip")
    return Aggregate(flip, tokens, name="reverse")


def histogram() -> SOp:
    """How often each position's token occurs in the input."""
    return SelectorWidth(Select(tokens, tokens, Comparison.EQ, name="same_token"), name="hist")


def sort(max_len: int) -> SOp:
    """The input sorted ascending (ties kept in input order: keys made unique with the index)."""
    key = SequenceMap(lambda x, i: x * max_len + i, tokens, indices, name="unique_key")
    rank = SelectorWidth(Select(key, key, Comparison.LT, name="smaller"), name="target_pos")
    move = Select(rank, indices, Comparison.EQ, name="move")
    return Aggregate(move, tokens, name="sort")


def frac_prevs(token: object) -> SOp:
    """Fraction of positions up to here holding ``token`` (numerical)."""
    is_tok = Map(lambda x: 1 if x == token else 0, tokens, numerical=True, name="is_token")
    prevs = Select(indices, indices, Comparison.LEQ, name="prevs")
    return Aggregate(prevs, is_tok, numerical=True, name="frac_prevs")
