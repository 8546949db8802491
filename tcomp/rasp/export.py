"""Export a trained Transformer Program's discrete choices to plain weights.

:func:`to_module` turns the argmax choices of :meth:`TransformerProgram.choices
<tcomp.rasp.program_model.TransformerProgram.choices>` into a :class:`ProgramModule`: one-hot
embeddings, hard attention heads and lookup-table MLPs in the family ``tcomp.rasp.extract`` reads,
with the same predictions as the discrete model. ``ProgramModule`` is plain PyTorch.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcomp.rasp.language import mean_values

if TYPE_CHECKING:
    from tcomp.rasp.program_model import ProgramConfig

BETA = 100.0  # attention sharpness of the exported heads
CLOSE_RANK_GAP = 16.0  # logits between neighbouring ranks of an exported closest head (as tcomp.rasp.compile)


def closest_ranks(max_len: int) -> Tensor:
    """``r[i, j]``: rank of key position ``j`` for query position ``i`` in the closest order (keys
    other than ``i`` first, then by ``|i - j|``, then the earlier): ``max_len - 1`` for the first,
    0 for the last; the order of ``tcomp.rasp.language.closest_order``."""
    r = torch.zeros(max_len, max_len)
    for i in range(max_len):
        order = sorted(range(max_len), key=lambda j: (j == i, abs(i - j), j))
        for k, j in enumerate(order):
            r[i, j] = max_len - 1 - k
    return r


class ProgramModule(nn.Module):
    """Transformer Program weights in the family ``tcomp.rasp.extract`` reads: ``forward(tokens)``
    -> the output variable's one-hot block (B, N, classes); argmax is the prediction."""

    argmax_output = False  # a linear-classifier readout: predictions are the argmax (see ``predictions``)

    def __init__(self, emb_t: Tensor, emb_p: Tensor, layers: list[dict[str, Tensor]], unembed: Tensor):
        super().__init__()
        self.embed_tokens = nn.Parameter(emb_t, requires_grad=False)
        self.embed_positions = nn.Parameter(emb_p, requires_grad=False)
        self.layers = nn.ModuleList()
        for w in layers:
            layer = nn.Module()
            layer.attn, layer.mlp = nn.Module(), nn.Module()
            for k in ("wq", "wk", "wv", "wo"):
                setattr(layer.attn, k, nn.Parameter(w[k], requires_grad=False))
            for k in ("w1", "b1", "w2"):
                setattr(layer.mlp, k, nn.Parameter(w[k], requires_grad=False))
            self.layers.append(layer)
        self.unembed = nn.Parameter(unembed, requires_grad=False)

    def forward(self, tokens: Tensor) -> Tensor:
        bos = torch.full_like(tokens[:, :1], self.embed_tokens.shape[0] - 1)
        ids = torch.cat([bos, tokens], dim=1)
        x = F.embedding(ids, self.embed_tokens) + self.embed_positions[: ids.shape[1]]
        for layer in self.layers:
            a = layer.attn
            x4 = x.unsqueeze(1)
            o = F.scaled_dot_product_attention(x4 @ a.wq, x4 @ a.wk, x4 @ a.wv, scale=1.0)
            x = x + (o @ a.wo).sum(1)
            m = layer.mlp
            x = x + torch.relu(x @ m.w1 + m.b1) @ m.w2
        return x[:, 1:] @ self.unembed


def to_module(choices: dict, cfg: ProgramConfig) -> ProgramModule:
    """Weights computing the discrete program ``choices`` (see ``TransformerProgram.choices``)."""
    K, N, V = cfg.K, cfg.max_len, cfg.vocab
    sizes = [V, N]  # real values of each variable (tokens, indices, then K each)
    kinds = [it[0] for layer in choices["layers"] for it in layer]
    n_widths, n_nums, n_keys = kinds.count("width"), kinds.count("num"), kinds.count("key")
    n_vars = len(kinds) - n_nums + 2
    # ..., width temporaries, key-head temporaries (K + 1 each), numerical variables
    D = 2 + V + N + K * (n_vars - 2) + n_widths + n_keys * (K + 1) + n_nums
    starts = [2, 2 + V]
    nxt = 2 + V + N
    ktemp = D - n_nums - n_keys * (K + 1)
    temp = ktemp - n_widths
    num_dims: list[int] = []  # the dim of each numerical variable
    fracs = mean_values(N)
    emb_t, emb_p = torch.zeros(V + 1, D), torch.zeros(N + 1, D)
    emb_t[V, 1] = 1.0
    emb_t[torch.arange(V), 2 + torch.arange(V)] = 1.0
    emb_p[:, 0] = 1.0
    emb_p[1 + torch.arange(N), 2 + V + torch.arange(N)] = 1.0
    layers = []
    for layer in choices["layers"]:
        heads, units = [], []
        for it in layer:
            if it[0] in ("mlp", "nmlp"):
                continue
            if it[0] == "num":
                num_dims.append(D - n_nums + len(num_dims))
                heads.append(_num_head(it, starts, sizes, num_dims[-1], D, K))
                continue
            starts.append(nxt)
            sizes.append(
                {"cat": sizes[it[2]], "key": sizes[it[-2]], "closest": sizes[it[-2]]}.get(it[0], N + 1)
            )  # values it can hold
            nxt += K
            out = starts[-1]
            if it[0] == "cat":
                _, qv, vv, pred = it
                wq, wk = torch.zeros(D, K + 2), torch.zeros(D, K + 2)
                for a in range(sizes[qv]):
                    wq[starts[qv] + a, a] = BETA
                    if pred[a] < N:
                        wk[starts[1] + pred[a], a] = 1.0
                wq[0, K], wk[1, K] = BETA, 0.5
                wq[1, K + 1], wk[1, K + 1] = BETA, 2.0
                wv, wo = torch.zeros(D, K), torch.zeros(K, D)
                for j in range(sizes[vv]):
                    wv[starts[vv] + j, j], wo[j, out + j] = 1.0, 1.0
                heads.append((wq, wk, wv, wo))
            elif it[0] == "closest":
                heads.append(_closest_head(it, starts, sizes, out, D, K, N))
            elif it[0] == "key":
                heads.append(_key_head(it, starts, sizes, ktemp, D, K))
                units += _key_units(ktemp, out, sizes[-1], N, K, D)
                ktemp += K + 1
            else:
                _, qv, kv, pred = it
                wq, wk = _matrix_scores(starts, sizes, qv, kv, pred, 1.0, D, K)
                wv, wo = torch.zeros(D, K), torch.zeros(K, D)
                wv[1, 0], wo[0, temp] = 1.0, 1.0
                heads.append((wq, wk, wv, wo))
                units += _width_units(temp, out, N, D)
                temp += 1
        # width decoders are MLP units; the tables may read their outputs, so they get a layer of their own
        layers.append(_layer(heads, units, D, K))
        # tables reading the same variables go to MLP layers of their own: extraction tells the
        # tables of one MLP apart by what they read (none reads another table of its layer)
        buckets: list[tuple[set, list]] = []
        for it in layer:
            if it[0] not in ("mlp", "nmlp"):
                continue
            starts.append(nxt)
            sizes.append(K)
            out, nxt = nxt, nxt + K
            if it[0] == "nmlp":
                reads, units = ("num", it[1]), _num_units(num_dims[it[1]], out, fracs, it[2], D)
            else:
                _, av, bv, table = it
                reads, units = frozenset((av, bv)), []
                for a, b in itertools.product(range(sizes[av]), range(sizes[bv])):
                    w1 = torch.zeros(D)
                    w1[starts[av] + a] += 1.0
                    w1[starts[bv] + b] += 1.0
                    w2 = torch.zeros(D)
                    w2[out + table[a * K + b]] = 1.0
                    units.append((w1, -1.0, w2))
            free = next((bk for bk in buckets if reads not in bk[0]), None)
            if free is None:
                free = (set(), [])
                buckets.append(free)
            free[0].add(reads)
            free[1].extend(units)
        for _, units in buckets or [(set(), [])]:
            layers.append(_layer([], units, D, K))
    unembed = torch.zeros(D, cfg.classes)
    o = choices["output"]
    if isinstance(o, dict):  # a linear classifier: each variable's real values score the classes
        w = torch.tensor(o["weights"])
        for v, (start, size) in enumerate(zip(starts, sizes)):
            unembed[start : start + size] = w[v, :size]
        unembed[0] = torch.tensor(o["bias"])  # the 'one' dim
    else:
        for j in range(min(cfg.classes, sizes[o])):
            unembed[starts[o] + j, j] = 1.0
    module = ProgramModule(emb_t, emb_p, layers, unembed).eval()
    module.argmax_output = isinstance(o, dict)
    return module


def round_classifier(w: Tensor, b: Tensor, top: float = 8.0, step: float = 1 / 64) -> tuple[Tensor, Tensor]:
    """A linear readout in numbers every float format adds exactly: scaled so the largest weight
    is ``top`` (the argmax does not change), rounded to multiples of ``step``, and class ``c``'s
    bias lowered by ``c * delta`` (``delta`` a power of two, ``classes * delta <= step / 2``): equal
    scores go to the earlier class, and any two scores differ by >= ``delta`` (1/2048 for 9
    classes), far above the float32 error of the exported model's residual stream. The extracted
    ``Classify`` carries the same numbers, so model and program pick the same class everywhere."""
    scale = top / float(torch.cat([w.abs().flatten(), b.abs()]).max().clamp(min=1e-12))
    c = b.shape[0]
    delta = step / 2 ** (1 + math.ceil(math.log2(max(c, 2))))
    w = torch.round(w * scale / step) * step
    b = torch.round(b * scale / step) * step - delta * torch.arange(c, dtype=b.dtype, device=b.device)
    return w, b


def _num_head(it: tuple, starts: list[int], sizes: list[int], out: int, D: int, K: int) -> tuple:
    """A numerical head: keys selected by a 0/1 predicate score ``BETA``, BOS ``BETA / 2`` (attended
    only when nothing else is), the rest 0; the value ``1[var == c]`` in one dim, averaged to ``out``.
    A value ``c`` the variable never holds is the constant 0: the head writes nothing."""
    _, qv, kv, vv, c, pred = it
    wq, wk = _matrix_scores(starts, sizes, qv, kv, pred, 0.5, D, K)
    wv, wo = torch.zeros(D, K), torch.zeros(K, D)
    if c < sizes[vv]:
        wv[starts[vv] + c, 0], wo[0, out] = 1.0, 1.0
    return wq, wk, wv, wo


def _key_head(it: tuple, starts: list[int], sizes: list[int], temp: int, D: int, K: int) -> tuple:
    """A key head's attention: selected keys and BOS score level (``BETA``); it averages the value
    one-hot into ``temp .. temp + K - 1`` and the BOS flag into ``temp + K``: ``c / (m + 1)`` for a
    value held by ``c`` of the ``m`` selected keys, and ``1 / (m + 1)``."""
    _, qv, kv, vv, pred = it
    wq, wk = _matrix_scores(starts, sizes, qv, kv, pred, 1.0, D, K)
    wv, wo = torch.zeros(D, K + 1), torch.zeros(K + 1, D)
    for j in range(sizes[vv]):
        wv[starts[vv] + j, j], wo[j, temp + j] = 1.0, 1.0
    wv[1, K], wo[K, temp + K] = 1.0, 1.0
    return wq, wk, wv, wo


def _closest_head(it: tuple, starts: list[int], sizes: list[int], out: int, D: int, K: int, N: int) -> tuple:
    """A closest head as ``tcomp.rasp.compile`` builds ``Aggregate(Closest(Select(...)))``: selected
    keys score ``BETA + span``, BOS ``BETA / 2 + span``, the rest 0 (``span``: ``CLOSE_RANK_GAP *
    (N - 1)``), plus a rank term over the query's and key's ``indices`` (``N`` more columns):
    ``CLOSE_RANK_GAP`` times the key's rank in the closest order. It copies the value to ``out``."""
    _, qv, kv, vv, pred = it
    lift = CLOSE_RANK_GAP * (N - 1) / BETA
    q2, k2 = _matrix_scores(starts, sizes, qv, kv, pred, 0.5 + lift, D, K, level=1.0 + lift)
    wq, wk = torch.zeros(D, K + 2 + N), torch.zeros(D, K + 2 + N)
    wq[:, : K + 2], wk[:, : K + 2] = q2, k2
    wk[1, K + 1] = 2.0 + 2 * lift
    ranks = closest_ranks(N)
    for i in range(N):
        wq[starts[1] + i, K + 2 + i] = BETA
        wk[starts[1] : starts[1] + N, K + 2 + i] = CLOSE_RANK_GAP * ranks[i] / BETA
    wv, wo = torch.zeros(D, K), torch.zeros(K, D)
    for j in range(sizes[vv]):
        wv[starts[vv] + j, j], wo[j, out + j] = 1.0, 1.0
    return wq, wk, wv, wo


def key_decoder(M: int) -> tuple[float, float, float]:
    """``(alpha, centre, half_width)``: ``c / (m + 1) + alpha / (m + 1)`` over ``0 <= c <= m <= M``
    equals ``centre`` only for ``c = m = 1`` (one key selected, holding the value), and every other
    point is at least ``2 * half_width`` away."""
    best = (0.0, 0.0, 0.0)
    for alpha in (i / 64 for i in range(1, 192)):
        centre = (1 + alpha) / 2
        pts = [(c + alpha) / (m + 1) for m in range(M + 1) for c in range(m + 1) if (c, m) != (1, 1)]
        gap = min(abs(p - centre) for p in pts)
        if gap > 2 * best[2] + 1e-9:
            best = (alpha, centre, gap / 2)
    return best


def _key_units(
    temp: int, out: int, n_values: int, M: int, K: int, D: int
) -> list[tuple[Tensor, float, Tensor]]:
    """Decode a key head's averages to the one-hot value at ``out`` where exactly one key is
    selected (zero otherwise): per value ``j`` a trapezoid of ``z = (avg_j + alpha * avg_BOS -
    centre) / half`` (four ReLU units): exactly 1 for ``|z| <= 1/2``, exactly 0 for ``|z| >= 3/2``.
    Every other reachable point has ``|z| >= 2``, so averages off by up to ``half / 2`` still decode
    exactly: a residual stream a little off one-hot (float32 error scaled by the attention's
    ``BETA``) does not grow from layer to layer."""
    alpha, centre, half = key_decoder(M)
    s = 1.0 / half
    units = []
    for j in range(n_values):
        for off, sign in ((1.5, 1.0), (0.5, -1.0), (-0.5, -1.0), (-1.5, 1.0)):
            w1, w2 = torch.zeros(D), torch.zeros(D)
            w1[temp + j], w1[temp + K] = s, s * alpha
            w2[out + j] = sign
            units.append((w1, -s * centre + off, w2))
    return units


def _matrix_scores(
    starts, sizes, qv: int, kv: int, pred: list, bos: float, D: int, K: int, level: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Query/key weights scoring key value ``b`` for query value ``a`` ``BETA * level * pred[a][b]``,
    BOS ``BETA * bos`` (the BOS query: BOS, ``2 * BETA``)."""
    wq, wk = torch.zeros(D, K + 2), torch.zeros(D, K + 2)
    for a in range(sizes[qv]):
        wq[starts[qv] + a, a] = BETA
        for b in range(sizes[kv]):
            wk[starts[kv] + b, a] = float(pred[a][b]) * level
    wq[0, K], wk[1, K] = BETA, bos
    wq[1, K + 1], wk[1, K + 1] = BETA, 2.0
    return wq, wk


def _num_units(
    x: int, out: int, values: list[float], table: list[int], D: int
) -> list[tuple[Tensor, float, Tensor]]:
    """Numerical dim ``x`` (one of the sorted ``values``) -> one-hot ``table[i]`` at ``out``: steps
    ``[x >= threshold]`` between neighbouring values (the first below the smallest one), each adding
    its value's output and removing the one below; all are off at BOS."""
    gap = min(b - a for a, b in zip(values, values[1:]))
    slope = 4.0 / gap  # a ramp of width gap / 4 around each midpoint: exact 0/1 at the values
    units = []
    for k, v in enumerate(values):
        if k and table[k] == table[k - 1]:
            continue
        thr = v - gap / 2 if k == 0 else (values[k - 1] + v) / 2
        for off, sign in ((0.5, 1.0), (-0.5, -1.0)):
            w1, w2 = torch.zeros(D), torch.zeros(D)
            w1[x], w1[1] = slope, -2 * slope
            w2[out + table[k]] += sign
            if k:
                w2[out + table[k - 1]] -= sign
            units.append((w1, -slope * thr + off, w2))
    return units


def _width_units(inv: int, out: int, M: int, D: int) -> list[tuple[Tensor, float, Tensor]]:
    """Decode ``1/(w+1)`` in dim ``inv`` to one-hot ``w`` at ``out`` (steps ``[w <= k]``)."""
    slope = 4.0 * M * (M + 1)
    units = []
    for k in range(M):
        thr = (1 / (k + 1) + 1 / (k + 2)) / 2
        for off, sign in ((0.5, 1.0), (-0.5, -1.0)):
            w1, w2 = torch.zeros(D), torch.zeros(D)
            w1[inv], w1[1] = slope, -2 * slope
            w2[out + k], w2[out + k + 1] = sign, -sign
            units.append((w1, -slope * thr + off, w2))
    w1, w2 = torch.zeros(D), torch.zeros(D)
    w1[0], w1[1], w2[out + M] = 1.0, -2.0, 1.0
    units.append((w1, 0.0, w2))
    return units


def _layer(heads: list[tuple], units: list[tuple], D: int, K: int) -> dict[str, Tensor]:
    H = max(1, len(heads))
    dv = max([K] + [h[2].shape[1] for h in heads])  # key heads carry the BOS flag too: K + 1
    dk = max([K + 2] + [h[0].shape[1] for h in heads])  # closest heads: K + 2 + max_len
    w = {
        "wq": torch.zeros(H, D, dk),
        "wk": torch.zeros(H, D, dk),
        "wv": torch.zeros(H, D, dv),
        "wo": torch.zeros(H, dv, D),
    }
    for i, h in enumerate(heads):
        wq, wk, wv, wo = h
        w["wq"][i, :, : wq.shape[1]], w["wk"][i, :, : wk.shape[1]] = wq, wk
        w["wv"][i, :, : wv.shape[1]], w["wo"][i, : wo.shape[0]] = wv, wo
    n = max(1, len(units))
    w["w1"], w["b1"], w["w2"] = torch.zeros(D, n), torch.zeros(n), torch.zeros(n, D)
    for u, (a, b, c) in enumerate(units):
        w["w1"][:, u], w["b1"][u], w["w2"][u] = a, b, c
    return w
