"""Transformer Programs: the discrete model, its exported weights and the RASP program extracted
from them agree exactly; a tiny training run learns a task well above chance."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tcomp import rasp
from tcomp.capture import capture
from tcomp.rasp import language as L
from tcomp.rasp.compile import compile_program as rasp_compile
from tcomp.rasp.export import _key_units, round_classifier, to_module
from tcomp.rasp.extract import NotAProgram, extract
from tcomp.rasp.language import mean_values
from tcomp.rasp.program_model import ProgramConfig, TransformerProgram
from tcomp.rasp.tasks import TASKS, Task, make_data, make_split
from tcomp.rasp.train import accuracy, predict, predictions, tau_schedule, train


def predictions_agree(tp: TransformerProgram, x: torch.Tensor) -> None:
    tp.eval()
    module = tp.discrete()
    with torch.no_grad():
        want = predict(tp(x))
        assert torch.equal(predict(module(x)), want)
    ex = extract(capture(module, (x[:2],), {}).gm)
    for row, w in zip(x.tolist(), want.tolist()):
        got = [0 if v is None else v for v in rasp.evaluate(ex.program, row)]  # no value: argmax of zeros
        assert got == w


@settings(max_examples=4)
@given(st.integers(0, 10_000), st.sampled_from(["reverse", "hist", "dyck-1"]))
def test_random_discrete_program_exports_and_extracts_exactly(seed, task):
    t = TASKS[task]
    torch.manual_seed(seed)
    tp = TransformerProgram(ProgramConfig(vocab=t.vocab, max_len=6, classes=t.classes, layers=2))
    x = torch.randint(0, t.vocab, (16, 6), generator=torch.Generator().manual_seed(seed))
    predictions_agree(tp, x)


def test_tiny_training_learns_hist_and_extracts_exactly():
    res = train("hist", seed=0, steps=150, batch=32, n_test=300, layers=1, cat_heads=0, width_heads=1, mlps=0)
    # chance is 1/9; always answering the most frequent count (1) scores about 0.39
    assert res.accuracy > 0.6, res.accuracy
    x, _ = make_data(TASKS["hist"], 200, seed=123)
    predictions_agree(res.model, x)


def test_task_labels():
    assert TASKS["sort"].label([3, 1, 2], 8) == [1, 2, 3]
    assert TASKS["hist"].label([3, 1, 3], 8) == [2, 1, 2]
    assert TASKS["dyck-1"].label([0, 1, 1, 0], 2) == [1, 2, 0, 0]
    assert TASKS["most-freq"].label([2, 5, 5, 1], 8) == [5, 2, 1, 8]


def test_selection_is_the_best_validation_checkpoint_over_restarts():
    kw = dict(layers=1, cat_heads=0, width_heads=1, mlps=0)
    res = train(
        "hist", seed=3, steps=24, batch=16, n_train=300, n_val=200, n_test=200, restarts=2, evals=3, **kw
    )
    assert {r for r, _, _ in res.val_history} == {0, 1}  # both restarts were scored
    assert len(res.val_history) == 6
    accs = [a for _, _, a in res.val_history]
    assert res.val_accuracy == max(accs)
    # the kept model is the checkpoint it names, and its score is the validation split's (seed + 10_000)
    assert (res.restart, res.step, res.val_accuracy) in res.val_history
    assert accuracy(res.model, make_split(TASKS["hist"], 200, 3 + 10_000)) == res.val_accuracy
    assert accuracy(res.model, make_split(TASKS["hist"], 200, 3 + 20_000)) == res.accuracy


def test_temperature_schedule_endpoints():
    assert tau_schedule(0, 100) == 3.0
    assert abs(tau_schedule(99, 100) - 0.01) < 1e-12
    taus = [tau_schedule(s, 100, 2.0, 0.05) for s in range(100)]
    assert taus[0] == 2.0 and abs(taus[-1] - 0.05) < 1e-12
    assert all(a > b for a, b in zip(taus, taus[1:]))  # geometric: strictly decreasing


def test_split_lengths_and_labels():
    for name in ("reverse", "most-freq", "dyck-2"):
        t = TASKS[name]
        split = make_split(t, 300, seed=1)
        assert sum(len(x) for x, _ in split.values()) == 300
        for n, (x, y) in split.items():
            assert t.min_len <= n <= t.max_len and x.shape == y.shape == (len(x), n)
            assert int(x.min()) >= 0 and int(x.max()) < t.vocab and int(y.max()) < t.classes
            assert all(t.label(row, t.vocab) == want for row, want in zip(x.tolist(), y.tolist()))
    # Dyck inputs as the paper's: half are a balanced word (cut to 15), which never fails ("F" = 0);
    # of uniform random brackets only about C(15, 7) / 2**15 = 0.2 never fail
    _, y = make_data(TASKS["dyck-1"], 400, seed=2)
    assert 0.45 < float((y != 0).all(1).float().mean()) < 0.75


# ------------------------------------------------------------------ numerical heads and MLPs


def _frac_class(f: float) -> int:
    return 0 if f < 1 / 3 else (1 if f <= 1 / 2 else 2)


def _frac_zero_label(xs, v):
    """Class of the fraction of zeros among the tokens so far: < 1/3, <= 1/2, more."""
    return [_frac_class(xs[: i + 1].count(0) / (i + 1)) for i in range(len(xs))]


FRAC_ZERO = Task("frac-zero", 3, 6, _frac_zero_label, 3)  # needs a mean over the prefix: a numerical head


def every_input(vocab: int, max_len: int) -> list[torch.Tensor]:
    return [torch.tensor(list(itertools.product(range(vocab), repeat=n))) for n in range(1, max_len + 1)]


def agrees_on_every_input(tp: TransformerProgram, vocab: int, max_len: int) -> None:
    """The eval-mode model, its exported weights, the extracted program and its printed source
    predict alike on every input up to ``max_len`` long."""
    module = tp.discrete()
    ex = extract(capture(module, (torch.zeros(2, max_len, dtype=torch.long),), {}).gm)
    printed, _, _ = rasp.load_source(rasp.to_source(ex.program, ex.vocab, ex.max_len))
    for x in every_input(vocab, max_len):
        with torch.no_grad():
            out = tp(x) / 10.0  # the output variable's block
            assert torch.allclose(module(x), out, atol=1e-3)
            want = predict(out)
        for row, w in zip(x.tolist(), want.tolist()):
            assert [0 if v is None else v for v in rasp.evaluate(ex.program, row)] == w
            assert [0 if v is None else v for v in rasp.evaluate(printed, row)] == w


def numerical_parts(program: L.SOp) -> tuple[list[L.Aggregate], list[L.Map]]:
    exprs = L.walk(program)
    means = [e for e in exprs if isinstance(e, L.Aggregate) and e.numerical]
    tables = [e for e in exprs if isinstance(e, L.Map) and not e.numerical and e.x.numerical]
    return means, tables


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 10_000))
def test_numerical_heads_export_and_extract_exactly_on_every_input(seed):
    torch.manual_seed(seed)
    cfg = ProgramConfig(vocab=3, max_len=4, classes=3, layers=2, num_heads=1, num_mlps=1)
    tp = TransformerProgram(cfg).eval()
    module = tp.discrete()
    ex = extract(capture(module, (torch.zeros(2, 4, dtype=torch.long),), {}).gm)
    for x in every_input(3, 4):
        with torch.no_grad():
            want = predict(tp(x))
            assert torch.equal(predict(module(x)), want)
        for row, w in zip(x.tolist(), want.tolist()):
            assert [0 if v is None else v for v in rasp.evaluate(ex.program, row)] == w


def frac_zero_choices(max_len: int) -> dict:
    """A hand-written program: mean of 1[token == 0] over keys <= the query, then its class."""
    K = max(3, max_len + 1)
    prefix = [[b <= a for b in range(K)] for a in range(K)]
    table = [_frac_class(f) for f in L.mean_values(max_len)]
    return {"layers": [[("num", 1, 1, 0, 0, prefix), ("nmlp", 0, table)]], "output": 2}


def test_hand_written_numerical_program_computes_its_task_and_extracts_as_a_mean():
    cfg = ProgramConfig(vocab=3, max_len=5, classes=3, layers=1, cat_heads=0, width_heads=0, mlps=0)
    module = to_module(frac_zero_choices(5), cfg)
    ex = extract(capture(module, (torch.zeros(2, 5, dtype=torch.long),), {}).gm)
    means, tables = numerical_parts(ex.program)
    assert len(means) == 1 and len(tables) == 1
    assert means[0].selector.predicate is L.Comparison.LEQ  # key index <= query index
    src = rasp.to_source(ex.program, ex.vocab, ex.max_len)
    printed, _, _ = rasp.load_source(src)
    for x in every_input(3, 5):
        with torch.no_grad():
            got = predict(module(x))
        for row, g in zip(x.tolist(), got.tolist()):
            want = _frac_zero_label(row, 3)
            assert g == want
            assert rasp.evaluate(ex.program, row) == want
            assert rasp.evaluate(printed, row) == want


def test_tiny_training_with_a_numerical_head_learns_a_prefix_fraction():
    kw = dict(layers=1, cat_heads=0, width_heads=0, mlps=0, num_heads=1, num_mlps=1)
    small = dict(steps=400, batch=32, n_train=2000, n_val=300, n_test=300, evals=4)
    res = train(FRAC_ZERO, seed=0, lr=0.1, tau_end=0.05, **small, **kw)
    # chance is 1/3 and always answering the most frequent class scores about 0.47; a categorical
    # model of this size cannot take a mean over the prefix
    assert res.accuracy > 0.9, res.accuracy
    x, _ = make_data(FRAC_ZERO, 100, seed=5)
    predictions_agree(res.model, x)
    means, _ = numerical_parts(extract(capture(res.model.discrete(), (x[:2],), {}).gm).program)
    assert means, "the learned program reads no numerical head"


def test_numerical_values_are_the_ones_extraction_reads():
    for n in (1, 4, 7, 15):
        assert mean_values(n) == L.mean_values(n)


def test_num_mlps_need_a_numerical_variable():
    with pytest.raises(ValueError, match="num_heads"):
        TransformerProgram(ProgramConfig(layers=1, num_mlps=1))


def test_extract_refuses_broken_numerical_heads():
    cfg = ProgramConfig(vocab=3, max_len=5, classes=3, layers=1, cat_heads=0, width_heads=0, mlps=0)
    module = to_module(frac_zero_choices(5), cfg)
    w = {k: v.clone() for k, v in module.state_dict().items()}
    half = dict(w)
    half["layers.0.attn.wv"] = w["layers.0.attn.wv"] * 0.5  # averages 0.5 * 1[token == 0]
    with pytest.raises(NotAProgram, match="0/1 indicator"):
        extract(half)
    uneven = dict(w)
    wk = w["layers.0.attn.wk"].clone()
    wk[0, 2 + 3 + 1, 3] = 0.7  # query index 3 scores key index 1 lower than keys 0, 2, 3
    uneven["layers.0.attn.wk"] = wk
    with pytest.raises(NotAProgram, match="unequally"):
        extract(uneven)


# ------------------------------------------------------------ closest heads (select_closest)


def _nearest_same_label(xs, v):
    """Per position the nearest *other* position holding the same token (the earlier at equal
    distance), itself when there is none: the closest order over the positions of equal tokens."""
    out = []
    for i in range(len(xs)):
        same = [j for j in range(len(xs)) if xs[j] == xs[i]]
        out.append(min(same, key=lambda j: (j == i, abs(i - j), j)))
    return out


# repeated tokens select several keys: only the tie rule reads one of them
NEAREST_SAME = Task("nearest-same", 3, 5, _nearest_same_label, 5)


def _closest_model(seed: int, max_len: int, more: bool) -> TransformerProgram:
    torch.manual_seed(seed)
    cfg = ProgramConfig(
        vocab=3,
        max_len=max_len,
        classes=4,
        layers=2,
        cat_heads=int(more),
        key_heads=int(more),
        closest_heads=2,
    )
    return TransformerProgram(cfg).eval()


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 4), st.booleans())
def test_closest_heads_export_and_extract_exactly_on_every_input(seed, max_len, more):
    agrees_on_every_input(_closest_model(seed, max_len, more), 3, max_len)


# random models the property test above once failed on (seed, max_len, more):
# 3351: the output table never reads one value of an input (a table row that never fires), which
#       extraction took for a second table writing the output's dims ("reads several variables");
#       (1736 likewise with more=False);
# 365:  the output table takes one value (one dim, read as 0/1), which extraction output as the number 1;
# 1550: the same, where that 0/1 variable is 0 everywhere at run time: the printed output table left out 0;
# 1423: a table reading such a 0/1 variable: its printed table left out the 0 the variable holds where
#       its own input has no value (a numerical Map's default)
CLOSEST_REGRESSIONS = [(3351, 2, True), (1736, 2, False), (365, 2, False), (1550, 2, False), (1423, 2, False)]


@pytest.mark.parametrize("seed,max_len,more", CLOSEST_REGRESSIONS)
def test_closest_heads_regressions_export_and_extract_exactly(seed, max_len, more):
    agrees_on_every_input(_closest_model(seed, max_len, more), 3, max_len)


def _nearest_same_module(max_len: int):
    eq = [[a == b for b in range(4)] for a in range(4)]  # query tokens, key tokens, ==, value indices
    cfg = ProgramConfig(
        vocab=3, max_len=max_len, classes=max_len, layers=1, cat_heads=0, width_heads=0, mlps=0
    )
    return to_module({"layers": [[("closest", 0, 0, 1, eq)]], "output": 2}, cfg)


def test_closest_head_reads_the_nearest_key_on_ties_and_extracts_as_closest():
    module = _nearest_same_module(4)
    ex = extract(capture(module, (torch.zeros(2, 4, dtype=torch.long),), {}).gm)
    (agg,) = [e for e in L.walk(ex.program) if isinstance(e, L.Aggregate)]
    assert isinstance(agg.selector, L.Closest) and agg.selector.a.predicate is L.Comparison.EQ
    for x in every_input(3, 4):
        with torch.no_grad():
            got = predict(module(x))
        for row, g in zip(x.tolist(), got.tolist()):
            assert g == _nearest_same_label(row, 3) == rasp.evaluate(ex.program, row)


def test_extract_refuses_a_closest_head_with_a_broken_position_term():
    w = {k: v.clone() for k, v in _nearest_same_module(4).state_dict().items()}
    K, pos = 5, 2 + 3  # K = max(vocab, max_len + 1, classes); indices start after one, bos, 3 tokens
    wk = w["layers.0.attn.wk"]
    col = K + 2 + 1  # the rank column of query position 1: keys 0 and 2 tie on distance, 0 must win
    wk[0, pos + 0, col], wk[0, pos + 2, col] = wk[0, pos + 2, col].clone(), wk[0, pos + 0, col].clone()
    with pytest.raises(NotAProgram, match=r"layers\.0\.attn.*not select_closest"):
        extract(w)


def test_tiny_training_with_a_closest_head_learns_what_a_key_head_cannot():
    small = dict(steps=300, batch=32, n_train=1000, n_val=200, n_test=300, evals=3, lr=0.1, tau_end=0.05)
    base = dict(layers=1, cat_heads=0, width_heads=0, mlps=0)
    near = train(NEAREST_SAME, seed=0, closest_heads=1, **base, **small)
    key = train(NEAREST_SAME, seed=0, key_heads=1, **base, **small)
    # a key head gives no value wherever the token repeats (several keys): about half the positions
    assert near.accuracy > 0.95 and key.accuracy < 0.75, (near.accuracy, key.accuracy)
    x, _ = make_data(NEAREST_SAME, 100, seed=5)
    predictions_agree(near.model, x)
    prog = extract(capture(near.model.discrete(), (x[:2],), {}).gm).program
    assert any(isinstance(e, L.Closest) for e in L.walk(prog)), "the learned program reads no closest head"


# ------------------------------------------------------------- key heads (categorical, key variable)


def _inverse_label(xs, v):
    return [xs.index(i) for i in range(len(xs))]


# the inverse of a permutation: the position whose token is the query's index (a lookup by key value)
INVERSE = Task("inverse", 5, 5, _inverse_label, 5, sample=lambda n, rng: rng.sample(range(n), n))


@settings(max_examples=4, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 4), st.booleans())
def test_key_heads_export_and_extract_exactly_on_every_input(seed, max_len, more):
    torch.manual_seed(seed)
    cfg = ProgramConfig(
        vocab=3, max_len=max_len, classes=4, layers=2, cat_heads=int(more), key_heads=1 + int(more)
    )
    tp = TransformerProgram(cfg).eval()
    with torch.no_grad():  # denser predicates: queries selecting none, one and several keys
        for p in tp.keys:
            p[-(cfg.K**2) :] += 0.1
    agrees_on_every_input(tp, 3, max_len)


def test_key_head_with_ties_gives_no_value_as_the_categorical_aggregate():
    # query indices, key tokens, ==, value indices: the position holding the query's index as a token
    K = 4
    eq = [[a == b for b in range(K)] for a in range(K)]
    choices = {"layers": [[("key", 1, 0, 1, eq)]], "output": 2}
    # 4 classes, 3 values: the last class is never output (its unembed column reads nothing)
    cfg = ProgramConfig(vocab=3, max_len=3, classes=4, layers=1, cat_heads=0, width_heads=0, mlps=0)
    module = to_module(choices, cfg)
    ex = extract(capture(module, (torch.zeros(2, 3, dtype=torch.long),), {}).gm)
    (agg,) = [e for e in L.walk(ex.program) if isinstance(e, L.Aggregate)]
    assert not agg.numerical and agg.selector.predicate is L.Comparison.EQ
    for x in every_input(3, 3):
        with torch.no_grad():
            got = module(x)
        for row, g in zip(x.tolist(), got.tolist()):
            hits = [[j for j, t in enumerate(row) if t == i] for i in range(len(row))]
            want = [h[0] if len(h) == 1 else None for h in hits]  # none or several keys: no value
            assert rasp.evaluate(ex.program, row) == want
            for gi, w in zip(g, want):
                assert gi == pytest.approx([float(w == c) for c in range(4)], abs=1e-4)


def test_tiny_training_with_a_key_head_learns_the_inverse_permutation():
    small = dict(steps=150, batch=32, n_train=1000, n_val=200, n_test=300, evals=3, lr=0.1, tau_end=0.05)
    res = train(INVERSE, seed=0, layers=1, cat_heads=0, width_heads=0, mlps=0, key_heads=1, **small)
    _, y = make_data(INVERSE, 2000, seed=9)
    majority = float((y == y.flatten().mode().values).float().mean())
    assert majority < 0.4 and res.accuracy > 0.95, (majority, res.accuracy)
    x, _ = make_data(INVERSE, 100, seed=5)
    predictions_agree(res.model, x)
    prog = extract(capture(res.model.discrete(), (x[:2],), {}).gm).program
    assert any(
        isinstance(e, L.Aggregate) and not e.numerical and e.selector.keys is not L.indices
        for e in L.walk(prog)
    ), "the learned program looks up no key variable"


def test_extract_refuses_a_key_head_decoder_that_writes_for_several_keys():
    eq = [[a == b for b in range(4)] for a in range(4)]
    cfg = ProgramConfig(vocab=3, max_len=3, classes=3, layers=1, cat_heads=0, width_heads=0, mlps=0)
    w = {
        k: v.clone()
        for k, v in to_module({"layers": [[("key", 1, 0, 1, eq)]], "output": 2}, cfg).state_dict().items()
    }
    w["layers.0.mlp.b1"] = w["layers.0.mlp.b1"] * 0.5  # decoders off centre: wrong values for some counts
    with pytest.raises(NotAProgram, match="key head"):
        extract(w)


# ------------------------------------------------------------------ linear (classifier) readout


@settings(max_examples=3, deadline=None)
@given(st.integers(0, 10_000), st.booleans())
def test_linear_readout_exports_and_extracts_as_a_classifier_on_every_input(seed, every_kind):
    torch.manual_seed(seed)
    more = dict(key_heads=1, num_heads=1, num_mlps=1) if every_kind else {}
    cfg = ProgramConfig(vocab=3, max_len=4, classes=4, layers=2, readout="linear", **more)
    tp = TransformerProgram(cfg).eval()
    module = tp.discrete()
    assert module.argmax_output
    ex = extract(capture(module, (torch.zeros(2, 4, dtype=torch.long),), {}).gm)
    assert isinstance(ex.program, L.Classify)
    printed, _, _ = rasp.load_source(rasp.to_source(ex.program, ex.vocab, ex.max_len))
    # key heads (no value on ties) and tables of means do not compile back; the rest does
    recompiled = None if every_kind else rasp_compile(printed, ex.vocab, ex.max_len)
    for x in every_input(3, 4):
        want = predictions(tp, x)
        assert torch.equal(predictions(module, x), want)
        for row, w in zip(x.tolist(), want.tolist()):
            assert rasp.evaluate(ex.program, row) == w
            assert rasp.evaluate(printed, row) == w
            assert recompiled is None or recompiled.run(row) == w


def test_rounded_classifier_breaks_ties_to_the_earlier_class_with_a_margin():
    w = torch.randn(3, 5, 9)
    w[1, 2] = w[1, 3]  # two values scoring alike
    b = torch.zeros(9)
    rw, rb = round_classifier(w, b)
    assert float(rw.abs().max()) == 8.0
    assert torch.equal(rw * 64, torch.round(rw * 64))  # multiples of 1/64
    # every pair of class scores differs by at least delta: any two values, one per variable
    scores = (rw[0][:, None, None] + rw[1][None, :, None] + rw[2][None, None, :]).flatten(0, 2) + rb
    gaps = (scores[:, :, None] - scores[:, None, :]).abs() + torch.eye(9) * 1e9
    assert float(gaps.min()) >= 1 / 2048
    # all-zero weights: every class ties, the first one wins
    zw, zb = round_classifier(torch.zeros(1, 2, 3), torch.zeros(3))
    assert int((zw[0, 0] + zb).argmax()) == 0


def test_linear_readout_training_learns_hist_and_agrees_exactly():
    res = train(
        "hist", seed=0, steps=150, batch=32, n_test=300, layers=1, cat_heads=0, width_heads=1, mlps=0,
        readout="linear",
    )
    assert res.accuracy > 0.6, res.accuracy
    x, _ = make_data(TASKS["hist"], 200, seed=123)
    module = res.model.discrete()
    want = predictions(res.model, x)
    assert torch.equal(predictions(module, x), want)
    ex = extract(capture(module, (x[:2],), {}).gm)
    for row, w in zip(x.tolist(), want.tolist()):
        assert rasp.evaluate(ex.program, row) == w


def test_classifier_reads_a_numerical_mean_by_its_values_and_refuses_a_head_temporary():
    cfg = ProgramConfig(
        vocab=3, max_len=4, classes=3, layers=1, cat_heads=0, width_heads=1, mlps=0, num_heads=1, readout="linear"
    )
    torch.manual_seed(0)
    module = TransformerProgram(cfg).eval().discrete()
    D = module.unembed.shape[0]
    module.unembed.data[D - 1, 0] = 1.0  # the numerical head's mean (the last dim) scores class 0
    ex = extract(capture(module, (torch.zeros(2, 4, dtype=torch.long),), {}).gm)
    mean = [e for e in L.walk(ex.program) if isinstance(e, L.Aggregate) and e.numerical]
    assert len(mean) == 1 and mean[0] in ex.program.inputs
    for x in every_input(3, 4):
        want = predictions(module, x)
        for row, w in zip(x.tolist(), want.tolist()):
            assert rasp.evaluate(ex.program, row) == w
    module.unembed.data[D - 2, 1] = 1.0  # the width head's 1/(w+1), a decoder input, not a variable
    with pytest.raises(NotAProgram, match="internal"):
        extract(capture(module, (torch.zeros(2, 4, dtype=torch.long),), {}).gm)


def test_two_tables_reading_the_same_variables_export_to_separate_layers():
    """Two MLP tables (and two numerical tables) of one layer reading the same inputs: extraction
    groups table units by what they read, so the export puts the second ones in a layer of their own."""
    cfg = ProgramConfig(
        vocab=3, max_len=4, classes=4, layers=1, width_heads=0, mlps=2, num_heads=1, num_mlps=2, readout="linear"
    )
    torch.manual_seed(0)
    tp = TransformerProgram(cfg).eval()
    with torch.no_grad():
        for p in tp.mlps:  # both read (tokens, indices)
            p[:3], p[3:6] = torch.tensor([5.0, 0, 0]), torch.tensor([0, 5.0, 0])
    tables = [it[:3] for it in tp.choices()["layers"][0] if it[0] == "mlp"]
    assert tables[0] == tables[1]
    module = tp.discrete()
    ex = extract(capture(module, (torch.zeros(2, 4, dtype=torch.long),), {}).gm)
    for x in every_input(3, 4):
        want = predictions(tp, x)
        assert torch.equal(predictions(module, x), want)
        for row, w in zip(x.tolist(), want.tolist()):
            assert rasp.evaluate(ex.program, row) == w


@pytest.mark.parametrize("M", [4, 7, 15])
def test_key_decoder_is_exact_near_every_reachable_average(M):
    """The exported model's residual is a little off one-hot (float32 error, scaled by the
    attention's sharpness); a key-head decoder must still write exactly 1 or exactly 0, or the
    error grows through later heads (a trained double-hist model disagreed with its program on
    0.8 % of tokens when the decoder was a tent). Here every average is pushed off by 1e-3."""
    K, D = 3, 8
    units = _key_units(0, 4, 1, M, K, D)  # value 0's average in dim 0, BOS average in dim K
    w1 = torch.stack([u[0] for u in units], 1).double()
    b1 = torch.tensor([u[1] for u in units]).double()
    w2 = torch.stack([u[2] for u in units]).double()
    for m in range(M + 1):
        for c in range(m + 1):
            for dc, db in itertools.product((-1e-3, 1e-3), repeat=2):
                x = torch.zeros(D, dtype=torch.float64)
                x[0], x[K] = c / (m + 1) + dc, 1 / (m + 1) + db
                y = float((torch.relu(x @ w1 + b1) @ w2)[4])
                assert y == (1.0 if (c, m) == (1, 1) else 0.0), (c, m, y)


def test_classifier_reads_a_table_with_one_output_value():
    """A table that always gives the same value writes one dim, which extraction reads as a 0/1
    number (found in a trained most-freq model); the classifier scales its row by that number."""
    cfg = ProgramConfig(vocab=3, max_len=4, classes=3, layers=1, cat_heads=1, width_heads=0, mlps=1, readout="linear")
    torch.manual_seed(1)
    tp = TransformerProgram(cfg).eval()
    with torch.no_grad():
        before = 3  # tokens, indices, the head's output
        table = tp.mlps[0][2 * before :].view(cfg.K * cfg.K, cfg.K)
        table[:] = -5.0
        table[:, 2] = 5.0  # every pair of values -> 2
        tp.classifier[3, 2] += 4.0  # the table's value scores class 2
    module = tp.discrete()
    ex = extract(capture(module, (torch.zeros(2, 4, dtype=torch.long),), {}).gm)
    consts = [x for x in ex.program.inputs if x.numerical]
    assert len(consts) == 1
    for x in every_input(3, 4):
        want = predictions(tp, x)
        assert torch.equal(predictions(module, x), want)
        for row, w in zip(x.tolist(), want.tolist()):
            assert rasp.evaluate(ex.program, row) == w


@pytest.mark.parametrize("reader", ["cat-query", "width", "closest", "value", "table"])
def test_later_readers_of_a_table_with_one_output_value(reader):
    """A table with one output value writes one dim, read as a 0/1 number (1: the table's value,
    0: none, where its input has none); a later head comparing it (``_select`` / ``_closest``),
    copying it, or a two-input table reading it must read it alike (found in a trained double-hist)."""
    cfg = ProgramConfig(
        vocab=3, max_len=4, classes=3, layers=2, cat_heads=1, width_heads=1, closest_heads=1, mlps=1, readout="linear"
    )
    torch.manual_seed(2)
    tp = TransformerProgram(cfg).eval()
    K = cfg.K

    def pick(p: torch.Tensor, start: int, n: int, var: int) -> None:
        p[start : start + n] = -5.0
        p[start + var] = 5.0

    with torch.no_grad():
        pick(tp.mlps[0], 0, 5, 2)  # layer 0's table (variable 5) reads the cat head's output, maybe none
        pick(tp.mlps[0], 5, 5, 0)  # and tokens
        table = tp.mlps[0][10:].view(K * K, K)
        table[:], table[:, 2] = -5.0, 5.0  # always value 2
        # layer 1's readers read tokens and indices, but the one named by ``reader``: variable 5
        for p, n, var in [(tp.heads[1], 2, 0), (tp.widths[1], 2, 0), (tp.closest[1], 3, 0)]:
            for j in range(n):
                pick(p, 6 * j, 6, var)
        pick(tp.mlps[1], 0, 9, 0)
        pick(tp.mlps[1], 9, 9, 1)
        one = 5
        if reader == "cat-query":
            pick(tp.heads[1], 0, 6, one)
        elif reader == "value":  # copied by the cat head, and by the closest head after a width head
            pick(tp.heads[1], 6, 6, one)  # keyed by one dim of variable 5 that is 0 everywhere
            pick(tp.widths[1], 6, 6, one)
            tp.widths[1][12:].view(K, K)[:] = -5.0
            tp.widths[1][12:].view(K, K)[:, 0] = 5.0
            pick(tp.closest[1], 12, 6, one)
        elif reader == "width":
            pick(tp.widths[1], 0, 6, one)
            pick(tp.widths[1], 6, 6, one)
        elif reader == "closest":
            pick(tp.closest[1], 0, 6, 0)
            pick(tp.closest[1], 6, 6, one)
        else:
            pick(tp.mlps[1], 0, 9, one)
            pick(tp.mlps[1], 9, 9, 0)
    module = tp.discrete()
    ex = extract(capture(module, (torch.zeros(2, 4, dtype=torch.long),), {}).gm)
    ones = [e for e in L.walk(ex.program) if isinstance(e, L.SequenceMap) and e.numerical]
    assert ones, "the one-value table is read as a 0/1 number"
    for x in every_input(3, 4):
        want = predictions(tp, x)
        assert torch.equal(predictions(module, x), want)
        for row, w in zip(x.tolist(), want.tolist()):
            assert rasp.evaluate(ex.program, row) == w
