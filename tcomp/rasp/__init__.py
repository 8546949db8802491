"""RASP: the language, its evaluator, a printer to standalone Python, static validation, and
(in ``tcomp.rasp.compile``) a compiler to the weights of a plain PyTorch transformer."""

from __future__ import annotations

from tcomp.rasp.evaluate import evaluate, evaluate_all
from tcomp.rasp.language import (
    Aggregate,
    Classify,
    Closest,
    Comparison,
    Expr,
    Map,
    Select,
    Selector,
    SelectorWidth,
    SequenceMap,
    SOp,
    indices,
    mean_values,
    tokens,
    value_sets,
    walk,
)
from tcomp.rasp.printer import load_source, to_source
from tcomp.rasp.validate import ValidationError, problems, validate

__all__ = [
    "Aggregate",
    "Classify",
    "Closest",
    "Comparison",
    "Expr",
    "Map",
    "SOp",
    "Select",
    "Selector",
    "SelectorWidth",
    "SequenceMap",
    "ValidationError",
    "evaluate",
    "evaluate_all",
    "indices",
    "load_source",
    "mean_values",
    "problems",
    "to_source",
    "tokens",
    "validate",
    "value_sets",
    "walk",
]
