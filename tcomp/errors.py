"""tcomp's exceptions. Every message names the place in the user's model and what to do."""

from __future__ import annotations

import os
import traceback
from types import TracebackType

import torch

_TORCH_DIR = os.path.dirname(torch.__file__)
_TCOMP_DIR = os.path.dirname(os.path.abspath(__file__))


class TcompError(Exception):
    """Base class of every error tcomp raises on purpose."""


class CaptureError(TcompError):
    """The model could not be captured into a graph."""


class InputError(TcompError):
    """The inputs given to tcomp (or to an optimized module) do not fit."""


class PassError(TcompError):
    """A pass or the pass registry was used wrongly."""


def user_frame(tb: TracebackType | None) -> str | None:
    """The innermost frame of a traceback that lies in the user's code (not torch, not tcomp),
    as ``file:line in function: source``; None when there is none."""
    frames = traceback.extract_tb(tb) if tb is not None else []
    for fr in reversed(frames):
        path = os.path.abspath(fr.filename)
        if path.startswith(_TORCH_DIR) or path.startswith(_TCOMP_DIR) or "<" in fr.filename:
            continue
        src = (fr.line or "").strip()
        return f"{fr.filename}:{fr.lineno} in {fr.name}" + (f": {src}" if src else "")
    return None
