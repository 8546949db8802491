# ruff: noqa: E501 - generated tables
"""sort, seed 0

Printed by tcomp.rasp; runs on its own: python this_file.py 1 2 3
"""

import sys

VOCAB = [0, 1, 2, 3, 4, 5, 6, 7]
MAX_LEN = 8
OUTPUT = 'categorical'


def build(r):
    select_0_1 = r.Select(r.tokens, r.indices, {(0, 0), (0, 1), (0, 6), (0, 7), (1, 5), (1, 6), (1, 7), (2, 0), (2, 4), (2, 6), (2, 7), (3, 5), (3, 6), (3, 7), (4, 7), (5, 0), (5, 2), (5, 3), (5, 4), (5, 5), (5, 6), (5, 7), (6, 2), (6, 3), (6, 4), (6, 5), (6, 6), (7, 1), (7, 3), (7, 4), (7, 5), (7, 6), (7, 7)})
    width_0_27 = r.SelectorWidth(select_0_1)
    map_1_36 = r.SequenceMap({(0, 0): 0, (0, 1): 1, (0, 2): 0, (0, 3): 0, (0, 4): 0, (0, 5): 0, (0, 6): 0, (0, 7): 1, (0, 8): 7, (1, 0): 1, (1, 1): 2, (1, 2): 1, (1, 3): 0, (1, 4): 0, (1, 5): 2, (1, 6): 4, (1, 7): 2, (1, 8): 7, (2, 0): 0, (2, 1): 1, (2, 2): 1, (2, 3): 1, (2, 4): 3, (2, 5): 4, (2, 6): 4, (2, 7): 6, (2, 8): 7, (3, 0): 0, (3, 1): 0, (3, 2): 3, (3, 3): 2, (3, 4): 4, (3, 5): 4, (3, 6): 5, (3, 7): 5, (3, 8): 5, (4, 0): 0, (4, 1): 0, (4, 2): 3, (4, 3): 4, (4, 4): 3, (4, 5): 5, (4, 6): 5, (4, 7): 5, (4, 8): 1, (5, 0): 1, (5, 1): 2, (5, 2): 3, (5, 3): 4, (5, 4): 5, (5, 5): 6, (5, 6): 7, (5, 7): 6, (5, 8): 8, (6, 0): 4, (6, 1): 4, (6, 2): 4, (6, 3): 4, (6, 4): 5, (6, 5): 6, (6, 6): 7, (6, 7): 6, (6, 8): 7, (7, 0): 1, (7, 1): 2, (7, 2): 6, (7, 3): 5, (7, 4): 6, (7, 5): 6, (7, 6): 7, (7, 7): 7, (7, 8): 7}, r.indices, width_0_27)
    select_2_1 = r.Select(r.tokens, map_1_36, {(0, 5), (0, 6), (0, 7), (1, 6), (2, 3), (2, 6), (2, 7), (3, 2), (3, 3), (3, 6), (3, 7), (3, 8), (4, 1), (4, 2), (4, 3), (4, 4), (4, 5), (4, 7), (5, 2), (5, 4), (5, 6), (5, 7), (6, 1), (6, 3), (6, 4), (6, 5), (6, 6), (6, 7), (7, 1), (7, 4), (7, 5), (7, 6), (7, 7)})
    width_2_54 = r.SelectorWidth(select_2_1)
    map_3_63 = r.SequenceMap({(0, 0): 0, (0, 1): 0, (0, 2): 1, (0, 3): 0, (0, 4): 0, (0, 5): 1, (0, 6): 5, (0, 7): 6, (0, 8): 1, (1, 0): 0, (1, 1): 2, (1, 2): 1, (1, 3): 2, (1, 4): 2, (1, 5): 3, (1, 6): 4, (1, 7): 6, (1, 8): 0, (2, 0): 0, (2, 1): 0, (2, 2): 1, (2, 3): 3, (2, 4): 3, (2, 5): 4, (2, 6): 4, (2, 7): 6, (2, 8): 8, (3, 0): 0, (3, 1): 0, (3, 2): 2, (3, 3): 2, (3, 4): 3, (3, 5): 4, (3, 6): 4, (3, 7): 6, (3, 8): 6, (4, 0): 0, (4, 1): 0, (4, 2): 3, (4, 3): 3, (4, 4): 5, (4, 5): 4, (4, 6): 4, (4, 7): 5, (4, 8): 6, (5, 0): 0, (5, 1): 0, (5, 2): 4, (5, 3): 5, (5, 4): 5, (5, 5): 6, (5, 6): 7, (5, 7): 6, (5, 8): 6, (6, 0): 0, (6, 1): 7, (6, 2): 5, (6, 3): 5, (6, 4): 5, (6, 5): 6, (6, 6): 7, (6, 7): 6, (6, 8): 7, (7, 0): 1, (7, 1): 6, (7, 2): 6, (7, 3): 6, (7, 4): 5, (7, 5): 6, (7, 6): 7, (7, 7): 6, (7, 8): 7, (8, 0): 0, (8, 1): 0, (8, 2): 0, (8, 3): 5, (8, 4): 5, (8, 5): 7, (8, 6): 7, (8, 7): 7, (8, 8): 6}, width_0_27, width_2_54)
    output = r.Map({0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: None}, map_3_63)
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
