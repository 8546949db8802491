"""Transformer Programs (after Friedman, Wettig and Chen 2023, arXiv 2306.01128): a transformer
constrained so that, once trained, it *is* a RASP program.

The residual stream is a list of categorical variables, one one-hot block of ``K`` values each
(``tokens``, ``indices``, then one per head and MLP). Every choice is a Gumbel-softmax over a
finite set (hard, straight-through when ``hard=True``; argmax at evaluation):

* a *categorical head* picks a query variable and a value variable; its predicate maps each query
  value to one key position (keys are ``indices``, so at most one key is selected; none -> BOS,
  the zero vector) and copies the value there;
* a *width head* picks a query and a key variable and a 0/1 predicate matrix; it writes how many
  keys each query selects (SelectorWidth);
* a *key head* (``key_heads``) picks a query, a key and a value variable and a 0/1 predicate
  matrix over (query value, key value); it writes the value of the selected key where exactly one
  key is selected, no value (the zero vector) where none or several are (the categorical
  ``Aggregate`` of ``tcomp.rasp``). Exported, the head averages the value one-hot and the BOS flag
  over the selected keys and BOS, and MLP units of its layer keep the value only where the BOS
  share is 1/2; while training the relaxed selection's sum ``m`` gates the mean by ``1 - |m - 1|``;
* a *closest head* (``closest_heads``) picks a query, a key and a value variable and a 0/1
  predicate matrix over (query value, key value) as a key head (``CLOSEST_PREDICATE["form"] = "row"``:
  the paper's form instead, each query value selecting one key value, a softmax over key values;
  it trained worse, see ``CLOSEST_PREDICATE``) and reads the value of the one selected key
  *closest* to the query (``select_closest``:
  keys other than the query's own position first, then nearer, then earlier; none selected -> no
  value), ``Aggregate(Closest(Select(...)))`` of ``tcomp.rasp``. While training its attention is a
  softmax at the annealed temperature over ``4 max_len * selection + rank`` (rank: the closest order,
  ``max_len - 1 .. 0``) and a BOS logit ``3 max_len``, between the unselected and the selected keys
  (argmax at evaluation: exactly the rule above); exported it
  scores as the compiler's ``Closest`` heads (a rank term over the query's and key's ``indices``);
* a *categorical MLP* picks two variables and a lookup table (pair of values -> value);
* a *numerical head* (``num_heads``) picks a query and a key variable and a 0/1 predicate matrix as
  a width head, and a value: one value ``c`` of one variable, read as the indicator
  ``1[var == c]``; it writes the mean of the indicator over the selected keys (0 when none is
  selected) to a *numerical* variable, one real number (``nums``, beside the categorical ones);
* a *numerical MLP* (``num_mlps``) picks a numerical variable and a lookup table over the finite
  set of values it can hold (the fractions ``p/q``, ``q <= max_len``: a mean of 0/1 values) to a
  categorical value. While training it reads the nearest value (gradient: linear interpolation) and
  its table keeps a temperature >= ``TABLE_TAU``.

``TransformerProgram.discrete()`` returns the trained model as a :class:`ProgramModule`: plain
weights in the form ``tcomp.rasp.extract`` reads (one-hot embeddings, hard attention heads,
lookup-table MLPs), with the same predictions as the discrete model (``tcomp.rasp.export``). The
tasks of the paper are in ``tcomp.rasp.tasks``, the trainer in ``tcomp.rasp.train``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tcomp.rasp.export import BETA, ProgramModule, closest_ranks, round_classifier, to_module
from tcomp.rasp.language import mean_values

# closest heads' predicate: "matrix" (a 0/1 matrix as key heads) or "row" (the paper's: each query value
# selects one key value, a softmax over key values). "matrix" learns the nearest-same-token task of the
# tests in 5 of 5 seeds at 300 steps (accuracy 1.0), "row" in 0 of 5 (0.33 .. 0.80); sort at 1000 steps x 4
# restarts with layers=3, width_heads=1, mlps=1, closest_heads=2: 74.31 % matrix, 70.27 % row
CLOSEST_PREDICATE = {"form": "matrix"}
TABLE_TAU = 1.0  # numerical MLP tables train at temperature >= this: annealed with the rest, rows fitted to
# the early (wrong) means saturate and never move (measured on a fraction-of-prefix task: ~0.6 vs ~0.95)


@dataclass
class ProgramConfig:
    vocab: int = 8
    max_len: int = 8
    classes: int = 9
    layers: int = 2
    cat_heads: int = 1
    width_heads: int = 1
    mlps: int = 1
    num_heads: int = 0  # numerical heads per layer (after the width heads)
    num_mlps: int = 0  # numerical-to-categorical MLPs per layer (after the categorical MLPs)
    closest_heads: int = 0  # categorical heads reading the closest selected key per layer (after key heads)
    key_heads: int = 0  # categorical heads choosing a key variable per layer (after the width heads)
    # "variable": the output is one chosen categorical variable; "linear": a linear classifier over
    # every categorical variable (the paper's unembedding), extracted as a ``Classify``
    readout: str = "variable"

    @property
    def K(self) -> int:  # noqa: N802 - values per variable
        return max(self.vocab, self.max_len + 1, self.classes)


NOISE = {
    "gumbel": 0.1
}  # scale of the Gumbel noise while training (0: plain annealed softmax); train() sets it


def _choose(logits: Tensor, tau: float, hard: bool, training: bool) -> Tensor:
    if not training:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    u = torch.rand_like(logits).clamp(1e-9, 1 - 1e-9)
    soft = torch.softmax((logits - NOISE["gumbel"] * torch.log(-torch.log(u))) / tau, -1)
    if not hard:
        return soft
    return F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype) - soft.detach() + soft


class TransformerProgram(nn.Module):
    """The trainable constrained transformer; ``forward(tokens)`` -> logits (B, N, classes)."""

    def __init__(self, cfg: ProgramConfig):
        super().__init__()
        self.cfg, K, N = cfg, cfg.K, cfg.max_len
        self.tau, self.hard = 1.0, False
        n_vars, n_nums = 2, 0  # categorical (tokens, indices, ...) and numerical variables
        # values of a numerical variable (buffers follow the model to its device; not saved)
        self.register_buffer("fracs", torch.tensor(mean_values(N), dtype=torch.float32), persistent=False)
        F_ = len(self.fracs)
        self.heads, self.widths, self.mlps = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        self.nheads, self.nmlps = nn.ParameterList(), nn.ParameterList()
        self.keys, self.closest = nn.ParameterList(), nn.ParameterList()
        # closest heads' position bias (a constant buffer: follows the model's device, not saved)
        self.register_buffer("ranks", closest_ranks(N), persistent=False)
        sizes = [cfg.vocab, N]  # most values each categorical variable can hold
        n_masks = 0  # per numerical head, buffer value_mask_<i>: the (variable, value) pairs it may read
        self.plan: list[
            list[tuple]
        ] = []  # per layer: (kind, parameter index, categorical variables before[, numerical before])
        for _ in range(cfg.layers):
            layer = []
            before = n_vars
            for _ in range(cfg.cat_heads):  # [query var | value var | predicate K x N]
                self.heads.append(nn.Parameter(torch.randn(2 * before + K * N) * 0.1))
                layer.append(("cat", len(self.heads) - 1, before))
                n_vars += 1
                sizes.append(max(sizes[:before]))
            for _ in range(cfg.width_heads):  # [query var | key var | predicate K x K]
                self.widths.append(nn.Parameter(torch.randn(2 * before + K * K) * 0.1))
                layer.append(("width", len(self.widths) - 1, before))
                n_vars += 1
                sizes.append(N + 1)
            for _ in range(cfg.key_heads):  # [query var | key var | value var | predicate K x K]
                self.keys.append(nn.Parameter(torch.randn(3 * before + K * K) * 0.1))
                layer.append(("key", len(self.keys) - 1, before))
                n_vars += 1
                sizes.append(max(sizes[:before]))
            for _ in range(cfg.closest_heads):  # [query var | key var | value var | predicate K x K]
                self.closest.append(nn.Parameter(torch.randn(3 * before + K * K) * 0.1))
                layer.append(("closest", len(self.closest) - 1, before))
                n_vars += 1
                sizes.append(max(sizes[:before]))
            for _ in range(cfg.num_heads):  # [query var | key var | (value var, value) | predicate K x K]
                self.nheads.append(nn.Parameter(torch.randn(2 * before + before * K + K * K) * 0.1))
                # a value the variable never holds would be a constant 0 (and soak up the choice)
                mask = torch.arange(K)[None, :] < torch.tensor(sizes[:before])[:, None]
                self.register_buffer(f"value_mask_{n_masks}", mask, persistent=False)
                n_masks += 1
                layer.append(("num", len(self.nheads) - 1, before))
                n_nums += 1
            before = n_vars
            for _ in range(cfg.mlps):  # [var a | var b | table K*K x K]
                self.mlps.append(nn.Parameter(torch.randn(2 * before + K * K * K) * 0.1))
                layer.append(("mlp", len(self.mlps) - 1, before))
                n_vars += 1
                sizes.append(K)
            if cfg.num_mlps and not n_nums:
                raise ValueError(
                    "num_mlps needs a numerical variable to read: num_heads >= 1 in this layer or before"
                )
            for _ in range(cfg.num_mlps):  # [numerical var | table F x K]
                self.nmlps.append(nn.Parameter(torch.randn(n_nums + F_ * K) * 0.1))
                layer.append(("nmlp", len(self.nmlps) - 1, before, n_nums))
                n_vars += 1
                sizes.append(K)
            self.plan.append(layer)
        self.n_vars, self.n_nums = n_vars, n_nums
        if cfg.readout == "linear":
            self.classifier = nn.Parameter(torch.randn(n_vars, K, cfg.classes) / math.sqrt(K))
            self.class_bias = nn.Parameter(torch.zeros(cfg.classes))
        elif cfg.readout == "variable":
            self.readout = nn.Parameter(torch.linspace(0.0, 1.0, n_vars))  # leaning towards the last variable
        else:
            raise ValueError(f"readout must be 'variable' or 'linear', got {cfg.readout!r}")

    def classifier_weights(self) -> tuple[Tensor, Tensor]:
        """The linear readout's ``(weights (n_vars, K, classes), bias)``: as trained while training,
        else rounded (:func:`round_classifier`) -- the numbers the exported weights carry."""
        if self.training:
            return self.classifier, self.class_bias
        return round_classifier(self.classifier.detach(), self.class_bias.detach())

    # parts of the flat parameter vectors
    def _split(self, p: Tensor, before: int, rest: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
        return p[:before], p[before : 2 * before], p[2 * before :].view(*rest)

    def _split_key(self, i: int, before: int, bank: str = "keys") -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Query, key and value logits and the predicate logits (K x K) of key (or closest) head ``i``."""
        b, p = before, getattr(self, bank)[i]
        return p[:b], p[b : 2 * b], p[2 * b : 3 * b], p[3 * b :].view(self.cfg.K, self.cfg.K)

    def _split_num(self, i: int, before: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Query and key logits, the (variable, value) logits (flat, impossible pairs -inf), predicate."""
        K, b, p = self.cfg.K, before, self.nheads[i]
        value = p[2 * b : 2 * b + b * K].masked_fill(~getattr(self, f"value_mask_{i}").flatten(), -math.inf)
        return p[:b], p[b : 2 * b], value, p[2 * b + b * K :].view(K, K)

    def _split_nmlp(self, p: Tensor, nbefore: int) -> tuple[Tensor, Tensor]:
        return p[:nbefore], p[nbefore:].view(len(self.fracs), self.cfg.K)

    def choices(self) -> dict:
        """The discrete program: every argmax choice (used by ``discrete``)."""
        K, N = self.cfg.K, self.cfg.max_len
        out = {"layers": []}
        for layer in self.plan:
            items = []
            for kind, i, before, *nbefore in layer:
                if kind == "cat":
                    q, v, pred = self._split(self.heads[i], before, (K, N))
                    items.append(("cat", int(q.argmax()), int(v.argmax()), pred.argmax(-1).tolist()))
                elif kind == "width":
                    q, k, pred = self._split(self.widths[i], before, (K, K))
                    items.append(("width", int(q.argmax()), int(k.argmax()), (pred > 0).tolist()))
                elif kind == "key":
                    q, k, v, pred = self._split_key(i, before)
                    items.append(
                        ("key", int(q.argmax()), int(k.argmax()), int(v.argmax()), (pred > 0).tolist())
                    )
                elif kind == "closest":
                    q, k, v, pred = self._split_key(i, before, "closest")
                    choice = (int(q.argmax()), int(k.argmax()), int(v.argmax()), _closest_01(pred))
                    items.append(("closest", *choice))
                elif kind == "num":
                    q, k, vc, pred = self._split_num(i, before)
                    v, c = divmod(int(vc.argmax()), K)
                    items.append(("num", int(q.argmax()), int(k.argmax()), v, c, (pred > 0).tolist()))
                elif kind == "nmlp":
                    v, table = self._split_nmlp(self.nmlps[i], nbefore[0])
                    items.append(("nmlp", int(v.argmax()), table.argmax(-1).tolist()))
                else:
                    a, b, table = self._split(self.mlps[i], before, (K * K, K))
                    items.append(("mlp", int(a.argmax()), int(b.argmax()), table.argmax(-1).tolist()))
            out["layers"].append(items)
        if self.cfg.readout == "linear":
            w, b = self.classifier_weights()
            out["output"] = {"weights": w.tolist(), "bias": b.tolist()}
        else:
            out["output"] = int(self.readout.argmax())
        return out

    def _predicate(self, logits: Tensor, tau: float, train: bool) -> Tensor:
        """A 0/1 predicate matrix: relaxed (logistic noise, temperature ``tau``) while training."""
        if not train:
            return (logits > 0).float()
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        return torch.sigmoid((logits + NOISE["gumbel"] * (torch.log(u) - torch.log1p(-u))) / tau)

    def _near(self, x: Tensor, train: bool) -> Tensor:
        """Weights over the values a numerical variable can hold (B, n+1, F): one-hot of the nearest
        one at evaluation; while training, linear interpolation between the two around ``x`` (a
        lookup table read there gets a gradient towards the value it should take) backward, the
        nearest one forward (the table rows are trained on the values evaluation reads)."""
        fr = self.fracs
        nearest = F.one_hot((x.unsqueeze(-1) - fr).abs().argmin(-1), len(fr)).float()
        if not train:
            return nearest
        x = x.clamp(0.0, 1.0)
        i = (torch.searchsorted(fr, x.detach().contiguous(), right=True) - 1).clamp(0, len(fr) - 2)
        a = (x - fr[i]) / (fr[i + 1] - fr[i])
        soft = F.one_hot(i, len(fr)) * (1 - a).unsqueeze(-1) + F.one_hot(i + 1, len(fr)) * a.unsqueeze(-1)
        return nearest - soft.detach() + soft

    def forward(self, tokens: Tensor) -> Tensor:
        cfg, K, N = self.cfg, self.cfg.K, self.cfg.max_len
        B, n = tokens.shape
        train, tau, hard = self.training, self.tau, self.hard
        dev = tokens.device
        zero = torch.zeros(B, 1, K, device=dev)
        xs = [
            torch.cat([zero, F.one_hot(tokens, K).float()], 1),
            torch.cat([zero, F.one_hot(torch.arange(n, device=dev), K).float().expand(B, n, K)], 1),
        ]
        nums: list[Tensor] = []  # numerical variables (B, n+1)
        not_bos = torch.ones(1, n + 1, 1, device=dev)
        not_bos[:, 0] = 0
        for layer in self.plan:
            new, new_nums = [], []
            for kind, i, before, *_ in layer:
                stack = torch.stack(xs[:before], -1)  # (B, n+1, K, before)
                if kind == "cat":
                    ql, vl, pl = self._split(self.heads[i], before, (K, N))
                    q = stack @ _choose(ql, tau, hard, train)
                    v = stack @ _choose(vl, tau, hard, train)
                    pred = _choose(pl, tau, hard, train)[
                        :, :n
                    ]  # query value -> key position (past the end: BOS)
                    score = BETA / 4 * (q @ pred)  # (B, n+1, n) over real keys
                    bos = torch.full((B, n + 1, 1), BETA / 8, device=dev) + BETA * (1 - not_bos)
                    logits = torch.cat([bos, score], -1)
                    att = torch.softmax(logits, -1) if train else F.one_hot(logits.argmax(-1), n + 1).float()
                    new.append(att[..., 1:] @ v[:, 1:])
                elif kind == "width":
                    ql, kl, pl = self._split(self.widths[i], before, (K, K))
                    q = stack @ _choose(ql, tau, hard, train)
                    k = stack @ _choose(kl, tau, hard, train)
                    pred = self._predicate(pl, tau, train)
                    w = (q @ pred @ k[:, 1:].transpose(1, 2)).sum(-1, keepdim=True)  # (B, n+1, 1)
                    c = torch.arange(K, device=dev).float()
                    new.append(torch.softmax(-((w - c) ** 2) / (0.5 if train else 1e-4), -1) * not_bos)
                elif kind == "key":
                    ql, kl, vl, pl = self._split_key(i, before)
                    q = stack @ _choose(ql, tau, hard, train)
                    k = stack @ _choose(kl, tau, hard, train)
                    v = stack @ _choose(vl, tau, hard, train)
                    sel = q @ self._predicate(pl, tau, train) @ k[:, 1:].transpose(1, 2)  # (B, n+1, n)
                    m = sel.sum(-1, keepdim=True)
                    # the value of the one selected key; none (BOS) or several: no value (the zero vector)
                    one = torch.relu(1 - (m - 1).abs())
                    new.append((sel @ v[:, 1:]) / m.clamp(min=1.0) * one * not_bos)
                elif kind == "closest":
                    ql, kl, vl, pl = self._split_key(i, before, "closest")
                    q = stack @ _choose(ql, tau, hard, train)
                    k = stack @ _choose(kl, tau, hard, train)
                    v = stack @ _choose(vl, tau, hard, train)
                    if CLOSEST_PREDICATE["form"] == "row":
                        pred = _choose(pl, tau, hard, train)  # each query value -> one key value
                    else:
                        pred = self._predicate(pl, tau, train)
                    sel = q @ pred @ k[:, 1:].transpose(1, 2)  # (B, n+1, n)
                    big = 4.0 * N  # selected keys score >= 4N, BOS 3N, the rest <= N - 1 (rank 0 .. N-1)
                    rank = torch.cat(
                        [torch.zeros(1, n, device=dev), self.ranks[:n, :n]], 0
                    )  # BOS query: none
                    logits = torch.cat([torch.full((B, n + 1, 1), 3.0 * N, device=dev), big * sel + rank], -1)
                    if train:
                        att = torch.softmax(logits / tau, -1)
                    else:  # the first selected key in the closest order, else BOS (no value)
                        att = F.one_hot(logits.argmax(-1), n + 1).float()
                    new.append(att[..., 1:] @ v[:, 1:] * not_bos)
                elif kind == "num":
                    ql, kl, vcl, pl = self._split_num(i, before)
                    q = stack @ _choose(ql, tau, hard, train)
                    k = stack @ _choose(kl, tau, hard, train)
                    vc = _choose(vcl, tau, hard, train).view(before, K).T
                    ind = (stack * vc).sum((-2, -1))  # (B, n+1): the chosen 1[var == c]
                    sel = q @ self._predicate(pl, tau, train) @ k[:, 1:].transpose(1, 2)  # (B, n+1, n)
                    # the mean over the selected keys, 0 when none is (exact once the selection is 0/1)
                    mean = (sel @ ind[:, 1:, None]).squeeze(-1) / sel.sum(-1).clamp(min=1.0)
                    new_nums.append(mean * not_bos[..., 0])
            xs, nums = xs + new, nums + new_nums
            new = []
            for kind, i, before, *nbefore in layer:
                if kind == "nmlp":
                    vl, tl = self._split_nmlp(self.nmlps[i], nbefore[0])
                    x = torch.stack(nums[: nbefore[0]], -1) @ _choose(vl, tau, hard, train)  # (B, n+1)
                    new.append(
                        (self._near(x, train) @ _choose(tl, max(tau, TABLE_TAU), hard, train)) * not_bos
                    )
                    continue
                if kind != "mlp":
                    continue
                stack = torch.stack(xs[:before], -1)
                al, bl, tl = self._split(self.mlps[i], before, (K * K, K))
                a = stack @ _choose(al, tau, hard, train)
                b = stack @ _choose(bl, tau, hard, train)
                pair = (a.unsqueeze(-1) * b.unsqueeze(-2)).flatten(-2)  # (B, n+1, K*K)
                new.append(pair @ _choose(tl, tau, hard, train))
            xs = xs + new
        if cfg.readout == "linear":
            w, b = self.classifier_weights()
            return torch.einsum("bpkv,vkc->bpc", torch.stack(xs, -1), w)[:, 1:] + b
        out = torch.stack(xs, -1) @ _choose(self.readout, tau, hard, train)
        return 10.0 * out[:, 1:, : cfg.classes]

    def discrete(self) -> ProgramModule:
        return to_module(self.choices(), self.cfg)


def _closest_01(logits: Tensor) -> list[list[bool]]:
    """A closest head's predicate at evaluation: the row argmax (``row`` form) or ``logits > 0``."""
    if CLOSEST_PREDICATE["form"] == "row":
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).bool().tolist()
    return (logits > 0).tolist()
