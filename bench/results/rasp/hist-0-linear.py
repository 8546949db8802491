# ruff: noqa: E501 - generated tables
"""hist, seed 0 (linear readout)

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
        {0: [-0.75, 0.109375, 0.421875, 0.59375, 0.484375, 0.15625, -0.765625, -0.84375], 1: [-1.15625, 0.0625, 0.40625, 0.5625, 0.390625, 0.21875, -0.796875, -0.578125], 2: [-1.53125, -0.078125, 0.25, 0.4375, 0.203125, 0.0, -1.0, -0.875], 3: [-0.828125, 0.0, 0.359375, 0.46875, 0.4375, 0.140625, -1.09375, -0.859375], 4: [-0.71875, 0.140625, 0.453125, 0.546875, 0.25, -2.171875, 0.6875, -1.203125], 5: [-0.859375, 0.25, 0.578125, 0.75, 0.703125, 0.5, -0.859375, -1.109375]},
        {0: [-1.09375, 0.21875, 0.4375, 0.453125, 0.59375, -0.109375, -0.8125, -1.109375], 1: [-1.125, 0.25, 0.65625, 0.734375, 0.84375, -0.296875, -0.515625, -0.953125], 2: [-0.75, 0.140625, 0.59375, 0.75, 0.875, -0.1875, -0.296875, -0.8125], 3: [-0.859375, -0.109375, 0.40625, 0.625, 0.8125, -0.34375, -0.46875, -0.703125], 4: [-0.515625, 0.125, 0.625, 0.859375, 1.046875, -0.203125, -0.125, -0.703125], 5: [-0.515625, -0.25, 0.21875, 0.4375, 0.609375, -0.34375, -0.125, -0.4375], 6: [-0.40625, -0.078125, 0.28125, 0.484375, 0.59375, -0.53125, 0.1875, -0.53125]},
        {0: [-0.921875, 1.625, -1.6875, -1.46875, -1.4375, -1.234375, -0.390625, -0.71875], 1: [-1.203125, 4.921875, -3.8125, -4.0625, -5.703125, -3.484375, -1.171875, -1.203125], 2: [-1.046875, -1.265625, 4.34375, -4.1875, -4.8125, -2.390625, -1.328125, -1.140625], 3: [-0.84375, -2.0625, 0.296875, 5.59375, -2.046875, -1.25, -0.3125, -0.65625], 4: [-0.125, -1.734375, -2.65625, 1.640625, 6.359375, 0.65625, -0.453125, -0.296875], 5: [-0.6875, -1.65625, -1.34375, -4.484375, 1.109375, 8.0, 2.390625, -0.25], 6: [-2.828125, -2.96875, -2.625, -2.515625, -5.3125, 4.078125, 1.234375, -2.6875], 7: [-0.234375, -2.5625, -3.8125, -3.671875, -6.921875, 2.6875, 3.640625, 0.0]}
        ],
        [-0.921875, 0.0927734375, 0.451171875, 0.6845703125, 0.88671875, -0.3173828125, -0.708984375, -0.9287109375],
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
