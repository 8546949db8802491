"""What the planner may choose at each site, and how a choice becomes pass options.

A :class:`Candidate` is one registered pass with fixed options, applied to a set of sites: linear
layers or embedding tables (by module path, through the quantization passes' ``include``) or
attention sites (by index, through ``layers``). The core names passes only by their registry names; a candidate whose pass is
not registered is refused with the list of known ones.

``MENU`` holds the candidates tcomp offers; ``default_menu(target)`` the ones a plan considers when
the user does not pick (fp8 only where the target computes in fp8).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tcomp.errors import InputError
from tcomp.options import suggest
from tcomp.targets import Target


@dataclass(frozen=True)
class Candidate:
    """``pass_name`` with ``options``, applied per site of ``kind``."""

    name: str
    pass_name: str
    kind: Literal["linear", "attention", "embedding"]
    options: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    summary: str = ""

    def step(self, sites: Sequence[str]) -> tuple[str, dict[str, Any]]:
        """``(pass name, options)`` rewriting exactly ``sites`` (see :func:`site_key`)."""
        opts = dict(self.options)
        if self.kind == "linear":
            opts.update(include=tuple(_literal(s) for s in sorted(sites)), skip_first_last=False)
        elif self.kind == "embedding":
            opts.update(include=tuple(_literal(s) for s in sorted(sites)))
        else:
            opts["layers"] = tuple(sorted(attention_index(s) for s in sites))
        return self.pass_name, opts

    def all_sites(self) -> tuple[str, dict[str, Any]]:
        """``(pass name, options)`` over every site the pass itself would take."""
        opts = dict(self.options)
        if self.kind == "linear":
            opts.update(include=("*",), skip_first_last=False)
        return self.pass_name, opts


MENU: dict[str, Candidate] = {
    c.name: c
    for c in (
        Candidate("int8", "quantize.int8_weight", "linear", summary="int8 weights, per channel"),
        Candidate("w8a8", "quantize.int8_dynamic", "linear", summary="int8 weights and per-token int8 activations"),
        Candidate("fp8", "quantize.fp8_weight", "linear", summary="fp8 (e4m3) weights"),
        Candidate("int4_g128", "quantize.int4_weight", "linear", {"group": 128}, "int4 weights, groups of 128"),
        Candidate("int4_g32", "quantize.int4_weight", "linear", {"group": 32}, "int4 weights, groups of 32"),
        Candidate("gptq_g128", "quantize.int4_gptq", "linear", {"group": 128}, "int4 GPTQ, groups of 128"),
        Candidate("awq_g128", "quantize.int4_awq", "linear", {"group": 128}, "int4 with activation-aware scales, groups of 128"),
        Candidate("awq_g32", "quantize.int4_awq", "linear", {"group": 32}, "int4 with activation-aware scales, groups of 32"),
        Candidate("w1", "binarize", "linear", summary="1-bit weights (sign and per-channel scale)"),
        Candidate("emb_int8", "quantize.int8_embedding", "embedding", summary="int8 embedding tables, a scale per row"),
        Candidate("linear_hedgehog", "attention.linear", "attention", {"feature_map": "hedgehog"},
                  "linear attention, hedgehog maps fitted on the calibration data"),  # fmt: skip
        Candidate("linear_elu1", "attention.linear", "attention", {"feature_map": "elu1"}, "linear attention, elu+1"),
        Candidate("softmax_free", "attention.softmax_free", "attention", summary="softmax-free (SOFT) attention"),
    )
}


def default_menu(target: Target) -> tuple[str, ...]:
    """The candidates a plan weighs by default: every format the target runs, the fitted linear
    attention and softmax-free attention (elu1 and GPTQ only when asked: the first rarely holds on
    a pretrained model, the second costs a calibration solve per site)."""
    names = ["int8", "w8a8", "int4_g128", "int4_g32", "w1", "emb_int8", "linear_hedgehog", "softmax_free"]
    try:
        target.flops_per_s("fp8")
        names.insert(2, "fp8")
    except InputError:
        pass
    return tuple(names)


def menu(names: Sequence[str] | None, target: Target, registered: Sequence[str]) -> list[Candidate]:
    """The candidates ``names`` picks (None: :func:`default_menu`); unknown names are errors."""
    chosen = []
    for n in default_menu(target) if names is None else names:
        if n not in MENU:
            raise InputError(f"unknown planner candidate {n!r}{suggest(n, MENU)}; the candidates are {sorted(MENU)}")
        c = MENU[n]
        if c.pass_name not in registered:
            raise InputError(f"candidate {n!r} needs the pass {c.pass_name!r}, which is not registered")
        chosen.append(c)
    if not chosen:
        raise InputError("candidates=() leaves the planner nothing to choose; leave it out for the default menu")
    return chosen


def site_key(kind: str, name: str | int) -> str:
    """``linear:<module path>``, ``embedding:<module path>`` or ``attention:<index>``."""
    return f"{kind}:{name}"


def attention_index(site: str) -> int:
    return int(site.split(":", 1)[1])


def _literal(path: str) -> str:
    """An fnmatch pattern matching exactly ``path`` (``[``, ``*`` and ``?`` escaped)."""
    name = path.split(":", 1)[1] if path.startswith(("linear:", "embedding:")) else path
    out = re.sub(r"([\[\]*?])", r"[\1]", name)
    assert fnmatch.fnmatchcase(name, out)
    return out
