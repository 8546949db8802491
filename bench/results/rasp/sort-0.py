# ruff: noqa: E501 - generated tables
"""sort, seed 0

Printed by tcomp.rasp; runs on its own: python this_file.py 1 2 3
"""

import sys

VOCAB = [0, 1, 2, 3, 4]
MAX_LEN = 6
OUTPUT = 'categorical'


def build(r):
    select_0_1 = r.Select(r.tokens, r.tokens, '<=')
    width_0_20 = r.SelectorWidth(select_0_1)
    select_2_0 = r.Select(r.indices, width_0_20, {(0, 0), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (4, 6)})
    aggregate_2_0 = r.Aggregate(select_2_0, r.tokens)
    return aggregate_2_0


class _Lists:
    """Runs ``build`` on concrete lists (the RASP semantics of tcomp.rasp.evaluate)."""

    _CMP = {
        "==": lambda k, q: k == q, "<": lambda k, q: k < q, "<=": lambda k, q: k <= q,
        ">": lambda k, q: k > q, ">=": lambda k, q: k >= q, "!=": lambda k, q: k != q,
        "true": lambda k, q: True, "false": lambda k, q: False,
    }

    def __init__(self, tokens):
        self.tokens = list(tokens)
        self.indices = list(range(len(self.tokens)))

    def Map(self, table, x, numerical=False):
        return [(0 if numerical else None) if v is None else table[v] for v in x]

    def SequenceMap(self, table, x, y, numerical=False):
        return [(0 if numerical else None) if a is None or b is None else table[a, b] for a, b in zip(x, y)]

    def Select(self, keys, queries, predicate):
        holds = self._CMP[predicate] if isinstance(predicate, str) else (lambda k, q: (k, q) in predicate)
        # None marks an entry that reads a missing value: it is never selected
        return [[None if k is None or q is None else holds(k, q) for k in keys] for q in queries]

    def _both(self, a, b, op):
        return [[None if x is None or y is None else op(x, y) for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]

    def And(self, a, b):
        return self._both(a, b, lambda x, y: x and y)

    def Or(self, a, b):
        return self._both(a, b, lambda x, y: x or y)

    def Not(self, a):
        return [[None if x is None else not x for x in row] for row in a]

    def Aggregate(self, selector, x, numerical=False):
        out = []
        for row in selector:
            picked = [v for v, s in zip(x, row) if s]
            if numerical:
                out.append(sum(0 if v is None else v for v in picked) / len(picked) if picked else 0)
            else:
                out.append(picked[0] if len(picked) == 1 else None)
        return out

    def SelectorWidth(self, selector):
        return [sum(bool(s) for s in row) for row in selector]


def program(tokens):
    """The program's output at every position of ``tokens``."""
    return build(_Lists(tokens))


if __name__ == "__main__":
    _args = [int(t) if t.lstrip("-").isdigit() else t for t in sys.argv[1:]]
    print(" ".join(str(v) for v in program(_args)))
