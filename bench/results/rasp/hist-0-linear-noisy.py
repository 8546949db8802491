# ruff: noqa: E501 - generated tables
"""hist, seed 0

Printed by tcomp.rasp; runs on its own: python this_file.py 1 2 3
"""

import sys

VOCAB = [0, 1, 2, 3, 4, 5]
MAX_LEN = 7
OUTPUT = 'categorical'


def build(r):
    select_0_0 = r.Select(r.tokens, r.tokens, '==')
    width_0_15 = r.SelectorWidth(select_0_0)
    output = r.Classify(
        [r.tokens, r.indices, width_0_15],
        [
        {0: [-1.09375, 0.546875, 0.484375, 0.484375, 0.171875, 0.0625, -1.0625, -1.203125], 1: [-1.625, 0.390625, 0.359375, 0.328125, 0.0625, -0.03125, -1.203125, -0.875], 2: [-2.109375, 0.25, 0.25, 0.28125, -0.0625, -0.171875, -1.484375, -1.296875], 3: [-1.1875, 0.734375, 0.234375, -0.0625, 0.03125, -0.421875, -1.578125, -1.25], 4: [-1.046875, 0.421875, 0.390625, 0.34375, 0.046875, -1.84375, 0.109375, -1.671875], 5: [-1.234375, 0.625, 0.59375, 0.609375, 0.453125, 0.40625, -1.3125, -1.609375]},
        {0: [-1.203125, 0.59375, 0.25, 0.28125, 0.09375, -0.65625, -0.78125, -1.234375], 1: [-1.5625, 0.59375, 0.390625, 0.484375, 0.40625, -0.546875, -0.921875, -1.34375], 2: [-0.859375, 0.609375, 0.546875, 0.703125, 0.5625, -0.109375, -0.359375, -0.9375], 3: [-1.09375, 0.25, 0.296875, 0.625, 0.5625, -0.421875, -0.703125, -0.890625], 4: [-0.625, 0.515625, 0.53125, 0.828125, 0.875, 0.046875, -0.25, -0.890625], 5: [-0.703125, 0.0625, 0.0625, 0.421875, 0.4375, -0.328125, -0.21875, -0.59375], 6: [-0.640625, 0.171875, 0.15625, 0.546875, 0.59375, -0.125, -0.03125, -0.828125]},
        {0: [-1.109375, 2.171875, -2.796875, -2.09375, -1.75, -1.3125, -0.390625, -0.875], 1: [-1.390625, 4.90625, -4.703125, -4.3125, -5.546875, -3.890625, -1.0, -1.359375], 2: [-1.078125, -2.65625, 6.859375, -4.453125, -5.171875, -2.484375, -1.4375, -1.234375], 3: [-1.203125, -2.859375, -0.734375, 7.296875, -2.1875, -1.75, -0.5, -0.953125], 4: [-0.21875, -1.859375, -1.515625, 0.609375, 8.0, 0.515625, -0.640625, -0.453125], 5: [-0.859375, -1.8125, -0.609375, -1.953125, -0.109375, 7.890625, 0.828125, -0.296875], 6: [-1.46875, -3.53125, -3.234375, -3.328125, -3.296875, 2.0, 3.296875, -0.953125], 7: [-4.90625, -7.21875, -5.890625, -4.5, -2.375, -2.84375, 3.765625, -4.71875]}
        ],
        [-1.328125, 0.5771484375, 0.341796875, 0.3876953125, 0.52734375, -0.4580078125, -1.177734375, -1.3505859375],
        [0, 1, 2, 3, 4, 5, 6, 7],
    )
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

    def Closest(self, selector):
        """Per query i only the selected key closest to it: keys other than i first, then by the
        distance |i - j|, then the earlier j (the query's own position last); none if none is selected."""
        out = []
        for i, row in enumerate(selector):
            order = sorted(range(len(row)), key=lambda j: (j == i, abs(i - j), j))
            pick = next((j for j in order if row[j]), None)
            out.append([j == pick for j in range(len(row))])
        return out

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

    def Classify(self, inputs, weights, bias, classes):
        # a linear classifier: the best-scoring class (the earlier one on a tie); None adds nothing
        out = []
        for i in range(len(self.tokens)):
            score = list(bias)
            for x, table in zip(inputs, weights):
                row = None if x[i] is None else table.get(x[i])
                if row is not None:
                    score = [a + b for a, b in zip(score, row)]
            out.append(classes[score.index(max(score))])
        return out


def program(tokens):
    """The program's output at every position of ``tokens``."""
    return build(_Lists(tokens))


if __name__ == "__main__":
    _args = [int(t) if t.lstrip("-").isdigit() else t for t in sys.argv[1:]]
    print(" ".join(str(v) for v in program(_args)))
