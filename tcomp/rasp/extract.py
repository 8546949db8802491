"""Read a RASP program back out of the weights of a Transformer-Program-style model.

The family (what ``tcomp.rasp.compile`` and ``tcomp.rasp.export`` build), found by
parameter name in a captured graph:

* ``embed_tokens`` (V+1, D) one-hot rows (the last one BOS), ``embed_positions`` (M+1, D) with a
  column of ones (``one``) and one-hot rows 1..M (``indices``); every other dim starts at zero;
* ``layers.{l}.attn.wq/wk/wv`` (H, D, d) and ``wo`` (H, d, D): each head reads its query from one
  variable, its key from one, its value from one (or the ``bos`` dim: a SelectorWidth head) and
  writes new dims; scores take two levels per query (selected / not), BOS in between (or level
  with the selected ones for SelectorWidth);
  a head whose value is one dim holding ``1[var == c]`` of a categorical variable, written to one
  dim, is a *numerical* head: the mean of the indicator over the selected keys (0 when only BOS is),
  so every selected key must score the same;
  a head whose value is a categorical variable *and* the ``bos`` dim, selected keys scoring level
  with BOS, is a *key head*: it writes the averages ``c / (m + 1)`` of each value (``c`` of the
  ``m`` selected keys hold it) and ``1 / (m + 1)``; MLP units of its layer decode them to the value
  where exactly one key is selected (the categorical Aggregate: no value for none or several);
  a head whose query and key also read ``indices`` (besides their variables), or whose selected
  keys score unequally, is a *closest head* (``Closest(Select(...))``): its scores, over every
  (value, position) of query and key, select by the values alone and rank each query's selected
  keys in ``closest_order``, ``GAP`` apart;
* ``layers.{l}.mlp.w1`` (D, h), ``b1`` (h), ``w2`` (h, D): ReLU units, grouped by the variable they
  write, each group a lookup table of one or two categorical variables, of one numerical variable
  with finitely many values (a numerical head's means), or a width decoder;
* ``unembed`` (D, k): the output variable (each class column copies one of its dims), or a linear
  classifier over categorical variables (bias in the ``one`` row), read as a ``Classify``.

A variable with one dim is numerical, more dims are categorical (values: the dims). A categorical
table (or a head copying one) whose output takes one value writes one dim: it is read as a number,
1 where it holds that value, 0 where it holds none; heads compare it and tables read it as these two
values (``_levels``), checked on the weights like any other value. Dims nothing writes, and those of
a variable that is 0 everywhere, add nothing to a reader. Anything else is refused with the weight
that breaks the assumption.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor

from tcomp.errors import InputError
from tcomp.rasp import language as L

TOL = 1e-4
GAP = 12.0  # score margin (in logits) to BOS: the losing keys keep < exp(-12) = 6e-6 of the attention


class NotAProgram(InputError):
    """The model is outside the Transformer-Program family; the message names the weight."""


@dataclass
class Var:
    expr: L.SOp
    dims: list[int]
    labels: list  # value of each dim (categorical); [] for numerical
    values: list | None = None  # numerical: the values it can hold, where finitely many


@dataclass
class Extracted:
    program: L.SOp
    vocab: list[int]  # token ids 0..V-1
    max_len: int
    n_variables: int  # variables found in the weights
    n_used: int  # of those, the ones the output depends on (the rest is pruned)
    heads: int = 0
    mlps: int = 0
    notes: list[str] = field(default_factory=list)


def weights_of(gm: fx.GraphModule) -> dict[str, Tensor]:
    """The tensors a graph reads through ``get_attr`` (parameters and buffers), by name."""
    out = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            obj = gm
            for part in n.target.split("."):
                obj = getattr(obj, part)
            if isinstance(obj, Tensor):
                out[n.target] = obj.detach().to(torch.float64)
    return out


def extract(source: fx.GraphModule | dict[str, Tensor]) -> Extracted:
    """The RASP program computed by a captured Transformer-Program-style model (or its weights)."""
    w = (
        weights_of(source)
        if isinstance(source, fx.GraphModule)
        else {k: v.double() for k, v in source.items()}
    )
    _require_family(w)
    return _Reader(w).run()


def _require_family(w: dict[str, Tensor]) -> None:
    need = ["embed_tokens", "embed_positions", "unembed"]
    missing = [k for k in need if k not in w]
    if not missing:
        return
    why = [
        f"no weight named {', '.join(missing)} (a Transformer Program has embed_tokens, embed_positions, "
        "layers.N.attn.wq/wk/wv/wo, layers.N.mlp.w1/b1/w2 and unembed)"
    ]
    for name, t in w.items():
        if t.dim() == 2 and t.shape[0] > 8 and "emb" in name:
            counts = (t.abs() > TOL).sum(1)
            r = int(counts.argmax())
            if int(counts[r]) != 1:
                why.append(
                    f"{name}: row {r} has {int(counts[r])} nonzero entries, so tokens are not one-hot in a "
                    "disentangled residual stream"
                )
                break
    raise NotAProgram("not a Transformer Program: " + "; ".join(why))


def _one_hot_rows(t: Tensor, name: str, rows: range) -> list[int]:
    out = []
    for r in rows:
        nz = (t[r].abs() > TOL).nonzero().flatten().tolist()
        if len(nz) != 1 or abs(float(t[r, nz[0]]) - 1) > TOL:
            raise NotAProgram(f"{name} row {r} is not one-hot (nonzero at dims {nz[:8]})")
        out.append(nz[0])
    return out


def _named_select(qv: Var, kv: Var, table: dict[tuple, bool], where: str) -> L.Select:
    """``Select(kv, qv, pred)`` for the ``(key, query) -> selected`` table, a named comparison
    where one fits."""
    true = frozenset(k for k, v in table.items() if v)
    name = "select_" + "_".join(c for c in where.split("(")[1].split(")")[0].split() if c.isdigit())
    for cmp in L.Comparison:  # a named comparison reads better than a table
        if all(cmp(k, q) == v for (k, q), v in table.items()):
            return L.Select(kv.expr, qv.expr, cmp, name=name)
    return L.Select(kv.expr, qv.expr, lambda k, q, t=true: (k, q) in t, name=name)


class _Reader:
    def __init__(self, w: dict[str, Tensor]):
        self.w = w
        E, P = w["embed_tokens"], w["embed_positions"]
        self.D = E.shape[1]
        self.V, self.M = E.shape[0] - 1, P.shape[0] - 1
        tok = _one_hot_rows(E, "embed_tokens", range(self.V))
        (self.bos,) = _one_hot_rows(E, "embed_tokens", range(self.V, self.V + 1))
        ones = [d for d in range(self.D) if bool(((P[:, d] - 1).abs() < TOL).all())]
        if len(ones) != 1:
            raise NotAProgram(
                f"embed_positions has {len(ones)} all-ones columns; the family has exactly one ('one')"
            )
        self.one = ones[0]
        Pi = P.clone()
        Pi[:, self.one] = 0
        pos = _one_hot_rows(Pi, "embed_positions (besides 'one')", range(1, self.M + 1))
        self.vars: list[Var] = [
            Var(L.tokens, tok, list(range(self.V))),
            Var(L.indices, pos, list(range(self.M))),
        ]
        self.by_dim: dict[int, Var] = {d: v for v in self.vars for d in v.dims}
        self.widths: dict[int, L.Select] = {}  # dim holding 1/(w+1) -> its selector
        # an output dim of a key head -> (selector, value var, {value dim: output dim}, BOS output dim)
        self.keyheads: dict[int, tuple] = {}
        self.heads = self.mlps = 0

    # -- helpers ---------------------------------------------------------------------------------
    def _var_of(self, dims: list[int], where: str) -> Var | None:
        dims = [d for d in dims if d not in (self.one, self.bos)]
        if not dims:
            return None
        written = [d for d in dims if not self._zero(d)]
        if len(written) < len(dims):
            # dims that are zero everywhere (nothing writes them, or a constant-zero variable): reading
            # them adds nothing
            dims = written or [next((d for d in dims if d in self.by_dim), dims[0])]
        if len(dims) == 1 and dims[0] not in self.by_dim and dims[0] not in self.widths:
            # a dim nothing writes holds 0 everywhere (e.g. a numerical Map whose table is all zeros)
            zero = L.Map(lambda v: 0, L.indices, numerical=True, name=f"zero_{dims[0]}")
            return self._new(zero, dims, [], where, values=[0])
        owners = {id(self.by_dim[d]) if d in self.by_dim else None for d in dims}
        if None in owners:
            raise NotAProgram(
                f"{where} reads dims {[d for d in dims if d not in self.by_dim]} that nothing wrote"
            )
        if len(owners) != 1:
            names = sorted({self.by_dim[d].expr.name for d in dims})
            raise NotAProgram(
                f"{where} reads several variables at once ({', '.join(names)}); a head reads one"
            )
        return self.by_dim[dims[0]]

    def _new(self, expr: L.SOp, dims: list[int], labels: list, where: str, values: list | None = None) -> Var:
        clash = [
            d
            for d in dims
            if d in self.by_dim or d in (self.one, self.bos) or d in self.widths or d in self.keyheads
        ]
        if clash:
            raise NotAProgram(f"{where} writes dims {clash} that already hold a variable (not disentangled)")
        v = Var(expr, dims, labels, values)
        self.vars.append(v)
        self.by_dim.update({d: v for d in dims})
        return v

    def _levels(self, v: Var, where: str, zero_one: bool = False) -> list[tuple[dict[int, float], Any]]:
        """Each value ``v`` can hold, as (residual dims set -> their entries, value): a categorical
        variable's dims one at a time; a numerical one's finitely many values at its dim (0: the
        dim off), for a head (``zero_one``) only 0 and 1 (a table with one output value, read as
        0/1, or a copy of one)."""
        if v.labels:
            return [({d: 1.0}, lab) for d, lab in zip(v.dims, v.labels)]
        if v.values is None or (zero_one and not set(v.values) <= {0, 1}):
            raise NotAProgram(
                f"{where} reads numerical {v.expr.name}, whose values are "
                f"{'not a known finite set' if v.values is None else v.values}; it compares categorical "
                "variables or 0/1 ones (a table with one output value)"
            )
        return [({v.dims[0]: float(x)} if x else {}, x) for x in v.values]

    def _vector(self, at: dict[int, float]) -> Tensor:
        x = self._basis([])
        for d, t in at.items():
            x[d] = t
        return x

    def _zero(self, d: int) -> bool:
        """Whether dim ``d`` holds 0 everywhere: nothing writes it, or a variable that is always 0."""
        v = self.by_dim.get(d)
        return d not in self.widths and (v is None or (not v.labels and v.values == [0]))

    def _basis(self, dims: list[int]) -> Tensor:
        x = torch.zeros(self.D, dtype=torch.float64)
        x[self.one] = 1.0
        x[dims] = 1.0
        return x

    # -- reading ---------------------------------------------------------------------------------
    def run(self) -> Extracted:
        layer = 0
        while f"layers.{layer}.attn.wq" in self.w:
            self._attention(layer)
            self._mlp(layer)
            layer += 1
        U = self.w["unembed"]
        cols = [(U[:, j].abs() > TOL).nonzero().flatten().tolist() for j in range(U.shape[1])]
        copies = all(len(c) <= 1 and all(abs(float(U[d, j]) - 1) < TOL for d in c) for j, c in enumerate(cols))
        if not copies or self.one in {d for c in cols for d in c}:
            return self._done(self._classifier(U))
        if not any(cols):
            raise NotAProgram("unembed reads nothing: every class scores 0")
        col_of = {c[0]: j for j, c in enumerate(cols) if c}  # residual dim -> class
        out = self._var_of(list(col_of), "unembed")
        if out is None:
            raise NotAProgram("unembed reads no variable")
        prog = out.expr
        if out.labels:
            relabel = {lab: col_of.get(d) for d, lab in zip(out.dims, out.labels)}
            if any(lab != col for lab, col in relabel.items()):
                prog = L.Map(relabel.__getitem__, prog, name="output")
        elif out.values is not None and U.shape[1] > 1:  # one column: the number is the output
            prog = self._number_output(out, col_of.get(out.dims[0]), U.shape[1])
        return self._done(prog)

    def _number_output(self, out: Var, col: int | None, classes: int) -> L.SOp:
        """The class an unembedding copying one numerical dim (a categorical table with one output
        value, read as 0/1, or a copy of one) into class column ``col`` predicts for each value ``v``
        the dim holds: the argmax of the scores (``v`` at ``col``, 0 elsewhere; the first class where
        every score is 0, as the model's argmax). The variable itself where that is ``v`` (values 0/1, ``col`` 1)."""
        table: dict = {}
        for v in out.values:
            scores = [0.0] * classes
            if col is not None:
                scores[col] = float(v)
            table[v] = scores.index(max(scores))  # every class 0 (v = 0): the first, as the model's argmax
        if all(table[v] == v for v in out.values):
            return out.expr
        if len(set(table.values())) == 1:  # one class everywhere: no need to read the variable
            return L.Map(lambda v, c=table[out.values[0]]: c, L.indices, name="output")
        return L.Map(lambda v, t=table: t[v], out.expr, name="output")

    def _done(self, prog: L.SOp) -> Extracted:
        used = {e.id for e in L.walk(prog)}
        n_used = sum(v.expr.id in used for v in self.vars)
        return Extracted(prog, list(range(self.V)), self.M, len(self.vars), n_used, self.heads, self.mlps)

    def _classifier(self, U: Tensor) -> L.Classify:
        """An unembedding that is not a copy of one variable: a linear classifier (``Classify``)
        over the variables whose rows are nonzero (categorical, or numbers with finitely many values),
        its bias the ``one`` row."""
        rows = (U.abs() > TOL).any(1).nonzero().flatten().tolist()
        inputs: list[Var] = []
        for d in rows:
            if d == self.one:
                continue
            v = self.by_dim.get(d)
            if d in self.widths or d in self.keyheads:
                raise NotAProgram(
                    f"unembed row {d} scores a head's internal dim (a width or key-head average), not a variable"
                )
            if self._zero(d):
                continue  # a dim that holds 0 everywhere adds nothing
            if not v.labels and v.values is None:
                raise NotAProgram(
                    f"unembed row {d} scores numerical {v.expr.name}, whose values are not a known finite set; "
                    "a classifier output reads categorical variables (one-hot blocks) or finitely many numbers"
                )
            if v not in inputs:
                inputs.append(v)
        weights = []
        for v in inputs:
            if v.labels:
                rows_of = {lab: U[d] for d, lab in zip(v.dims, v.labels) if bool((U[d].abs() > TOL).any())}
            else:  # a number (e.g. a table with one output value, read as 0/1): it scales its row
                rows_of = {val: val * U[v.dims[0]] for val in v.values}
            weights.append({k: [float(x) for x in r] for k, r in rows_of.items()})
        classes = list(range(U.shape[1]))
        bias = [float(x) for x in U[self.one]]
        return L.Classify([v.expr for v in inputs], weights, bias, classes, name="output")

    def _attention(self, layer: int) -> None:
        p = f"layers.{layer}.attn."
        wq, wk, wv, wo = (self.w[p + k] for k in ("wq", "wk", "wv", "wo"))
        for h in range(wq.shape[0]):
            where = f"{p}w*[{h}] (layer {layer} head {h})"
            outs = (wo[h].abs() > TOL).any(0).nonzero().flatten().tolist()
            if not outs:
                continue  # an empty head
            self.heads += 1
            rows = lambda m: (m.abs() > TOL).any(1).nonzero().flatten().tolist()  # noqa: E731
            qv, qpos = self._predicate_var(rows(wq[h]), where + " query")
            kv, kpos = self._predicate_var(rows(wk[h]), where + " key")
            vrows = rows(wv[h])
            width = vrows == [self.bos]
            key = self.bos in vrows and not width
            if (qpos or kpos) and (width or key):
                raise NotAProgram(
                    f"{where}: a SelectorWidth or key head whose wq/wk also read indices beside its variables "
                    "(a position term); only a head copying a value reads the closest key"
                )
            if qpos or kpos:
                sel = self._closest(qv, kv, wq[h] @ wk[h].T, where, True)
            else:
                sel = self._select(qv, kv, wq[h] @ wk[h].T, width or key, where)
            ov = wv[h] @ wo[h]  # (D, D): value dims -> output dims
            if key:
                self._key_head(sel, vrows, ov, outs, where)
                continue
            if width:
                if len(outs) != 1:
                    raise NotAProgram(f"{where}: a SelectorWidth head writes one dim, this one writes {outs}")
                self.widths[outs[0]] = sel
                continue
            live = [d for d in vrows if d not in (self.one, self.bos)]
            if len(outs) == 1 and live and not any(d in self.by_dim or d in self.widths for d in live):
                # the value is a dim nothing wrote (a value its variable never takes): the mean of zeros
                self._numerical_head(sel, None, ov[:, outs[0]], outs[0], layer, h, where)
                continue
            src = self._var_of(vrows, where + " value")
            if src is None:
                raise NotAProgram(f"{where} reads no value")
            if src.labels and len(src.dims) > 1 and len(outs) == 1:
                self._numerical_head(sel, src, ov[:, outs[0]], outs[0], layer, h, where)
                continue
            moved = {}
            for d in src.dims:
                tgt = (ov[d].abs() > TOL).nonzero().flatten().tolist()
                if len(tgt) != 1 or abs(float(ov[d, tgt[0]]) - 1) > TOL:
                    raise NotAProgram(f"{where}: value dim {d} is not copied to one output dim with weight 1")
                moved[d] = tgt[0]
            numerical = not src.labels
            agg = L.Aggregate(sel, src.expr, numerical=numerical, name=f"aggregate_{layer}_{h}")
            dims = [moved[d] for d in src.dims]
            values = None
            if numerical and src.values is not None and self._at_most_one(sel, qv):
                values = sorted(set(src.values) | {0})  # a copy of one key's value (0 where none)
            elif numerical and src.values is not None and set(src.values) <= {0, 1}:
                values = L.mean_values(self.M)
            self._new(agg, dims, list(src.labels), where, values=values)

    def _at_most_one(self, sel: L.Selector, qv: Var) -> bool:
        """Whether ``sel`` selects at most one key per query: a ``Closest``, or a ``Select`` of
        ``indices`` keys where each query value selects at most one position."""
        if isinstance(sel, L.Closest):
            return True
        if not isinstance(sel, L.Select) or sel.keys is not L.indices or sel.queries is not qv.expr:
            return False
        qs = qv.labels or qv.values
        return qs is not None and all(sum(sel.holds(k, q) for k in range(self.M)) <= 1 for q in qs)

    def _key_head(self, sel: L.Select, vrows: list[int], ov: Tensor, outs: list[int], where: str) -> None:
        """Record a key head: the value variable's dims and BOS, each copied with weight 1 to a dim
        of its own (decoded by the layer's MLP, see ``_key_decoder``); its other outputs hold 0."""
        src = self._var_of(vrows, where + " value")
        if src is None or not src.labels:
            raise NotAProgram(f"{where}: a head averaging BOS and a value reads a categorical value variable")
        moved = {}
        for d in [*src.dims, self.bos]:
            tgt = (ov[d].abs() > TOL).nonzero().flatten().tolist()
            if len(tgt) != 1 or abs(float(ov[d, tgt[0]]) - 1) > TOL:
                raise NotAProgram(f"{where}: value dim {d} is not copied to one output dim with weight 1")
            moved[d] = tgt[0]
        inv = moved.pop(self.bos)
        if len(set(moved.values()) | {inv}) != len(moved) + 1:
            raise NotAProgram(f"{where}: a key head writes each value and BOS to a dim of its own")
        rec = (sel, src, moved, inv)
        for t in outs:
            self.keyheads[t] = rec

    def _key_decoder(self, layer: int, rec: tuple, us: list[int], w1, b1, w2) -> None:
        """The MLP units ``us`` decoding key head ``rec``: each reads one value average and the BOS
        average; checked on every reachable pair (``c`` of ``m`` selected keys hold the value, ``m <=
        max_len``) to write the value's one-hot exactly when ``c = m = 1`` and nothing otherwise."""
        sel, src, moved, inv = rec
        where = f"layers.{layer}.mlp units {us[:4]}{'...' if len(us) > 4 else ''} (decoding a key head)"
        by_avg: dict[int, list[int]] = {}
        for u in us:
            ins = set((w1[:, u].abs() > TOL).nonzero().flatten().tolist()) - {self.one}
            avg = ins - {inv}
            if len(avg) != 1 or self.keyheads.get(next(iter(avg))) is not rec:
                raise NotAProgram(
                    f"{where}: unit {u} reads {sorted(ins)}; a decoder unit reads one value and BOS"
                )
            by_avg.setdefault(avg.pop(), []).append(u)
        outs = sorted({d for u in us for d in (w2[u].abs() > TOL).nonzero().flatten().tolist()})
        moved = dict(moved)
        for t in set(by_avg) - set(moved.values()):  # a dim the value never reaches: always 0
            moved[-1 - t] = t
        dims = []
        for d, t in moved.items():
            ul = by_avg.get(t, [])
            hot = None
            for m in range(self.M + 1):
                for c in range(m + 1 if d >= 0 else 1):
                    x = self._basis([])
                    x[t], x[inv] = c / (m + 1), 1 / (m + 1)
                    y = (torch.relu(x @ w1[:, ul] + b1[ul]) @ w2[ul])[outs] if ul else torch.zeros(len(outs))
                    got = self._read(y, outs, where, categorical=True)
                    if (c, m) == (1, 1):
                        hot = got
                    elif got is not None:
                        raise NotAProgram(f"{where}: writes a value where {c} of {m} selected keys hold it")
            if d < 0:
                continue
            if hot is None:
                raise NotAProgram(f"{where}: writes no value for value dim {d} selected alone")
            dims.append(outs[hot])
        if len(set(dims)) != len(dims):
            raise NotAProgram(f"{where}: two values decode to the same dim")
        agg = L.Aggregate(sel, src.expr, name=f"lookup_{layer}_{inv}")
        self._new(agg, dims, list(src.labels), where)

    def _numerical_head(
        self, sel: L.Select, src: Var | None, col: Tensor, out: int, layer: int, h: int, where: str
    ) -> None:
        """A head averaging ``1[src == c]`` (one value dim, weight 1) into the one dim ``out``
        (``src`` None: a dim that is 0 everywhere)."""
        if src is None:
            zero = L.Map(lambda v: 0, L.indices, numerical=True, name=f"zero_{layer}_{h}")
            self._new(
                L.Aggregate(sel, zero, numerical=True, name=f"mean_{layer}_{h}"),
                [out],
                [],
                where,
                values=L.mean_values(self.M),
            )
            return
        weights = {lab: round(float(col[d]), 6) for d, lab in zip(src.dims, src.labels)}
        if any(w not in (0.0, 1.0) for w in weights.values()):
            raise NotAProgram(
                f"{where}: a numerical head averages a 0/1 indicator of one value; its value weights are "
                f"{weights} (value -> weight)"
            )
        weights = {lab: int(w) for lab, w in weights.items()}
        hot = [lab for lab, w in weights.items() if w == 1]
        name = f"is_{src.expr.name}_{'_'.join(map(str, hot))}"
        ind = L.Map(lambda v, t=weights: t[v], src.expr, numerical=True, name=name)
        agg = L.Aggregate(sel, ind, numerical=True, name=f"mean_{layer}_{h}")
        self._new(agg, [out], [], where, values=L.mean_values(self.M))

    def _select(self, qv: Var, kv: Var, S: Tensor, width: bool, where: str) -> L.Selector:
        table: dict[tuple, bool] = {}
        keys = [  # each key value's score column (the dims it sets, weighted by their entries)
            (S[:, list(at)] @ torch.tensor(list(at.values()), dtype=S.dtype), kl)
            for at, kl in self._levels(kv, where + " key", True)
        ]
        for qat, ql in self._levels(qv, where + " query", True):
            q = self._vector(qat)
            bos = float(q @ S[:, self.bos])
            picked = [float(q @ c) for c, _ in keys if float(q @ c) > bos + GAP]
            if picked and max(picked) - min(picked) > TOL and not width:
                return self._closest(qv, kv, S, where, False)  # a position term ranks them?
            if picked and max(picked) - min(picked) > TOL:
                raise NotAProgram(
                    f"{where}: query value {ql} scores its selected keys unequally ({min(picked):.4g} .. "
                    f"{max(picked):.4g}); a head reads one key or the mean of equally scored keys"
                )
            for c, kl in keys:
                s = float(q @ c)
                if width:
                    ok = abs(s - bos) < TOL or s < bos - GAP
                else:
                    ok = s > bos + GAP or s < bos - GAP
                if not ok:
                    raise NotAProgram(
                        f"{where}: score {s:.3g} of query value {ql} / key value {kl} is not clearly above or "
                        f"below the BOS score {bos:.3g}; the head is not hard attention"
                    )
                table[kl, ql] = s > bos - TOL
        return _named_select(qv, kv, table, where)

    def _predicate_var(self, dims: list[int], where: str) -> tuple[Var, bool]:
        """The variable a head's query (or key) compares, and whether ``indices`` dims are read
        beside it (the position term of a ``Closest`` head)."""
        live = [d for d in dims if d not in (self.one, self.bos)]
        idx = set(self.vars[1].dims)
        other = [d for d in live if d not in idx]
        if other and len(other) < len(live):
            return self._var_of(other, where) or self.vars[1], True
        return self._var_of(dims, where) or self.vars[1], False

    def _closest(self, qv: Var, kv: Var, S: Tensor, where: str, position: bool) -> L.Selector:
        """Read a head whose scores depend on the positions too, from every (value, position) of
        query and key: the selection (above / below BOS by ``GAP``) must depend on the values only,
        and each query's selected keys must either score level (a plain ``Select``) or rank in
        ``closest_order``, each position ``GAP`` above the next (``Closest(Select(...))``)."""
        P = self.vars[1]

        def combos(v: Var, what: str) -> list[tuple[Any, int, Tensor]]:  # (value, position, residual vector)
            return [
                (lab, a, self._vector({**at, pd: 1.0}))
                for at, lab in self._levels(v, where + what, True)
                for a, pd in enumerate(P.dims)
                if v is not P or pd in at
            ]

        qs, ks = combos(qv, " query"), combos(kv, " key")
        Xq, Xk = torch.stack([x for *_, x in qs]), torch.stack([x for *_, x in ks])
        bos_key = self._basis([self.bos])
        rel = Xq @ S @ Xk.T - (Xq @ S @ bos_key)[:, None]  # scores above the BOS key's
        table: dict[tuple, bool] = {}
        plain = ordered = True
        for i, (ql, a, _) in enumerate(qs):
            by_pos: dict[int, list[float]] = {}
            for j, (kl, b, _) in enumerate(ks):
                s = float(rel[i, j])
                if abs(s) <= GAP:
                    raise NotAProgram(
                        f"{where}: score of query value {ql} at position {a} / key value {kl} at position {b} is "
                        f"{s:.3g} from the BOS score, not clearly above or below it; the head is not hard attention"
                    )
                if table.setdefault((kl, ql), s > 0) != (s > 0):
                    raise NotAProgram(
                        f"{where}: whether query value {ql} selects key value {kl} depends on their positions; "
                        "a head's predicate reads its query and key variables (a position term only ranks)"
                    )
                if s > 0:
                    by_pos.setdefault(b, []).append(s)
            scores = [s for ss in by_pos.values() for s in ss]
            plain = plain and (not scores or max(scores) - min(scores) <= TOL)
            later = -math.inf  # the best score at the positions after this one in closest_order
            for b in reversed(L.closest_order(a, self.M)):
                if b in by_pos:
                    ordered = ordered and min(by_pos[b]) >= later + GAP
                    later = max(later, max(by_pos[b]))
            if not plain and not ordered:
                raise NotAProgram(
                    f"{where}: query value {ql} at position {a} scores its selected keys unequally and not in "
                    f"the closest order (other positions before its own, nearer before farther, earlier before "
                    f"later), {GAP:g} apart; the position term (wq/wk rows of indices) is not select_closest"
                )
        sel = _named_select(qv, kv, table, where)
        if ordered and (position or not plain):
            return L.Closest(sel, name=sel.name.replace("select", "closest"))
        return sel

    def _mlp(self, layer: int) -> None:
        p = f"layers.{layer}.mlp."
        w1, b1, w2 = self.w[p + "w1"], self.w[p + "b1"], self.w[p + "w2"]
        units = [u for u in range(w2.shape[0]) if bool((w2[u].abs() > TOL).any())]
        decoders: dict[int, tuple[tuple, list[int]]] = {}  # key-head decoder units, by key head
        for u in units:
            ins = [d for d in (w1[:, u].abs() > TOL).nonzero().flatten().tolist() if d in self.keyheads]
            if ins:
                rec = self.keyheads[ins[0]]
                decoders.setdefault(id(rec), (rec, []))[1].append(u)
        for rec, us in decoders.values():
            self._key_decoder(layer, rec, us, w1, b1, w2)
        units = [u for u in units if all(u not in us for _, us in decoders.values())]
        # a table's row for a value its input never takes (it reads a dim nothing writes) never fires:
        # it joins the table reading its other inputs below, not a table of its own writing the same
        # variable's dims (read as two variables)
        stray = [u for u in units if self._unwritten_input(u, w1) and not self._fires(u, w1, b1)]
        units = [u for u in units if u not in stray]
        # units reading the same variables form one table; units sharing an output dim too
        groups: list[tuple[set[int], set[int]]] = []
        by_key: dict[frozenset, int] = {}
        for u in units:
            ins = (w1[:, u].abs() > TOL).nonzero().flatten().tolist()
            key = frozenset(
                id(self.by_dim[d]) if d in self.by_dim else d for d in ins if d not in (self.one, self.bos)
            )
            dims = set((w2[u].abs() > TOL).nonzero().flatten().tolist())
            if key and key in by_key:
                groups[by_key[key]][0].add(u)
                groups[by_key[key]][1].update(dims)
            else:
                by_key.setdefault(key, len(groups))
                groups.append(({u}, dims))
        merged: list[tuple[set[int], set[int]]] = []
        for us, ds in groups:
            for g in [g for g in merged if g[1] & ds]:
                merged.remove(g)
                us, ds = us | g[0], ds | g[1]
            merged.append((us, ds))
        groups = merged
        reads = [self._read_vars(us, w1) for us, _ in groups]
        for u in stray:
            mine = self._read_vars([u], w1)
            g = next((i for i, r in enumerate(reads) if mine and mine <= r), None)
            if g is not None:  # else it belongs to no table: it adds nothing
                groups[g][0].add(u)
                groups[g][1].update((w2[u].abs() > TOL).nonzero().flatten().tolist())
        for us, ds in sorted(groups, key=lambda g: min(g[1])):
            self.mlps += 1
            self._mlp_group(layer, sorted(us), sorted(ds), w1, b1, w2)

    def _unwritten_input(self, u: int, w1: Tensor) -> bool:
        """Whether MLP unit ``u`` reads a dim nothing writes (no variable, width or key-head dim)."""
        return any(
            d not in self.by_dim and d not in (self.one, self.bos) and d not in self.widths and d not in self.keyheads
            for d in (w1[:, u].abs() > TOL).nonzero().flatten().tolist()
        )

    def _read_vars(self, us, w1: Tensor) -> set[int]:
        """The variables (by id) MLP units ``us`` read."""
        return {
            id(self.by_dim[d]) for u in us for d in (w1[:, u].abs() > TOL).nonzero().flatten().tolist() if d in self.by_dim
        }

    def _fires(self, u: int, w1: Tensor, b1: Tensor) -> bool:
        """Whether MLP unit ``u`` can be on: its pre-activation is above 0 for some value (or no
        value) of each variable it reads, dims nothing writes held at 0. A unit that never fires adds
        nothing, e.g. a table's row for a value its input never takes (an unreachable table entry):
        it reads a dim nothing writes, so it would look like a table of its own, writing dims of the
        same variable. Units reading a head's internal dims (width or key-head averages), BOS or a
        number with no known finite set of values are taken to fire."""
        readers: list[Var] = []
        for d in (w1[:, u].abs() > TOL).nonzero().flatten().tolist():
            if d == self.one:
                continue
            if d == self.bos or d in self.widths or d in self.keyheads:
                return True
            v = self.by_dim.get(d)
            if v is None:
                continue  # nothing writes it: 0 everywhere
            if not v.labels and v.values is None:
                return True
            if v not in readers:
                readers.append(v)
        options = [
            [{}, *({d: 1.0} for d in v.dims)] if v.labels else [{v.dims[0]: float(x)} for x in v.values]
            for v in readers
        ]
        for combo in itertools.product(*options):
            x = self._vector({d: t for at in combo for d, t in at.items()})
            if float(x @ w1[:, u] + b1[u]) > TOL:
                return True
        return False

    def _mlp_group(self, layer: int, us: list[int], outs: list[int], w1, b1, w2) -> None:
        where = f"layers.{layer}.mlp units {us[:4]}{'...' if len(us) > 4 else ''}"
        ins = sorted(
            {d for u in us for d in (w1[:, u].abs() > TOL).nonzero().flatten().tolist()}
            - {self.one, self.bos}
        )

        def run(dims: list[int], t: float | None = None) -> Tensor:
            x = self._basis(dims)
            if t is not None:
                x[ins[0]] = t
            return (torch.relu(x @ w1[:, us] + b1[us]) @ w2[us])[outs]

        name = f"map_{layer}_{outs[0]}"
        if len(ins) == 1 and ins[0] in self.widths:
            sw = L.SelectorWidth(self.widths[ins[0]], name=f"width_{layer}_{outs[0]}")
            table = {w: self._read(run([], 1.0 / (w + 1)), outs, where) for w in range(self.M + 1)}
            if len(outs) > 1 and len(set(table.values())) == len(table) and None not in table.values():
                self._new(sw, [outs[i] for i in table.values()], list(table), where)
                return
            self._table(L.Map, table, [sw], outs, where, name)
            return
        ins = [d for d in ins if not self._zero(d)] or ins  # dims that are always 0 add nothing
        if len(ins) == 1 and not (ins[0] in self.by_dim and self.by_dim[ins[0]].labels):
            num = self._var_of(ins, where)  # a numerical variable (or an unwritten dim: 0)
            if num is None or num.values is None:
                raise NotAProgram(
                    f"{where} reads numerical dim {ins[0]}, whose values are not a known finite set (a table "
                    "MLP reads a numerical head's means)"
                )
            table = {}
            for v in num.values:
                table[v] = self._read(run([], v), outs, where)
            self._table(L.Map, table, [num.expr], outs, where, name)
            return
        readers: list[Var] = []
        for d in ins:
            v = self.by_dim.get(d)
            if v is None:
                raise NotAProgram(f"{where} reads dim {d} that nothing wrote")
            if v not in readers:
                readers.append(v)
        if len(readers) not in (1, 2):
            raise NotAProgram(
                f"{where} reads {[v.expr.name for v in readers]}; a table MLP reads one or two categorical variables"
            )
        table = {}
        for combo in itertools.product(*[self._levels(v, where) for v in readers]):
            key = tuple(lab for _, lab in combo)
            x = self._vector({d: t for at, _ in combo for d, t in at.items()})
            y = (torch.relu(x @ w1[:, us] + b1[us]) @ w2[us])[outs]
            table[key if len(key) > 1 else key[0]] = self._read(y, outs, where)
        self._table(
            L.Map if len(readers) == 1 else L.SequenceMap, table, [v.expr for v in readers], outs, where, name
        )

    def _read(self, y: Tensor, outs: list[int], where: str, categorical: bool = False) -> Any:
        if len(outs) == 1 and not categorical:
            return round(float(y[0]), 6)
        hot = (y.abs() > TOL).nonzero().flatten().tolist()
        if not hot:
            return None
        if len(hot) != 1 or abs(float(y[hot[0]]) - 1) > 1e-3:
            raise NotAProgram(f"{where}: output {y.tolist()} is not one-hot; the MLP is not a lookup table")
        return hot[0]

    def _table(self, kind, table: dict, args: list[L.SOp], outs: list[int], where: str, name: str) -> None:
        numerical = len(outs) == 1
        if kind is L.Map:
            expr = L.Map(lambda v, t=table: t[v], args[0], numerical=numerical, name=name)
        else:
            expr = L.SequenceMap(
                lambda a, b, t=table: t[a, b], args[0], args[1], numerical=numerical, name=name
            )
        values = sorted(set(table.values()) | {0.0}) if numerical else None  # 0: where an input has no value
        self._new(expr, outs, [] if numerical else list(range(len(outs))), where, values=values)
