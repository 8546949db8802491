"""The evaluator against plain-Python references, the printer against the evaluator, validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tcomp import rasp
from tcomp.rasp import programs as P
from tcomp.rasp.language import Aggregate, Comparison, Map, Select, SequenceMap, indices, tokens
from tests.rasp.strategies import MAX_LEN, VOCAB, inputs, programs


@given(inputs)
def test_library_programs_match_python(xs):
    assert rasp.evaluate(P.reverse(), xs) == xs[::-1]
    assert rasp.evaluate(P.sort(MAX_LEN), xs) == sorted(xs)
    assert rasp.evaluate(P.histogram(), xs) == [xs.count(x) for x in xs]
    assert rasp.evaluate(P.length(), xs) == [len(xs)] * len(xs)
    want = [sum(v == 1 for v in xs[: i + 1]) / (i + 1) for i in range(len(xs))]
    assert rasp.evaluate(P.frac_prevs(1), xs) == pytest.approx(want)


@given(programs(), st.lists(inputs, min_size=3, max_size=3))
def test_printed_source_runs_standalone_and_reloads(prog, xss):
    src = rasp.to_source(prog, VOCAB, MAX_LEN)
    ns: dict = {"__name__": "printed"}
    exec(compile(src, "printed", "exec"), ns)
    reloaded, vocab, max_len = rasp.load_source(src)
    assert (vocab, max_len) == (VOCAB, MAX_LEN)
    for xs in xss:
        want = rasp.evaluate(prog, xs)
        assert ns["program"](xs) == want
        assert rasp.evaluate(reloaded, xs) == want


def test_selector_combinators():
    a = Select(indices, indices, Comparison.LEQ)
    b = Select(tokens, tokens, Comparison.EQ)
    xs = [1, 2, 1]
    m = rasp.evaluate_all((a & ~b) | b, xs)
    env = rasp.evaluate_all(Aggregate((a & ~b) | b, Map(float, tokens, numerical=True), numerical=True), xs)
    sel = [v for v in env.values() if isinstance(v, list) and v and isinstance(v[0], list)]
    assert [[k <= q and xs[k] != xs[q] or xs[k] == xs[q] for k in range(3)] for q in range(3)] in sel
    assert m


def test_validation_rejects_ambiguous_categorical_aggregate():
    bad = Aggregate(Select(tokens, tokens, Comparison.LT, name="smaller"), tokens, name="pick")
    with pytest.raises(rasp.ValidationError) as err:
        rasp.validate(bad, VOCAB, MAX_LEN)
    assert err.value.problems[0][0] == "pick"
    assert "smaller" in str(err.value) and "at most one" in str(err.value)
    # same selector on unique keys with EQ is fine; EQ on tokens is not provably one-hot
    rasp.validate(Aggregate(Select(indices, indices, Comparison.EQ), tokens), VOCAB, MAX_LEN)
    not_unique = Aggregate(Select(tokens, tokens, Comparison.EQ), tokens)
    assert "not provably unique" in rasp.problems(not_unique, VOCAB, MAX_LEN)[0][1]


def test_validation_rejects_maps_of_numerical_and_mixed_aggregates():
    num = Map(lambda x: x / 2, tokens, numerical=True, name="half")
    assert not rasp.problems(Map(lambda v: v > 1, num), VOCAB, MAX_LEN)  # finitely many values: a staircase
    assert "numerical half" in rasp.problems(SequenceMap(lambda a, b: a, num, tokens), VOCAB, MAX_LEN)[0][1]
    sel = Select(indices, indices, Comparison.LEQ)
    assert "numerical=True" in rasp.problems(Aggregate(sel, num), VOCAB, MAX_LEN)[0][1]
    means = Aggregate(sel, num, numerical=True, name="means")  # means of non-0/1 values: not enumerated
    assert "numerical means" in rasp.problems(Map(lambda v: v > 1, means), VOCAB, MAX_LEN)[0][1]
    assert rasp.problems(SequenceMap(lambda a, b: None, tokens, indices), VOCAB, MAX_LEN)


def test_library_programs_validate():
    for p in (P.reverse(), P.sort(MAX_LEN), P.histogram(), P.length(), P.frac_prevs(1)):
        rasp.validate(p, VOCAB, MAX_LEN)


@given(inputs)
def test_means_of_indicators_lie_in_mean_values_and_print_as_tables(xs):
    frac = P.frac_prevs(VOCAB[0])
    assert rasp.value_sets(frac, VOCAB, MAX_LEN)[frac.id] == rasp.language.mean_values(MAX_LEN)
    assert set(rasp.evaluate(frac, xs)) <= set(rasp.language.mean_values(MAX_LEN))
    # a categorical Map over the means prints as a table keyed by the exact floats the evaluator makes
    half = Map(lambda f: int(f > 0.5), frac, name="majority")
    src = rasp.to_source(half, VOCAB, MAX_LEN)
    ns: dict = {"__name__": "printed"}
    exec(compile(src, "printed", "exec"), ns)
    assert ns["program"](xs) == rasp.evaluate(half, xs)


def test_mean_values_are_the_fractions_up_to_max_len():
    assert rasp.language.mean_values(3) == [0.0, 1 / 3, 0.5, 2 / 3, 1.0]
    assert len(rasp.language.mean_values(7)) == 19  # 1 + sum of Euler's phi(q) for q = 1..7


# ----------------------------------------------------------------------------- Closest selectors


def _closest_reference(xs, selected):
    """Plain Python: per query i the selected j minimising (j == i, |i - j|, j), else None."""
    out = []
    for i in range(len(xs)):
        picks = [j for j in range(len(xs)) if selected(xs[j], xs[i], j, i)]
        out.append(min(picks, key=lambda j: (j == i, abs(i - j), j)) if picks else None)
    return out


@given(inputs)
def test_closest_reads_the_nearest_selected_key(xs):
    same = rasp.Closest(Select(tokens, tokens, Comparison.EQ))
    want = _closest_reference(xs, lambda k, q, j, i: k == q)
    assert rasp.evaluate(Aggregate(same, indices), xs) == want
    smaller = Aggregate(rasp.Closest(Select(tokens, tokens, Comparison.LT)), indices)
    assert rasp.evaluate(smaller, xs) == _closest_reference(xs, lambda k, q, j, i: k < q)
    later = Aggregate(rasp.Closest(Select(indices, indices, Comparison.GT)), tokens)
    ref = _closest_reference(xs, lambda k, q, j, i: j > i)
    assert rasp.evaluate(later, xs) == [None if j is None else xs[j] for j in ref]


def test_closest_ties_self_and_none():
    sel = rasp.Closest(Select(tokens, tokens, Comparison.EQ))
    # position 2 ties between positions 1 and 3 (distance 1): the earlier wins
    assert rasp.evaluate(Aggregate(sel, indices), [1, 1, 1, 1, 1]) == [1, 0, 1, 2, 3]
    # position 0 selects itself and position 4: another key beats its own position however far
    assert rasp.evaluate(Aggregate(sel, indices), [1, 0, 2, 0, 1]) == [4, 3, 2, 1, 0]
    assert rasp.evaluate(Aggregate(sel, indices), [2, 0, 1, 3]) == [0, 1, 2, 3]  # only itself: itself
    none = rasp.Closest(Select(tokens, tokens, Comparison.GT))
    assert rasp.evaluate(Aggregate(none, indices), [3, 1, 2]) == [None, 0, 0]  # none selected: None
    assert rasp.evaluate(Aggregate(none, Map(float, indices, numerical=True), numerical=True), [3, 1]) == [
        0,
        0.0,
    ]


def test_closest_validates_only_as_an_aggregate_selector():
    sel = rasp.Closest(Select(tokens, tokens, Comparison.LEQ, name="le"), name="near")
    rasp.validate(Aggregate(sel, tokens), VOCAB, MAX_LEN)  # several keys selected: still one value
    for bad in (rasp.SelectorWidth(sel), Aggregate(sel & Select(tokens, tokens, Comparison.EQ), tokens)):
        assert any("Closest" in why for _, why in rasp.problems(bad, VOCAB, MAX_LEN))
    src = rasp.to_source(Aggregate(sel, tokens), VOCAB, MAX_LEN)
    assert "r.Closest(le)" in src and "abs(i - j)" in src  # the rule is printed with the program
