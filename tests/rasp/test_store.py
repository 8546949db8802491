"""Programs stored as JSON (tcomp.rasp.store): a stored program evaluates exactly as the original,
and the committed programs of bench/results/rasp reproduce the accuracies bench/results records."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tcomp import rasp
from tcomp.rasp import language as L
from tcomp.rasp import programs as P
from tcomp.rasp.store import dumps
from tcomp.rasp.tasks import TASKS, make_split

from .strategies import MAX_LEN, VOCAB, inputs, programs

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def roundtrip(prog: L.SOp, vocab: list, max_len: int, doc: str = "") -> rasp.StoredProgram:
    """Through JSON text, as a file holds it."""
    text = dumps(rasp.to_json(prog, vocab, max_len, doc=doc))
    return rasp.from_json(json.loads(text))


@settings(deadline=None)
@given(programs(), st.lists(inputs, min_size=1, max_size=8))
def test_random_program_roundtrips_exactly(prog, xss):
    back = roundtrip(prog, VOCAB, MAX_LEN, doc="a random program")
    assert (back.vocab, back.max_len, back.doc) == (VOCAB, MAX_LEN, "a random program")
    for xs in xss:
        assert rasp.evaluate(back.program, xs) == rasp.evaluate(prog, xs)
    # the same names, functions and tables: the printed programs are the same text
    assert rasp.to_source(back.program, VOCAB, MAX_LEN) == rasp.to_source(prog, VOCAB, MAX_LEN)


def test_values_keep_their_types_and_bits(tmp_path):
    """Tuples, bools, floats that are not short decimals, strings and None survive a file."""
    vocab, max_len = ["a", "b", "c"], 4
    pair = L.Map(lambda t: (t, t == "a"), L.tokens, name="pair")
    third = L.Map(lambda t: {"a": 1 / 3, "b": 0.1 + 0.2, "c": 1.0}[t], L.tokens, numerical=True, name="third")
    first = L.SequenceMap(lambda p, i: p[1] if i == 0 else None, pair, L.indices, name="first")
    prev = L.Aggregate(L.Select(L.indices, L.indices, lambda k, q: k == q - 1), pair, name="prev")
    width = L.SelectorWidth(
        L.Select(prev, pair, L.Comparison.EQ) | ~L.Select(first, first, L.Comparison.TRUE)
    )
    scaled = L.SequenceMap(lambda t, w: t * w, third, width, numerical=True, name="scaled")
    mean = L.Aggregate(L.Select(L.indices, L.indices, L.Comparison.LEQ), scaled, numerical=True, name="mean")
    both = L.SequenceMap(lambda w, p: (w, p), width, pair, name="both")
    rows = {
        v: [0.1 * k, 1 / 3, -0.2 * len(v[1][0])]
        for k, v in enumerate(L.value_sets(both, vocab, max_len)[both.id])
    }
    out = L.Classify([both, mean], [rows, {}], [0.0, 0.05, 1 / 7], ["x", ("y", 1), 2.5], name="out")
    path = tmp_path / "p.json"
    rasp.save_json(path, out, vocab, max_len, doc="types")
    back = rasp.load_json(path)
    for n in range(1, max_len + 1):
        for xs in itertools.product(vocab, repeat=n):
            want, got = rasp.evaluate_all(out, xs), rasp.evaluate_all(back.program, xs)
            byname = {e.name: got[e.id] for e in rasp.walk(back.program)}
            for e in rasp.walk(out):
                assert byname[e.name] == want[e.id], e.name
                assert [type(v) for v in byname[e.name]] == [type(v) for v in want[e.id]], e.name


def test_a_table_reading_a_numerical_default_roundtrips():
    """A table over a numerical Map that holds 0 where its input has no value (here position 0,
    which has no previous token) stores the 0 entry too, as the printer does."""
    prev = L.Aggregate(L.Select(L.indices, L.indices, lambda k, q: k == q - 1), L.tokens, name="prev")
    one = L.Map(lambda t: 1, prev, numerical=True, name="one")
    out = L.Map(lambda v: v + 10, one, name="out")
    back = roundtrip(out, [0, 1, 2], 4)
    for n in range(1, 5):
        for xs in itertools.product([0, 1, 2], repeat=n):
            assert rasp.evaluate(back.program, xs) == rasp.evaluate(out, xs)
    assert rasp.evaluate(back.program, [2, 1]) == [10, 11]


def test_unstorable_values_and_malformed_files_are_refused_with_the_place(tmp_path):
    odd = L.Map(lambda t: frozenset([t]), L.tokens, name="odd")
    with pytest.raises(TypeError, match="'odd'.*frozenset"):
        rasp.to_json(odd, [0, 1], 3)
    data = rasp.to_json(P.reverse(), [0, 1, 2], 4)
    with pytest.raises(ValueError, match="format"):
        rasp.from_json({**data, "format": "something else"})
    broken = {**data, "exprs": [{**data["exprs"][0], "keys": "nowhere"}, *data["exprs"][1:]]}
    with pytest.raises(ValueError, match=r"entry 0 .*'nowhere'"):
        rasp.from_json(broken)
    unknown = {**data, "exprs": [{**data["exprs"][0], "op": "Reduce"}]}
    with pytest.raises(ValueError, match="unknown op 'Reduce'"):
        rasp.from_json(unknown)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not JSON"):
        rasp.load_json(bad)


# ------------------------------------------------------------------ the committed programs


def _stem(row: dict) -> str:
    """The file name bench/rasp_train.py gives a row's program (``_stem`` there)."""
    preset = row.get("preset", "cpu")
    return f"{row['task']}-{row['seed']}" + ("" if preset == "cpu" else f"-{preset}")


def _recorded() -> dict[str, dict]:
    rows = json.loads((RESULTS / "rasp_train.json").read_text())["rows"]
    return {_stem(r): r for r in rows if r.get("program_accuracy") is not None}


def test_every_recorded_program_is_stored_for_its_task():
    recorded = _recorded()
    assert sorted(recorded) == sorted(p.stem for p in (RESULTS / "rasp").glob("*.json"))
    for stem, row in recorded.items():
        stored = rasp.load_json(RESULTS / "rasp" / f"{stem}.json")
        task = TASKS[row["task"]]
        assert stored.vocab == list(range(task.vocab)) and stored.max_len == task.max_len, stem


# one program per kind of part: width heads; categorical heads and tables; closest heads and a
# linear readout; numerical heads and tables (all 30 were checked so when they were converted)
@pytest.mark.parametrize("stem", ["hist-0", "reverse-0", "sort-0-closest", "double-hist-0"])
def test_stored_program_reproduces_its_recorded_test_accuracy(stem):
    """The program bench/rasp_train.py extracted scored ``program_accuracy`` on the test split
    (seed + 20_000, every token counted); the stored JSON scores exactly that again."""
    row = _recorded()[stem]
    stored = rasp.load_json(RESULTS / "rasp" / f"{stem}.json")
    task = TASKS[row["task"]]
    assert stored.vocab == list(range(task.vocab)) and stored.max_len == task.max_len
    right = total = 0
    for x, y in make_split(task, 1000, row["seed"] + 20_000).values():
        for xs, want in zip(x.tolist(), y.tolist()):
            got = [0 if v is None else v for v in rasp.evaluate(stored.program, xs)]  # no value: class 0
            right += sum(a == b for a, b in zip(got, want))
            total += len(want)
    assert total == row["data"]["test_tokens"]
    assert right / total == row["program_accuracy"]


def test_stored_hist_program_computes_hist():
    """hist-0 was learned exactly (accuracy 1.0): on fresh random inputs it is the task's label."""
    stored = rasp.load_json(RESULTS / "rasp" / "hist-0.json")
    task, rng = TASKS["hist"], random.Random(7)
    for _ in range(300):
        xs = [rng.randrange(task.vocab) for _ in range(rng.randint(1, task.max_len))]
        assert rasp.evaluate(stored.program, xs) == task.label(xs, task.vocab)
