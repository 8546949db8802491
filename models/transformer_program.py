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
lookup-table MLPs), with the same predictions as the discrete model. Plain PyTorch; a trainer and
the tasks of the paper are below.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BETA = 100.0  # attention sharpness of the exported heads
CLOSE_RANK_GAP = 16.0  # logits between neighbouring ranks of an exported closest head (as tcomp.rasp.compile)
# closest heads' predicate: "matrix" (a 0/1 matrix as key heads) or "row" (the paper's: each query value
# selects one key value, a softmax over key values). "matrix" learns the nearest-same-token task of the
# tests in 5 of 5 seeds at 300 steps (accuracy 1.0), "row" in 0 of 5 (0.33 .. 0.80); sort at 1000 steps x 4
# restarts with layers=3, width_heads=1, mlps=1, closest_heads=2: 74.31 % matrix, 70.27 % row
CLOSEST_PREDICATE = {"form": "matrix"}
TABLE_TAU = 1.0  # numerical MLP tables train at temperature >= this: annealed with the rest, rows fitted to
# the early (wrong) means saturate and never move (measured on a fraction-of-prefix task: ~0.6 vs ~0.95)


def mean_values(max_len: int) -> list[float]:
    """The values a numerical variable holds: means of 0/1 over 1..``max_len`` keys, and 0 (the
    fractions ``p / q``); the same floats as ``tcomp.rasp.language.mean_values`` (this package is
    plain PyTorch, so it does not import it)."""
    return sorted({p / q for q in range(1, max_len + 1) for p in range(q + 1)})


# --------------------------------------------------------------------------------------- tasks


def _sort(xs, v):
    return sorted(xs)


def _reverse(xs, v):
    return xs[::-1]


def _hist(xs, v):
    return [xs.count(x) for x in xs]


def _double_hist(xs, v):
    h = [xs.count(x) for x in xs]
    return [sum(1 for y in set(xs) if xs.count(y) == c) for c in h]


def _most_freq(xs, v):
    order = sorted(set(xs), key=lambda t: (-xs.count(t), xs.index(t)))
    return [order[i] if i < len(order) else v for i in range(len(xs))]  # v pads


def _dyck(pairs):
    def label(xs, v):
        out, stack = [], []
        ok = True
        for t in xs:
            if t < pairs:
                stack.append(t)
            elif stack and stack[-1] == t - pairs:
                stack.pop()
            else:
                ok = False
            out.append(0 if not ok else (2 if not stack else 1))  # F(alse) / P(ending) / T(rue)
        return out

    return label


def _dyck_sample(pairs: int, length: int, rng: random.Random) -> list[int]:
    """A Dyck-``pairs`` input as the paper's data (Friedman et al. 2023, ``make_dyck_pft``): half of
    the inputs start with a random balanced word (nested or concatenated pairs), cut or filled up
    with random brackets; the other half are random brackets. Token ``p`` opens pair ``p``,
    ``pairs + p`` closes it."""
    if rng.randrange(2):
        return [rng.randrange(2 * pairs) for _ in range(length)]
    word: list[int] = []
    for _ in range((length + 1) // 2):  # the paper: max_length // 2 pairs, the word cut to the input
        p = rng.randrange(pairs)
        word = word + [p, pairs + p] if rng.randrange(2) else [p, *word, pairs + p]
    word = word[:length]
    return word + [rng.randrange(2 * pairs) for _ in range(length - len(word))]


@dataclass(frozen=True)
class Task:
    name: str
    vocab: int  # input token values 0..vocab-1
    max_len: int
    label: object  # (tokens, vocab) -> target sequence
    classes: int
    min_len: int = 1  # inputs have lengths min_len..max_len, uniformly (as the paper's data)
    sample: object = None  # (length, rng) -> tokens; None: uniform tokens
    # Friedman et al. 2023 (arXiv 2306.01128) Table 1: not transcribed. The table's text could not
    # be retrieved here (only the paper's abstract and the authors' scripts were reachable), and a
    # number that is not read off the paper is not written down.
    paper_accuracy: float | None = None


# As the paper's scripts (princeton-nlp/TransformerPrograms, scripts/rasp.sh, scripts/dyck.sh and
# src/utils/data_utils.py): vocab_size 8 and max_length 8 count the special tokens, so reverse and
# sort (BOS and EOS) have 5 token values and 1..6 tokens, hist, double-hist and most-freq (BOS) 6
# values and 1..7 tokens; Dyck inputs are 15 brackets after BOS. Our BOS is implicit, there is no EOS.
TASKS = {
    "reverse": Task("reverse", 5, 6, _reverse, 5),
    "hist": Task("hist", 6, 7, _hist, 8),
    "double-hist": Task("double-hist", 6, 7, _double_hist, 8),
    "sort": Task("sort", 5, 6, _sort, 5),
    "most-freq": Task("most-freq", 6, 7, _most_freq, 7),
    "dyck-1": Task("dyck-1", 2, 15, _dyck(1), 3, 15, lambda n, rng: _dyck_sample(1, n, rng)),
    "dyck-2": Task("dyck-2", 4, 15, _dyck(2), 3, 15, lambda n, rng: _dyck_sample(2, n, rng)),
}


def _inputs(task: Task, length: int, rng: random.Random) -> list[int]:
    if task.sample is not None:
        return task.sample(length, rng)
    return [rng.randrange(task.vocab) for _ in range(length)]


def make_data(task: Task, n: int, seed: int, length: int | None = None) -> tuple[Tensor, Tensor]:
    """``n`` random inputs of one length (default ``max_len``) and their targets."""
    rng = random.Random(seed)
    length = task.max_len if length is None else length
    xs = [_inputs(task, length, rng) for _ in range(n)]
    ys = [task.label(x, task.vocab) for x in xs]
    return torch.tensor(xs), torch.tensor(ys)


def make_split(task: Task, n: int, seed: int) -> dict[int, tuple[Tensor, Tensor]]:
    """``n`` inputs with lengths drawn uniformly from ``min_len..max_len``, grouped by length
    (the models take one length per batch; no padding)."""
    rng = random.Random(seed)
    counts: dict[int, int] = {}
    for _ in range(n):
        k = rng.randint(task.min_len, task.max_len)
        counts[k] = counts.get(k, 0) + 1
    return {k: make_data(task, c, seed * 1_000 + k, k) for k, c in sorted(counts.items())}


# --------------------------------------------------------------------------------------- model


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
                    rank = torch.cat([torch.zeros(1, n, device=dev), self.ranks[:n, :n]], 0)  # BOS query: none
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


# ------------------------------------------------------------------------ the discrete weights


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


# ------------------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    model: TransformerProgram  # the selected one: best validation accuracy over restarts and checkpoints
    accuracy: float  # of the discrete model on the test split
    steps: int
    seed: int
    val_accuracy: float = 0.0  # of the discrete model on the validation split (the selection metric)
    restart: int = 0  # which restart was selected
    step: int = 0  # at which checkpoint (step count) it was taken
    val_history: list = field(default_factory=list)  # (restart, step, val accuracy) of every checkpoint


def predict(out: Tensor) -> Tensor:
    """Predicted classes from a model's output block: the hot dim, 0 where no dim is hot (no value)."""
    return torch.where(out.amax(-1) > 0.5, out.argmax(-1), 0)


def predictions(model: nn.Module, tokens: Tensor) -> Tensor:
    """A model's predicted classes: the argmax of a linear readout's scores, else :func:`predict`."""
    with torch.no_grad():
        out = model(tokens)
    linear = getattr(model, "argmax_output", False) or getattr(getattr(model, "cfg", None), "readout", "") == "linear"
    return out.argmax(-1) if linear else predict(out)


def accuracy(model: nn.Module, x: Tensor | dict, y: Tensor | None = None) -> float:
    """Token accuracy on ``x, y`` or on a split from :func:`make_split` (all tokens of all lengths)."""
    groups = x.values() if isinstance(x, dict) else [(x, y)]
    dev = next(model.parameters()).device
    right = total = 0
    with torch.no_grad():
        for xs, ys in groups:
            right += int((predictions(model, xs.to(dev)) == ys.to(dev)).sum())
            total += ys.numel()
    return right / total


def tau_schedule(step: int, steps: int, tau_init: float = 3.0, tau_end: float = 0.01) -> float:
    """Gumbel-softmax temperature at ``step``: geometric from ``tau_init`` (step 0) to ``tau_end``
    (the last step), as the paper (``--tau_schedule geomspace``, 3.0 -> 0.01)."""
    return tau_init * (tau_end / tau_init) ** (step / max(1, steps - 1))


def train(
    task: str | Task,
    *,
    seed: int = 0,
    steps: int = 1000,
    batch: int = 64,
    lr: float = 0.05,
    n_train: int = 20_000,
    n_val: int = 1000,
    n_test: int = 1000,
    gumbel: float = 0.1,
    tau_init: float = 3.0,
    tau_end: float = 0.01,
    restarts: int = 1,
    first_restart: int = 0,
    evals: int = 10,
    device: str | torch.device = "cpu",
    **config: int,
) -> TrainResult:
    """Train a Transformer Program on ``task`` and select it on a validation split.

    Adam (lr ``lr``, cosine-decayed to 0), Gumbel-softmax choices (noise scaled by ``gumbel``;
    full-scale noise, 1.0, helps some tasks and hurts others: at 3000 steps double-hist 50.6 ->
    63.9 %, sort 96.9 -> 98.4 %, reverse 99.7 -> 74.8 %, the ``*-noisy`` presets of
    bench/rasp_train.py) with the temperature annealed geometrically ``tau_init -> tau_end``. Train, validation and test inputs are three disjoint random draws
    (seeds ``seed``, ``seed + 10_000``, ``seed + 20_000``), lengths as :func:`make_split`.
    ``restarts`` runs from different initialisations; in each, the discrete model is scored on the
    validation split at ``evals`` checkpoints over the second half of training (and at the end).
    The checkpoint with the best validation accuracy (ties: the later one) is kept; only it is
    scored on the test split. ``first_restart``: the index of the first restart (restarts of one
    run can be spread over processes). ``device``: where to train (the result is on the CPU)."""
    NOISE["gumbel"] = gumbel
    t = TASKS[task] if isinstance(task, str) else task
    data = {k: (x.to(device), y.to(device)) for k, (x, y) in make_split(t, n_train, seed).items()}
    val = make_split(t, n_val, seed + 10_000)
    lengths = list(data)
    weights = torch.tensor([float(len(data[k][0])) for k in lengths])
    cfg = ProgramConfig(vocab=t.vocab, max_len=t.max_len, classes=t.classes, **config)
    checkpoints = {
        min(steps, steps // 2 + round(i * (steps - steps // 2) / evals)) for i in range(1, evals + 1)
    }
    best: tuple[float, int, int, dict] | None = None
    history = []
    with torch.random.fork_rng(devices=[]):
        for r in range(first_restart, first_restart + restarts):
            torch.manual_seed(seed * 1_000 + r)
            model = TransformerProgram(cfg).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=lr)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
            )
            for step in range(steps):
                model.train()
                model.tau = tau_schedule(step, steps, tau_init, tau_end)
                xs, ys = data[lengths[int(torch.multinomial(weights, 1))]]
                idx = torch.randint(0, len(xs), (batch,)).to(device)
                loss = F.cross_entropy(model(xs[idx]).flatten(0, 1), ys[idx].flatten())
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                if step + 1 in checkpoints:
                    model.eval()
                    acc = accuracy(model, val)
                    history.append((r, step + 1, acc))
                    if best is None or acc >= best[0]:
                        best = (acc, r, step + 1, {k: v.cpu() for k, v in model.state_dict().items()})
    assert best is not None
    model = TransformerProgram(cfg)
    model.load_state_dict(best[3])
    model.eval()
    test = make_split(t, n_test, seed + 20_000)
    return TrainResult(model, accuracy(model, test), steps, seed, best[0], best[1], best[2], history)
