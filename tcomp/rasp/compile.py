"""Compile a RASP program to the weights of a plain PyTorch transformer (no tcomp at run time).

Residual stream: dim 0 ``one`` (1 everywhere), dim 1 ``bos`` (1 at the BOS position the model
prepends), then one block per variable -- a one-hot subspace per categorical variable (one dim per
value), one dim per numerical variable. At the BOS position every variable block is zero, and a
zero block means "no value" (``None``).

* ``Map`` / ``SequenceMap``: an MLP that is a lookup table, one hidden ReLU unit per input value
  (per value pair, with bias -1) writing the output's one-hot dim (or its number); a ``Map`` of a
  numerical input with finitely many values (a mean of 0/1 values) is a staircase of steps between them.
* ``Aggregate``: one attention head. Its score is ``pred(key, query)`` (the predicate matrix
  between the query's and the key's one-hot blocks) plus ``0.5`` on the BOS key, times a large
  ``beta``: the selected keys win; if none is selected BOS (all zero values) takes the attention,
  giving ``None`` / ``0``. Categorical values are copied one-hot, numerical ones averaged.
  Over ``Closest(select)`` the score gets a position term besides: a bilinear form of the query's
  and the key's ``indices`` one-hots (``M`` more columns of ``wq`` / ``wk``) ranking the keys in
  ``closest_order``, ``RANK_GAP`` logits apart; the predicate and BOS levels are raised above the
  rank span, so a selected key still beats BOS and BOS every unselected one by ``beta / 2``, and
  softmax keeps the first selected key in that order alone.
* ``SelectorWidth`` (the tracr way): a head whose BOS key scores like a selected one reads the
  ``bos`` dim, giving ``1/(w+1)``; an MLP of step functions decodes it to one-hot ``w``.

Heads and MLPs are scheduled as early as their inputs allow (attention then MLP in each layer).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcomp.rasp import language as L
from tcomp.rasp.lower import lower_selectors
from tcomp.rasp.validate import validate

BETA = 100.0  # attention sharpness: a score gap of 0.5 leaves exp(-50) of the weight behind
RANK_GAP = 24.0  # logits between neighbouring ranks of a Closest head (>= extract.GAP): 4e-11 behind
ONE, BOS = 0, 1


@dataclass
class Block:
    name: str
    start: int
    values: list | None  # categorical values (one dim each); None: one numerical dim

    @property
    def dims(self) -> list[int]:
        return list(range(self.start, self.start + (1 if self.values is None else len(self.values))))


@dataclass
class Layout:
    blocks: dict[int, Block] = field(default_factory=dict)  # by expression id
    size: int = 2

    def add(self, e_id: int, name: str, values: list | None) -> Block:
        b = Block(name, self.size, values)
        self.blocks[e_id] = b
        self.size += len(b.dims)
        return b


class Attention(nn.Module):
    """Heads in parallel: scores ``(x Wq)(x Wk)^T`` (the sharpness is in ``Wq``), outputs
    ``softmax(.) (x Wv) Wo``."""

    def __init__(self, wq: Tensor, wk: Tensor, wv: Tensor, wo: Tensor):
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (nn.Parameter(w, requires_grad=False) for w in (wq, wk, wv, wo))

    def forward(self, x: Tensor) -> Tensor:
        x4 = x.unsqueeze(1)  # (B, 1, N, D)
        q, k, v = x4 @ self.wq, x4 @ self.wk, x4 @ self.wv  # (B, H, N, d)
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return (o @ self.wo).sum(1)


class MLP(nn.Module):
    def __init__(self, w1: Tensor, b1: Tensor, w2: Tensor):
        super().__init__()
        self.w1, self.b1, self.w2 = (nn.Parameter(w, requires_grad=False) for w in (w1, b1, w2))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x @ self.w1 + self.b1) @ self.w2


class Layer(nn.Module):
    def __init__(self, attn: Attention, mlp: MLP):
        super().__init__()
        self.attn, self.mlp = attn, mlp

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class CompiledTransformer(nn.Module):
    """``forward(tokens)``: token ids ``(B, N)`` (indices into ``vocab``), N <= ``max_len`` ->
    the output variable's block ``(B, N, k)`` (one-hot for a categorical output, k = 1 numerical)."""

    def __init__(self, embed_tokens: Tensor, embed_positions: Tensor, layers: list[Layer], unembed: Tensor):
        super().__init__()
        self.embed_tokens = nn.Parameter(embed_tokens, requires_grad=False)
        self.embed_positions = nn.Parameter(embed_positions, requires_grad=False)
        self.layers = nn.ModuleList(layers)
        self.unembed = nn.Parameter(unembed, requires_grad=False)
        self.vocab: list = []
        self.max_len = embed_positions.shape[0] - 1
        self.output_values: list | None = None  # labels of the output dims (None: numerical)
        self.argmax_output = False  # a Classify output: the best-scoring dim always (no 'no value')
        self.layout: Layout | None = None

    def forward(self, tokens: Tensor) -> Tensor:
        bos = torch.full_like(tokens[:, :1], self.embed_tokens.shape[0] - 1)
        ids = torch.cat([bos, tokens], dim=1)
        x = F.embedding(ids, self.embed_tokens) + self.embed_positions[: ids.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return x[:, 1:] @ self.unembed

    def encode(self, inputs: list) -> Tensor:
        return torch.tensor([[self.vocab.index(t) for t in inputs]], dtype=torch.long)

    def decode(self, out: Tensor) -> list:
        """One output sequence (N, k) back to RASP values (``None`` for an all-zero block)."""
        if self.output_values is None:
            return out[:, 0].tolist()
        if self.argmax_output:
            return [self.output_values[int(r.argmax())] for r in out]
        return [self.output_values[int(r.argmax())] if float(r.max()) > 0.5 else None for r in out]

    def run(self, inputs: list) -> list:
        with torch.no_grad():
            return self.decode(self(self.encode(inputs))[0])


def compile_program(program: L.SOp, vocab: list, max_len: int, *, beta: float = BETA) -> CompiledTransformer:
    """Validate ``program`` (``tcomp.rasp.validate``) and build the transformer computing it on
    inputs over ``vocab`` up to ``max_len`` long (float32; same outputs as ``tcomp.rasp.evaluate``)."""
    validate(program, vocab, max_len)
    vocab = list(vocab)
    prog = lower_selectors(program)
    sets = L.value_sets(prog, vocab, max_len)
    order = [e for e in L.walk(prog) if isinstance(e, L.SOp)]
    layout = Layout()
    layout.add(L.tokens.id, "tokens", _sorted_vocab(vocab))
    layout.add(L.indices.id, "indices", list(range(max_len)))
    for e in order:
        if e.id not in layout.blocks and not isinstance(e, L.Classify):  # a Classify is the unembedding
            layout.add(e.id, e.name, None if e.numerical else sets[e.id])
    widths = {
        e.id: layout.add(-e.id - 1, f"{e.name}_inv", None) for e in order if isinstance(e, L.SelectorWidth)
    }
    D = layout.size
    ready = _schedule(order)
    n_layers = max([s // 2 for s in ready.values()] + [0]) + 1
    heads: list[list[tuple]] = [[] for _ in range(n_layers)]
    mlps: list[list[tuple]] = [[] for _ in range(n_layers)]
    for e in order:
        s = ready.get(e.id, -1)
        if isinstance(e, L.Aggregate):
            heads[s // 2].append(_aggregate_head(e, layout, sets, D, beta))
        elif isinstance(e, L.SelectorWidth):
            heads[s // 2].append(_width_head(e, layout, widths[e.id], sets, D))
            mlps[s // 2].append(_width_mlp(layout.blocks[e.id], widths[e.id], max_len, D))
        elif isinstance(e, (L.Map, L.SequenceMap)):
            mlps[s // 2].append(_map_mlp(e, layout, sets, D))
    layers = [Layer(_stack_heads(h, D, beta), _stack_mlps(m, D)) for h, m in zip(heads, mlps)]
    if isinstance(prog, L.Classify):
        unembed = _classify_unembed(prog, layout, sets, D)
    else:
        unembed = _unembed(layout.blocks[prog.id], D)
    model = CompiledTransformer(*_embeddings(layout, vocab, max_len), layers, unembed)
    model.vocab, model.layout = vocab, layout
    model.output_values = None if prog.numerical else sets[prog.id]
    if isinstance(prog, L.Classify):
        model.output_values, model.argmax_output = list(prog.classes), True
    return model.eval()


def _sorted_vocab(vocab: list) -> list:
    return L.value_sets(L.tokens, vocab, 1)[L.tokens.id]


def _schedule(order: list[L.SOp]) -> dict[int, int]:
    """Sublayer after which each sequence is in the residual stream: -1 embeddings, 2l attention
    of layer l, 2l + 1 its MLP."""
    ready: dict[int, int] = {}
    tables: set[tuple[int, frozenset]] = set()
    for e in order:
        if isinstance(e, (L.Tokens, L.Indices)):
            ready[e.id] = -1
            continue
        if isinstance(e, L.Classify):
            continue  # the unembedding: no layer
        deps = (
            [e.x]
            if isinstance(e, (L.Map, L.Aggregate))
            else [e.x, e.y]
            if isinstance(e, L.SequenceMap)
            else []
        )
        if isinstance(e, (L.Aggregate, L.SelectorWidth)):
            deps += [e.selector.keys, e.selector.queries]
        after = max(ready[d.id] for d in deps)
        if isinstance(e, (L.Map, L.SequenceMap)):
            s = after + 1 if after % 2 == 0 else after + 2  # next MLP sublayer
            reads = frozenset(d.id for d in deps)
            while (s, reads) in tables:  # one table per set of inputs in an MLP: extraction tells them apart
                s += 2
            tables.add((s, reads))
            ready[e.id] = s
        else:
            attn = after + 1 if after % 2 == 1 else after + 2  # next attention sublayer
            ready[e.id] = attn + 1 if isinstance(e, L.SelectorWidth) else attn
    return ready


def _embeddings(layout: Layout, vocab: list, max_len: int) -> tuple[Tensor, Tensor]:
    tok = torch.zeros(len(vocab) + 1, layout.size)
    tok[len(vocab), BOS] = 1.0
    toks = layout.blocks[L.tokens.id]
    for i, t in enumerate(vocab):
        tok[i, toks.dims[toks.values.index(t)]] = 1.0
    pos = torch.zeros(max_len + 1, layout.size)
    pos[:, ONE] = 1.0
    for i, b in enumerate(layout.blocks[L.indices.id].dims):
        pos[i + 1, b] = 1.0
    return tok, pos


def _unembed(block: Block, D: int) -> Tensor:
    u = torch.zeros(D, len(block.dims))
    for j, d in enumerate(block.dims):
        u[d, j] = 1.0
    return u


def _classify_unembed(e: L.Classify, layout: Layout, sets: dict, D: int) -> Tensor:
    """A Classify output: each input value's dim scores the classes by its weight row, a number's
    dim by its row (:meth:`Classify.number_row`), the ``one`` dim by the bias (a ``None`` input,
    the zero block, adds nothing)."""
    u = torch.zeros(D, len(e.classes))
    u[ONE] = torch.tensor(e.bias)
    for i, (x, table) in enumerate(zip(e.inputs, e.weights)):
        if x.numerical:  # one dim holding the number: its row times the number (validated linear)
            u[layout.blocks[x.id].dims[0]] += torch.tensor(e.number_row(i, sets[x.id]))
            continue
        for d, v in zip(layout.blocks[x.id].dims, sets[x.id]):
            if v in table:
                u[d] += torch.tensor(table[v])
    return u


def _qk(sel: L.Select, layout: Layout, sets: dict, D: int, bos_score: float) -> tuple[Tensor, Tensor]:
    """Query/key maps whose product is ``pred(key, query) + bos_score*[key is BOS]`` at non-BOS
    queries, and makes the BOS query attend to BOS alone."""
    qb, kb = layout.blocks[sel.queries.id], layout.blocks[sel.keys.id]
    qv, kv = sets[sel.queries.id], sets[sel.keys.id]
    wq, wk = torch.zeros(D, len(qv) + 2), torch.zeros(D, len(qv) + 2)
    for a, (qd, q) in enumerate(zip(qb.dims, qv)):
        wq[qd, a] = 1.0
        for kd, k in zip(kb.dims, kv):
            wk[kd, a] = float(sel.holds(k, q))
    wq[ONE, -2], wk[BOS, -2] = 1.0, bos_score
    wq[BOS, -1], wk[BOS, -1] = 1.0, 2.0
    return wq, wk


def _aggregate_head(e: L.Aggregate, layout: Layout, sets: dict, D: int, beta: float) -> tuple:
    if isinstance(e.selector, L.Closest):
        wq, wk = _closest_qk(e.selector, layout, sets, D, beta)
    else:
        wq, wk = _qk(e.selector, layout, sets, D, 0.5)
    src, dst = layout.blocks[e.x.id], layout.blocks[e.id]
    wv, wo = torch.zeros(D, len(src.dims)), torch.zeros(len(src.dims), D)
    for j, (s, d) in enumerate(zip(src.dims, dst.dims)):
        wv[s, j], wo[j, d] = 1.0, 1.0
    return wq, wk, wv, wo


def _width_head(e: L.SelectorWidth, layout: Layout, inv: Block, sets: dict, D: int) -> tuple:
    wq, wk = _qk(e.selector, layout, sets, D, 1.0)
    wv, wo = torch.zeros(D, 1), torch.zeros(1, D)
    wv[BOS, 0], wo[0, inv.start] = 1.0, 1.0
    return wq, wk, wv, wo


def closest_ranks(max_len: int) -> list[list[int]]:
    """``r[i][j]``: the rank of key position ``j`` for query position ``i`` in ``closest_order``,
    ``max_len - 1`` for the first, ``0`` for the last."""
    r = [[0] * max_len for _ in range(max_len)]
    for i in range(max_len):
        for k, j in enumerate(L.closest_order(i, max_len)):
            r[i][j] = max_len - 1 - k
    return r


def _closest_qk(sel: L.Closest, layout: Layout, sets: dict, D: int, beta: float) -> tuple[Tensor, Tensor]:
    """``_qk`` of the inner ``Select`` with the predicate and BOS levels raised by the rank span
    ``RANK_GAP * (M - 1)`` and ``M`` more columns: the rank term ``RANK_GAP * rank[i][j]`` over the
    query's and key's ``indices`` one-hots (see the module docstring)."""
    wq, wk = _qk(sel.a, layout, sets, D, 0.5)  # type: ignore[arg-type] - lowered: a Select
    pos = layout.blocks[L.indices.id].dims
    M, c = len(pos), wq.shape[1] - 2
    lift = RANK_GAP * (M - 1) / beta  # the rank span, in units of beta
    wk[:, :c] *= 1.0 + lift
    wk[BOS, c] += lift
    wk[BOS, c + 1] += 2 * lift
    rq, rk = torch.zeros(D, M), torch.zeros(D, M)
    for i, row in enumerate(closest_ranks(M)):
        rq[pos[i], i] = 1.0
        for j, r in enumerate(row):
            rk[pos[j], i] = RANK_GAP * r / beta
    return torch.cat([wq, rq], 1), torch.cat([wk, rk], 1)


def _width_mlp(out: Block, inv: Block, max_len: int, D: int) -> tuple:
    """Decode ``t = 1/(w+1)`` to one-hot ``w``: steps ``s_k = [t > (1/(k+1) + 1/(k+2))/2] = [w <= k]``,
    each the difference of two clipped ReLUs, and ``onehot(w) = s_w - s_{w-1}``; every unit is
    switched off at BOS."""
    M = max_len
    slope = 4.0 * M * (M + 1)  # half the smallest gap times slope is 2 > 0.5: the steps are exact
    big = 2.0 * slope
    n = 2 * M + 1
    w1, b1, w2 = torch.zeros(D, n), torch.zeros(n), torch.zeros(n, D)
    col = dict(zip(out.values, out.dims))
    for k in range(M):
        thr = (1 / (k + 1) + 1 / (k + 2)) / 2
        for u, off in ((2 * k, 0.5), (2 * k + 1, -0.5)):
            w1[inv.start, u], w1[BOS, u], b1[u] = slope, -big, -slope * thr + off
            sign = 1.0 if off > 0 else -1.0
            w2[u, col[k]] += sign  # +s_k into w = k
            w2[u, col[k + 1]] -= sign  # -s_k into w = k + 1
    w1[ONE, n - 1], w1[BOS, n - 1] = 1.0, -2.0  # the constant 1 (0 at BOS) into w = M
    w2[n - 1, col[M]] = 1.0
    return w1, b1, w2


def _numeric_map_mlp(e: L.Map, layout: Layout, sets: dict, D: int) -> tuple:
    """A Map of a numerical input with finitely many values ``v_0 < v_1 < ...``: steps ``[x >=
    t_k]`` (two clipped ReLUs each, ``t_0`` below ``v_0``, ``t_k`` halfway between ``v_{k-1}`` and
    ``v_k``), step ``k`` adding ``f(v_k) - f(v_{k-1})`` to the output; a ramp of a quarter of the
    smallest gap keeps every step exactly 0 or 1 at the values. All are off at BOS."""
    vals = sets[e.x.id]
    gap = min([b - a for a, b in zip(vals, vals[1:])] + [1.0])
    slope, big = 4.0 / gap, 8.0 / gap * (1.0 + max(abs(v) for v in vals))
    x, out = layout.blocks[e.x.id].start, layout.blocks[e.id]

    def vec(v: Any) -> Tensor:
        y = torch.zeros(D)
        if e.numerical:
            y[out.start] = float(v)
        else:
            y[out.dims[out.values.index(v)]] = 1.0
        return y

    ys = [vec(e.f(v)) for v in vals]
    steps = [k for k in range(len(vals)) if k == 0 or not torch.equal(ys[k], ys[k - 1])]
    w1, b1, w2 = torch.zeros(D, 2 * len(steps)), torch.zeros(2 * len(steps)), torch.zeros(2 * len(steps), D)
    for i, k in enumerate(steps):
        thr = vals[0] - gap / 2 if k == 0 else (vals[k - 1] + vals[k]) / 2
        delta = ys[k] - (ys[k - 1] if k else 0.0)
        for u, off in ((2 * i, 0.5), (2 * i + 1, -0.5)):
            w1[x, u], w1[BOS, u], b1[u] = slope, -big, -slope * thr + off
            w2[u] = delta if off > 0 else -delta
    return w1, b1, w2


def _map_mlp(e: L.Map | L.SequenceMap, layout: Layout, sets: dict, D: int) -> tuple:
    if isinstance(e, L.Map) and e.x.numerical:
        return _numeric_map_mlp(e, layout, sets, D)
    ins = [e.x] if isinstance(e, L.Map) else [e.x, e.y]
    combos = list(itertools.product(*(sets[x.id] for x in ins)))
    w1, b1, w2 = torch.zeros(D, len(combos)), torch.zeros(len(combos)), torch.zeros(len(combos), D)
    out = layout.blocks[e.id]
    for u, combo in enumerate(combos):
        for x, v in zip(ins, combo):
            w1[layout.blocks[x.id].dims[sets[x.id].index(v)], u] += 1.0
        b1[u] = 1.0 - len(ins)
        y: Any = e.f(*combo)
        if e.numerical:
            w2[u, out.start] = float(y)
        else:
            w2[u, out.dims[out.values.index(y)]] = 1.0
    return w1, b1, w2


def _stack_heads(heads: list[tuple], D: int, beta: float) -> Attention:
    H = max(1, len(heads))
    dk = max([h[0].shape[1] for h in heads] + [1])
    dv = max([h[2].shape[1] for h in heads] + [1])
    wq, wk, wv, wo = (
        torch.zeros(H, D, dk),
        torch.zeros(H, D, dk),
        torch.zeros(H, D, dv),
        torch.zeros(H, dv, D),
    )
    for i, (q, k, v, o) in enumerate(heads):
        wq[i, :, : q.shape[1]], wk[i, :, : k.shape[1]] = q, k
        wv[i, :, : v.shape[1]], wo[i, : o.shape[0]] = v, o
    return Attention(wq * beta, wk, wv, wo)


def _stack_mlps(mlps: list[tuple], D: int) -> MLP:
    if not mlps:
        return MLP(torch.zeros(D, 1), torch.zeros(1), torch.zeros(1, D))
    return MLP(*(torch.cat(parts, dim=-1 if i < 2 else 0) for i, parts in enumerate(zip(*mlps))))


def output_index(model: CompiledTransformer, values: list) -> list[int | float | None]:
    """The positions of RASP output ``values`` among the model's output dims (numbers pass)."""
    if model.output_values is None:
        return values
    return [None if v is None else model.output_values.index(v) for v in values]
