"""Compile RASP programs to transformer weights, capture them with tcomp, extract the programs back
from the weights and check that both agree with the original on every input up to a length.

    .venv/bin/python examples/rasp_roundtrip.py
"""

from __future__ import annotations

import itertools

import torch

import tcomp
from tcomp import rasp
from tcomp.rasp import programs
from tcomp.rasp.compile import compile_program, output_index

VOCAB, MAX_LEN = [1, 2, 3], 4

for prog in (programs.sort(MAX_LEN), programs.reverse()):
    model = compile_program(prog, VOCAB, MAX_LEN)
    fast = tcomp.optimize(
        model, (torch.tensor([[0, 1, 2], [2, 1, 0]]),), target="cpu", passes=["rasp.extract"]
    )
    record = next(r for r in fast.report.passes if r.name == "rasp.extract")
    source = record.sites[0]["program"]
    extracted, _, _ = rasp.load_source(source)
    inputs = [list(xs) for n in range(1, MAX_LEN + 1) for xs in itertools.product(VOCAB, repeat=n)]
    for xs in inputs:
        want = rasp.evaluate(prog, xs)
        assert model.run(xs) == want
        assert rasp.evaluate(extracted, [VOCAB.index(t) for t in xs]) == output_index(model, want)
    print(
        f"# {prog.name}: compiled and extracted programs agree on all {len(inputs)} inputs; {record.notes[0]}"
    )
    print(source.split("\n\nclass _Lists")[0])
