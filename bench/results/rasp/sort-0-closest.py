# ruff: noqa: E501 - generated tables
"""sort, seed 0 (closest preset)

Printed by tcomp.rasp; runs on its own: python this_file.py 1 2 3
"""

import sys

VOCAB = [0, 1, 2, 3, 4]
MAX_LEN = 6
OUTPUT = 'categorical'


def build(r):
    select_0_0 = r.Select(r.tokens, r.tokens, {(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (3, 3)})
    width_0_13 = r.SelectorWidth(select_0_0)
    select_0_1 = r.Select(r.tokens, r.indices, {(0, 0), (1, 1), (2, 1), (3, 2), (3, 3), (3, 4), (3, 5), (4, 2), (4, 3), (4, 4), (4, 5)})
    closest_0_1 = r.Closest(select_0_1)
    aggregate_0_1 = r.Aggregate(closest_0_1, r.tokens)
    select_0_2 = r.Select(r.tokens, r.indices, {(0, 0), (0, 1), (1, 0), (2, 2), (2, 4), (4, 4), (4, 5)})
    closest_0_2 = r.Closest(select_0_2)
    aggregate_0_2 = r.Aggregate(closest_0_2, r.tokens)
    map_1_34 = r.Map({0: 2, 1: 6, 2: 0, 3: 3, 4: 3, 5: 4}, r.indices)
    select_2_0 = r.Select(r.tokens, r.indices, {(0, 0), (0, 1), (0, 2)})
    width_2_41 = r.SelectorWidth(select_2_0)
    select_2_1 = r.Select(r.indices, r.indices, {(0, 0), (0, 2), (0, 3), (0, 4), (1, 0), (1, 3), (1, 4), (2, 0), (2, 4), (3, 0), (3, 1), (4, 0), (4, 1), (4, 2), (5, 0), (5, 1), (5, 2), (5, 3), (5, 4)})
    closest_2_1 = r.Closest(select_2_1)
    aggregate_2_1 = r.Aggregate(closest_2_1, r.tokens)
    select_2_2 = r.Select(aggregate_0_2, r.tokens, {(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0), (3, 0), (3, 4), (4, 0)})
    closest_2_2 = r.Closest(select_2_2)
    aggregate_2_2 = r.Aggregate(closest_2_2, aggregate_0_2)
    map_3_62 = r.SequenceMap({(0, 0): 6, (0, 1): 5, (0, 2): 6, (0, 3): 0, (0, 4): 0, (1, 0): 5, (1, 1): 1, (1, 2): 0, (1, 3): 4, (1, 4): 4, (2, 0): 6, (2, 1): 2, (2, 2): 3, (2, 3): 4, (2, 4): 1, (3, 0): 0, (3, 1): 3, (3, 2): 3, (3, 3): 4, (3, 4): 1, (4, 0): 2, (4, 1): 3, (4, 2): 4, (4, 3): 4, (4, 4): 3, (5, 0): 2, (5, 1): 3, (5, 2): 4, (5, 3): 4, (5, 4): 1}, r.indices, aggregate_2_2)
    select_4_0 = r.Select(r.tokens, r.indices, {(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1), (1, 2), (1, 3), (1, 4), (2, 0)})
    width_4_69 = r.SelectorWidth(select_4_0)
    select_4_1 = r.Select(width_0_13, aggregate_2_1, {(0, 0), (0, 3), (1, 0), (1, 3), (1, 4), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4), (4, 0), (4, 1), (4, 2), (4, 3), (4, 4), (5, 0), (5, 1), (5, 2), (5, 3), (5, 4), (6, 0), (6, 1), (6, 2), (6, 3), (6, 4)})
    closest_4_1 = r.Closest(select_4_1)
    aggregate_4_1 = r.Aggregate(closest_4_1, aggregate_2_1)
    select_4_2 = r.Select(width_0_13, r.indices, {(0, 4), (0, 5), (1, 5), (2, 1), (3, 1), (3, 2), (4, 0), (4, 1), (4, 2), (4, 3), (5, 0), (5, 1), (5, 2), (5, 3), (5, 4), (6, 0), (6, 1), (6, 2), (6, 3), (6, 4), (6, 5)})
    closest_4_2 = r.Closest(select_4_2)
    aggregate_4_2 = r.Aggregate(closest_4_2, r.tokens)
    map_5_90 = r.SequenceMap({(0, 0): 0, (0, 1): 0, (0, 2): 1, (0, 3): 3, (0, 4): 3, (1, 0): 0, (1, 1): 4, (1, 2): 2, (1, 3): 3, (1, 4): 5, (2, 0): 1, (2, 1): 2, (2, 2): 1, (2, 3): 2, (2, 4): 2, (3, 0): 3, (3, 1): 2, (3, 2): 2, (3, 3): 5, (3, 4): 6, (4, 0): 3, (4, 1): 5, (4, 2): 6, (4, 3): 6, (4, 4): 6, (5, 0): 0, (5, 1): 6, (5, 2): 6, (5, 3): 6, (5, 4): 5}, r.indices, aggregate_4_1)
    output = r.Classify(
        [r.tokens, r.indices, width_0_13, aggregate_0_1, aggregate_0_2, map_1_34, width_2_41, aggregate_2_1, aggregate_2_2, map_3_62, width_4_69, aggregate_4_1, aggregate_4_2, map_5_90],
        [
        {0: [0.078125, 0.15625, -0.25, -0.625, 0.46875], 1: [-0.5625, 0.3125, -0.078125, -0.5625, 0.21875], 2: [-0.5625, -0.0, 0.5, -0.5, -0.21875], 3: [-0.328125, -1.015625, -1.015625, 1.140625, 0.671875], 4: [-0.28125, -0.078125, -0.0625, -0.5, 0.75]},
        {0: [0.9375, 0.15625, 0.34375, -0.390625, -1.5625], 1: [-0.21875, 0.25, -0.140625, -0.125, -0.109375], 2: [-1.578125, 0.125, 0.15625, 0.234375, 0.28125], 3: [-0.921875, -1.078125, 0.03125, 0.125, 0.671875], 4: [-1.1875, -1.34375, -0.71875, 0.9375, 0.75], 5: [-0.421875, -0.40625, -0.984375, 0.28125, 0.609375]},
        {0: [-0.578125, -0.109375, -1.796875, 0.84375, 0.6875], 1: [-0.6875, -0.421875, -0.71875, 0.90625, 1.0], 2: [-0.453125, -0.609375, 0.125, 0.140625, 0.71875], 3: [-0.484375, 0.15625, 0.609375, -0.28125, -0.265625], 4: [0.21875, 1.125, 1.34375, -0.984375, -1.140625], 5: [0.59375, 1.828125, 1.96875, -1.46875, -3.625], 6: [-0.03125, 1.453125, 1.3125, -2.5625, -6.1875]},
        {0: [1.78125, -1.453125, -0.90625, -1.15625, -0.390625], 1: [-0.140625, 0.59375, 0.0625, -0.859375, -0.390625], 2: [0.4375, 0.46875, 0.6875, -1.234375, -0.625], 3: [-0.84375, -0.8125, -0.59375, 0.53125, 1.203125], 4: [-1.125, -1.1875, -1.046875, 0.234375, 1.0625]},
        {0: [1.203125, 0.046875, -0.890625, -0.875, -0.09375], 1: [0.9375, 1.84375, -2.6875, -1.46875, -0.515625], 2: [-0.3125, -0.640625, 0.625, -0.203125, 0.296875], 3: [-0.203125, 0.078125, 0.265625, 0.25, -0.484375], 4: [-1.328125, -0.984375, -0.359375, -0.234375, 1.046875]},
        {0: [-1.5625, 0.484375, 0.203125, -0.0, 0.671875], 1: [-0.1875, 0.140625, 0.046875, 0.1875, -0.15625], 2: [1.328125, -0.375, 0.625, -0.484375, -1.421875], 3: [-1.375, -1.25, -0.09375, 0.484375, 1.640625], 4: [-0.296875, -0.1875, -0.734375, 0.296875, 0.890625], 5: [-0.21875, 0.0, 0.09375, -0.03125, 0.515625], 6: [0.390625, 0.265625, -0.390625, -0.625, -0.171875]},
        {0: [-2.078125, -0.484375, 0.5625, 0.3125, 1.203125], 1: [-1.328125, 0.296875, 0.15625, 0.34375, 0.296875], 2: [1.578125, -0.28125, -0.765625, -0.6875, -0.4375], 3: [4.328125, -2.734375, -2.0625, -0.5, -0.6875], 4: [2.703125, -1.921875, 0.40625, -0.25, -1.125], 5: [1.421875, -1.171875, 0.03125, 0.53125, -0.296875], 6: [1.5625, -1.65625, -0.1875, 0.171875, 0.03125]},
        {0: [0.515625, 0.0625, -0.21875, -0.0625, -0.4375], 1: [-0.171875, 0.4375, -0.0625, 0.140625, -0.328125], 2: [-0.359375, 0.125, 0.421875, 0.09375, -0.546875], 3: [0.34375, 0.53125, 0.421875, 0.578125, -0.90625], 4: [-0.3125, 0.03125, -0.0, 0.0625, 0.390625]},
        {0: [0.59375, -0.25, -0.203125, -0.0625, 0.3125], 1: [0.171875, 0.671875, -0.1875, -0.28125, -0.28125], 2: [0.25, 0.375, 0.171875, -0.140625, -0.125], 3: [-0.890625, 0.0625, 0.578125, 0.65625, -0.671875], 4: [0.15625, 0.0625, 0.15625, 0.609375, -0.4375]},
        {0: [-0.078125, 0.234375, -0.046875, 0.015625, 0.09375], 1: [0.65625, 0.21875, -0.6875, -0.375, 0.03125], 2: [-0.65625, -0.03125, 0.046875, 0.5625, 0.28125], 3: [0.171875, -0.65625, 0.078125, 0.484375, 0.4375], 4: [-0.609375, -0.765625, -0.109375, 0.53125, 0.9375], 5: [-0.03125, 0.578125, 0.296875, -0.8125, -0.484375], 6: [0.375, 0.3125, -0.078125, -0.140625, -0.03125]},
        {0: [-0.625, -0.21875, -0.765625, 0.265625, 1.078125], 1: [-0.765625, -1.203125, 0.9375, 0.234375, 0.3125], 2: [1.109375, 1.09375, 0.453125, -0.859375, -1.359375], 3: [2.15625, 0.984375, -2.015625, -3.796875, -3.875], 4: [1.765625, -0.5, -5.46875, -8.0, -7.828125], 5: [2.515625, -0.34375, -5.625, -6.515625, -3.875], 6: [3.03125, -1.140625, -4.953125, -2.59375, -2.875]},
        {0: [0.359375, -0.03125, -0.265625, -0.125, 0.375], 1: [-0.609375, 0.484375, 0.3125, 0.40625, -0.453125], 2: [0.234375, 0.109375, 0.6875, 0.078125, -1.0], 3: [0.40625, 0.59375, 0.46875, 0.40625, -1.0625], 4: [0.046875, 0.375, 0.46875, 0.046875, -0.625]},
        {0: [-0.046875, 0.1875, 1.1875, 0.015625, -1.6875], 1: [-0.625, 0.359375, 1.359375, -0.296875, -1.90625], 2: [-0.703125, 0.078125, 1.28125, 0.5, -2.5], 3: [-1.1875, -0.84375, 0.546875, 2.484375, -3.5], 4: [-0.578125, 0.078125, 1.296875, 0.125, -1.46875]},
        {0: [0.6875, 0.296875, 0.140625, -0.71875, -0.5], 1: [-0.640625, 0.453125, 0.375, -0.1875, -0.734375], 2: [0.390625, 0.46875, -0.03125, -0.328125, 0.1875], 3: [0.0, 0.140625, 0.21875, 0.328125, -1.234375], 4: [1.015625, -0.25, -0.171875, -0.546875, -0.203125], 5: [0.09375, -0.015625, -0.0625, 0.109375, 0.421875], 6: [-0.703125, -0.53125, -0.3125, 0.46875, 0.65625]}
        ],
        [-0.40625, -0.1884765625, 0.044921875, 0.0751953125, 0.52734375],
        [0, 1, 2, 3, 4],
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
