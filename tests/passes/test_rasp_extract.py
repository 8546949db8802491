"""rasp.extract: compile -> capture -> extract round trips; trained-model agreement lives in
tests/rasp/test_transformer_program.py; models outside the family are refused."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings

import tcomp
from tcomp import rasp
from tcomp.capture import capture
from tcomp.pipeline import get_pass
from tcomp.rasp import programs as P
from tcomp.rasp.compile import compile_program, output_index
from tcomp.rasp.extract import NotAProgram, extract
from tests.rasp.strategies import MAX_LEN, VOCAB, programs

EXAMPLE = (torch.tensor([[0, 1, 2], [3, 2, 1]]),)


def all_inputs(max_len: int):
    for n in range(1, max_len + 1):
        yield from itertools.product(VOCAB, repeat=n)


def round_trip(prog, max_len: int) -> None:
    model = compile_program(prog, VOCAB, MAX_LEN)
    res = get_pass("rasp.extract")(capture(model, EXAMPLE, {}).gm)
    assert res.rewrites == 0 and not res.notes[0].startswith("refused"), res.notes
    extracted, vocab, _ = rasp.load_source(res.sites[0]["program"])  # through the printed source
    for xs in all_inputs(max_len):  # exhaustive up to max_len
        want = output_index(model, rasp.evaluate(prog, list(xs)))
        got = rasp.evaluate(extracted, [VOCAB.index(t) for t in xs])
        if prog.numerical:
            assert got == pytest.approx(want, rel=1e-6, abs=1e-6)
        else:
            assert got == want, (xs, got, want)


@pytest.mark.parametrize(
    "prog", [P.reverse(), P.sort(MAX_LEN), P.histogram(), P.length(), P.frac_prevs(1)], ids=lambda p: p.name
)
def test_library_round_trip(prog):
    round_trip(prog, 4)


@settings(max_examples=15)
@given(programs())
def test_random_program_round_trip(prog):
    round_trip(prog, 3)


def test_extracted_sort_reads_as_a_program():
    ex = extract(capture(compile_program(P.sort(MAX_LEN), VOCAB, MAX_LEN), EXAMPLE, {}).gm)
    src = rasp.to_source(ex.program, ex.vocab, ex.max_len)
    assert "r.SelectorWidth(" in src and "r.Aggregate(" in src and "r.SequenceMap(" in src
    assert ex.n_used == ex.n_variables == 5  # tokens, indices, key, rank, sorted


def test_analysis_pass_in_the_pipeline_leaves_the_graph_alone():
    model = compile_program(P.reverse(), VOCAB, MAX_LEN)
    fast = tcomp.optimize(model, EXAMPLE, target="cpu", passes=["rasp.extract"])
    rec = next(r for r in fast.report.passes if r.name == "rasp.extract")
    assert "def build(r)" in rec.sites[0]["program"]
    assert torch.equal(fast(EXAMPLE[0]), model(EXAMPLE[0]))


def test_refuses_a_zoo_bert_naming_the_weight():
    from tcomp.models import get

    entry = get("bert", seq=8)
    gm = capture(entry.model, entry.example_inputs, entry.example_kwargs).gm
    res = get_pass("rasp.extract")(gm)
    assert res.notes[0].startswith("refused") and "embeddings.word" in res.notes[0]
    with pytest.raises(NotAProgram, match="not one-hot"):
        extract(gm)


def test_refuses_soft_attention_naming_the_head():
    model = compile_program(P.reverse(), VOCAB, MAX_LEN)
    w = {k: v.clone() for k, v in model.state_dict().items()}
    w["layers.2.attn.wq"] = w["layers.2.attn.wq"] / 50  # the flip head's scores no longer clear BOS
    with pytest.raises(NotAProgram, match=r"layers\.2\.attn.*not hard attention"):
        extract(w)


# ----------------------------------------------------------------------------- Closest heads

CLOSEST = {  # the predicate's variables: neither, the key or the query (or both) indices
    "same_token": rasp.Aggregate(
        rasp.Closest(rasp.Select(rasp.tokens, rasp.tokens, rasp.Comparison.EQ)), rasp.indices
    ),
    "earlier": rasp.Aggregate(
        rasp.Closest(rasp.Select(rasp.indices, rasp.indices, rasp.Comparison.LT)), rasp.tokens
    ),
    "key_below_token": rasp.Aggregate(
        rasp.Closest(rasp.Select(rasp.indices, rasp.tokens, rasp.Comparison.LT)), rasp.tokens
    ),
    "token_at_least_index": rasp.Aggregate(
        rasp.Closest(rasp.Select(rasp.tokens, rasp.indices, rasp.Comparison.GEQ)), rasp.indices
    ),
}


@pytest.mark.parametrize("name", list(CLOSEST))
def test_closest_round_trip_reads_a_closest_head(name):
    round_trip(CLOSEST[name], 4)
    ex = extract(capture(compile_program(CLOSEST[name], VOCAB, MAX_LEN), EXAMPLE, {}).gm)
    assert any(isinstance(e, rasp.Closest) for e in rasp.walk(ex.program))


def test_refuses_a_position_term_out_of_closest_order():
    model = compile_program(CLOSEST["same_token"], VOCAB, MAX_LEN)
    w = {k: v.clone() for k, v in model.state_dict().items()}
    wk = w["layers.0.attn.wk"]
    pos = model.layout.blocks[rasp.indices.id].dims
    (col,) = [c for c in range(wk.shape[-1]) if float(w["layers.0.attn.wq"][0, pos[2], c]) != 0]
    # query position 2: rank key 4 (distance 2) above key 3 (distance 1)
    wk[0, pos[4], col], wk[0, pos[3], col] = wk[0, pos[3], col].clone(), wk[0, pos[4], col].clone()
    with pytest.raises(NotAProgram, match=r"layers\.0\.attn.*closest order"):
        extract(w)
