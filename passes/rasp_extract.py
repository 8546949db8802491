"""Pass ``rasp.extract``: read the RASP program a Transformer-Program-style model computes.

An analysis pass: the graph is returned unchanged (EXACT, zero rewrites) and the report carries the
program -- ``sites[0]["program"]`` is standalone Python source (``tcomp.rasp.to_source``), the
notes say how many variables the weights hold and how many the output uses (the rest is pruned).
Precondition: the model is in the family described in ``tcomp.rasp.extract`` (disentangled one-hot
residual stream, hard attention heads, lookup-table MLPs, as built by ``tcomp.rasp.compile`` and
``tcomp.rasp.export``). Any other model is refused in the notes with the weight that
breaks the assumption; the graph is untouched either way.
"""

from __future__ import annotations

import torch.fx as fx

from tcomp.contract import EXACT, PassResult
from tcomp.options import NoOptions
from tcomp.rasp.extract import NotAProgram, extract
from tcomp.rasp.printer import to_source
from tcomp.registry import PassContext, register_pass


@register_pass("rasp.extract", EXACT, after=("canonicalize",))
def rasp_extract(gm: fx.GraphModule, opts: NoOptions, ctx: PassContext) -> PassResult:
    """Recover the RASP program of a Transformer Program from its weights (graph unchanged). No options."""
    try:
        ex = extract(gm)
    except NotAProgram as exc:
        return PassResult(gm, 0, [f"refused: {exc}"])
    source = to_source(
        ex.program, ex.vocab, ex.max_len, doc=f"RASP program extracted by tcomp ({ex.program.name})"
    )
    notes = [
        f"extracted a RASP program: {ex.heads} heads, {ex.mlps} MLP tables, "
        f"{ex.n_variables} variables in the weights, {ex.n_used} used by the output (rest pruned)"
    ]
    site = {"program": source, "output": ex.program.encoding, "vocab": ex.vocab, "max_len": ex.max_len}
    return PassResult(gm, 0, notes, [site])
