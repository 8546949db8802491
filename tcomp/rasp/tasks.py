"""The tasks of Transformer Programs (Friedman, Wettig and Chen 2023, arXiv 2306.01128) and their data.

``TASKS`` names each task (input vocabulary, longest input, labelling function, number of classes);
:func:`make_data` draws inputs of one length and :func:`make_split` a split whose lengths are drawn
uniformly, as the paper's data. Randomness arrives as an explicit ``seed``: the same seed gives the
same tensors.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor


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
