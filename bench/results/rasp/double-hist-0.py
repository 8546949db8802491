# ruff: noqa: E501 - generated tables
"""double-hist, seed 0

Printed by tcomp.rasp; runs on its own: python this_file.py 1 2 3
"""

import sys

VOCAB = [0, 1, 2, 3, 4, 5]
MAX_LEN = 7
OUTPUT = 'categorical'


def build(r):
    select_0_2 = r.Select(r.indices, r.tokens, {(0, 0), (0, 1), (0, 2), (0, 3), (0, 5), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4), (3, 5), (4, 1), (4, 3), (4, 4), (4, 5), (5, 0), (5, 1), (5, 2), (5, 3), (5, 4), (6, 1), (6, 2), (6, 4), (6, 5)})
    is_indices_4 = r.Map({0: 0, 1: 0, 2: 0, 3: 0, 4: 1, 5: 0, 6: 0}, r.indices, numerical=True)
    mean_0_2 = r.Aggregate(select_0_2, is_indices_4, numerical=True)
    map_1_39 = r.Map({0.0: 1, 0.14285714285714285: 2, 0.16666666666666666: 1, 0.2: 2, 0.25: 2, 0.2857142857142857: 1, 0.3333333333333333: 1, 0.4: 1, 0.42857142857142855: 3, 0.5: 1, 0.5714285714285714: 5, 0.6: 6, 0.6666666666666666: 0, 0.7142857142857143: 5, 0.75: 4, 0.8: 6, 0.8333333333333334: 4, 0.8571428571428571: 4, 1.0: 0}, mean_0_2)
    select_2_1 = r.Select(r.indices, map_1_39, {(0, 3), (0, 4), (0, 5), (0, 6), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (1, 6), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (2, 5), (2, 6), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4), (3, 5), (3, 6), (4, 0), (4, 1), (4, 2), (4, 5), (4, 6), (5, 0), (5, 1), (5, 2), (5, 3), (5, 5), (5, 6), (6, 0), (6, 1), (6, 2), (6, 4), (6, 5), (6, 6)})
    width_2_55 = r.SelectorWidth(select_2_1)
    select_4_1 = r.Select(r.tokens, r.tokens, {(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (2, 0), (2, 1), (2, 3), (2, 4), (2, 5), (3, 0), (3, 1), (3, 2), (3, 4), (3, 5), (4, 0), (4, 1), (4, 2), (4, 3), (4, 5), (5, 0), (5, 1), (5, 2), (5, 3), (5, 4)})
    width_4_87 = r.SelectorWidth(select_4_1)
    map_5_96 = r.SequenceMap({(0, 0): 0, (0, 1): 0, (0, 2): 1, (0, 3): 0, (0, 4): 2, (0, 5): 0, (0, 6): 0, (0, 7): 0, (1, 0): 0, (1, 1): 1, (1, 2): 0, (1, 3): 0, (1, 4): 0, (1, 5): 0, (1, 6): 1, (1, 7): 1, (2, 0): 0, (2, 1): 0, (2, 2): 2, (2, 3): 0, (2, 4): 0, (2, 5): 0, (2, 6): 0, (2, 7): 1, (3, 0): 0, (3, 1): 0, (3, 2): 0, (3, 3): 3, (3, 4): 1, (3, 5): 0, (3, 6): 0, (3, 7): 0, (4, 0): 2, (4, 1): 0, (4, 2): 0, (4, 3): 1, (4, 4): 2, (4, 5): 0, (4, 6): 0, (4, 7): 0, (5, 0): 3, (5, 1): 0, (5, 2): 0, (5, 3): 0, (5, 4): 1, (5, 5): 1, (5, 6): 0, (5, 7): 0, (6, 0): 0, (6, 1): 1, (6, 2): 0, (6, 3): 0, (6, 4): 0, (6, 5): 2, (6, 6): 2, (6, 7): 0, (7, 0): 0, (7, 1): 1, (7, 2): 0, (7, 3): 0, (7, 4): 1, (7, 5): 0, (7, 6): 0, (7, 7): 0}, width_2_55, width_4_87)
    output = r.Map({0: 1, 1: 2, 2: 3, 3: 4}, map_5_96)
    return output


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
