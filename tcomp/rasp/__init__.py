"""RASP: the language, its evaluator, a printer to standalone Python, programs stored as JSON,
static validation, and (in ``tcomp.rasp.compile``) a compiler to the weights of a plain PyTorch
transformer. Transformer Programs (Friedman et al. 2023) live beside it: their tasks
(``tcomp.rasp.tasks``), the trainable model (``tcomp.rasp.program_model``), training
(``tcomp.rasp.train``) and the export of a trained model to weights ``tcomp.rasp.extract`` reads
(``tcomp.rasp.export``); those import torch and are not loaded by ``import tcomp.rasp``."""

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
from tcomp.rasp.store import StoredProgram, from_json, load_json, save_json, to_json
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
    "StoredProgram",
    "ValidationError",
    "evaluate",
    "evaluate_all",
    "from_json",
    "indices",
    "load_json",
    "load_source",
    "mean_values",
    "problems",
    "save_json",
    "to_json",
    "to_source",
    "tokens",
    "validate",
    "value_sets",
    "walk",
]
