"""Hypothesis strategies: random valid RASP programs over small vocabularies."""

from __future__ import annotations

from hypothesis import assume
from hypothesis import strategies as st

from tcomp import rasp
from tcomp.rasp import language as L

VOCAB = [0, 1, 2, 3]
MAX_LEN = 5
_CMPS = list(L.Comparison)


@st.composite
def programs(draw, vocab=VOCAB, max_len=MAX_LEN, max_ops=5):
    """A random program: a tree of Map/SequenceMap/Select/Aggregate (also over Closest)/SelectorWidth
    over tokens and indices (value sets kept small), valid for ``rasp.validate``."""
    cat: list[L.SOp] = [L.tokens, L.indices]
    num: list[L.SOp] = []
    sets = {L.tokens.id: list(vocab), L.indices.id: list(range(max_len))}
    last: L.SOp = L.tokens
    for _ in range(draw(st.integers(1, max_ops))):
        kind = draw(st.sampled_from(["map", "seqmap", "agg", "width", "num", "closest"]))
        x = draw(st.sampled_from(cat))
        if kind == "map":
            table = {v: draw(st.integers(0, 3)) for v in sets[x.id]}
            e = L.Map(table.__getitem__, x)
        elif kind == "seqmap":
            y = draw(st.sampled_from(cat))
            table = {(a, b): draw(st.integers(0, 3)) for a in sets[x.id] for b in sets[y.id]}
            e = L.SequenceMap(lambda a, b, t=table: t[a, b], x, y)
        elif kind == "width":
            y = draw(st.sampled_from(cat))
            e = L.SelectorWidth(_selector(draw, x, y, sets))
        elif kind == "agg":
            # keys unique per position (indices), each query value matching at most one key value
            q = draw(st.sampled_from(cat))
            target = {v: draw(st.one_of(st.none(), st.integers(0, max_len - 1))) for v in sets[q.id]}
            sel = L.Select(L.indices, q, lambda k, qv, t=target: t[qv] == k)
            if draw(st.booleans()):
                sel = sel & _selector(draw, x, q, sets)
            e = L.Aggregate(sel, draw(st.sampled_from(cat)))
        elif kind == "closest":  # any selector: the closest selected key (ties, its own position last)
            y = draw(st.sampled_from(cat))
            e = L.Aggregate(L.Closest(_selector(draw, x, y, sets)), draw(st.sampled_from(cat)))
        else:
            table = {v: draw(st.sampled_from([0, 1, 0.5, -2])) for v in sets[x.id]}
            m = L.Map(table.__getitem__, x, numerical=True)
            y = draw(st.sampled_from(cat))
            e = L.Aggregate(_selector(draw, x, y, sets), m, numerical=True)
        sets.update(L.value_sets(e, vocab, max_len))
        if e.numerical:
            num.append(e)
        elif len(sets[e.id]) > 1:  # a one-value variable has one dim: it reads back as numerical
            cat.append(e)
        else:
            continue
        last = e
    assume(last is not L.tokens)
    if draw(st.integers(0, 2)) == 0:  # the output a linear classifier (Classify) over a few variables
        last = _classify(draw, cat[:2] + cat[-2:], sets, vocab, max_len)
    rasp.validate(last, vocab, max_len)
    return last


def _classify(draw, pool: list[L.SOp], sets: dict, vocab, max_len) -> L.Classify:
    """Weights in quarters and a bias lowering class c by c/64; a number read is a numerical Map of
    a categorical input with values in halves, scored by value x row (its table linear). Every
    score is then a multiple of 1/8 plus the bias, so any two class scores differ by >= 1/64 and
    the float32 model never meets a tie the evaluator would break differently."""
    ins = list({x.id: x for x in draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3))}.values())
    classes = ["x", "y", "z"]
    q = st.sampled_from([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0])
    weights = [{v: [draw(q) for _ in classes] for v in sets[x.id]} for x in ins]
    if draw(st.booleans()):
        x = draw(st.sampled_from(pool))
        table = {v: draw(st.sampled_from([0.0, 0.5, 1.0, -2.0])) for v in sets[x.id]}
        number = L.Map(table.__getitem__, x, numerical=True)
        row = [draw(q) for _ in classes]
        ins.append(number)
        weights.append({v: [v * r for r in row] for v in set(table.values())})
    return L.Classify(ins, weights, [-c / 64 for c in range(len(classes))], classes)


def _selector(draw, keys, queries, sets):
    def one():
        if draw(st.booleans()):
            return L.Select(keys, queries, draw(st.sampled_from(_CMPS)))
        true = {(k, q) for k in sets[keys.id] for q in sets[queries.id] if draw(st.booleans())}
        return L.Select(keys, queries, lambda k, q, t=frozenset(true): (k, q) in t)

    s = one()
    op = draw(st.sampled_from(["", "&", "|", "~"]))
    if op == "&":
        s = s & one()
    elif op == "|":
        s = s | one()
    elif op == "~":
        s = ~s
    return s


inputs = st.lists(st.sampled_from(VOCAB), min_size=1, max_size=MAX_LEN)
