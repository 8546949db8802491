"""What happens when a pass the user asked for does nothing: ``optimize(..., on_failure=...)``, and
when attention stays out of every pass's reach: ``optimize(..., strict=True)``.

A pass named in ``passes=`` that ends rolled back (its check failed, or it raised) or skipped (no
site to rewrite, or not applicable) in every graph of the run has not done what the user asked.
That is never only a line in the report:

* ``"raise"`` (the default): a :class:`PassFailed` error naming each such pass, per graph its outcome
  -- the measured error against the tolerance and the sites for a rollback, the reason for a skip;
* ``"warn"``: the same text as a :class:`PassFailedWarning`, and the result is returned;
* ``"skip"``: the result is returned; the report holds the outcome.

``canonicalize`` and the backend's own steps are not the user's requests: they are checked by
their contracts (a lowering that is rolled back leaves the graph on the reference ops).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

from tcomp.errors import InputError, PassError

ON_FAILURE = ("raise", "warn", "skip")


class PassFailed(PassError):
    """A pass the user asked for was rolled back or skipped everywhere (``on_failure="raise"``)."""


class UnmatchedAttention(PassError):
    """Softmax attention canonicalize could not take (``optimize(strict=True)``)."""


class PassFailedWarning(UserWarning):
    """A pass the user asked for was rolled back or skipped everywhere (``on_failure="warn"``)."""


def check_on_failure(on_failure: str) -> None:
    if on_failure not in ON_FAILURE:
        raise InputError(f"on_failure={on_failure!r}: choose one of {', '.join(map(repr, ON_FAILURE))}")


def requested(plan: Any) -> list[str]:
    """The passes of ``plan`` the user asked for: its steps but ``canonicalize`` (always run)."""
    return [s.name for s in plan.steps if s.name != "canonicalize"]


def _analysed(rec: Any) -> bool:
    """An analysis pass (EXACT, the graph left as it was) that produced its result (``rasp.extract``:
    the program, in ``sites``) has done what was asked with zero rewrites."""
    return rec.status == "skipped" and rec.exactness == "exact" and bool(rec.sites)


def _outcome(rec: Any) -> str:
    if rec.status == "rolled_back":
        err, tol = rec.error, rec.tolerance
        measured = f"error {err:.3g} > tolerance {tol:.3g}" if err is not None and tol is not None else ""
        named = [s.get("module") or s.get("site") or s.get("layer") for s in rec.sites or []]
        sites = ", ".join(str(n) for n in named[:6] if n not in (None, ""))
        parts = [p for p in (rec.reason or measured, f"sites {sites}" if sites else "") if p]
        return "rolled back: " + "; ".join(parts)
    return f"skipped: {rec.reason or 'nothing to rewrite'}"


def enforce(names: Sequence[str], graphs: dict[str, Iterable[Any]], on_failure: str) -> None:
    """Act on ``on_failure`` for every name in ``names`` whose record is not "applied" in any of
    ``graphs`` (graph label -> its pass records)."""
    if on_failure == "skip" or not names:
        return
    records = {label: {r.name: r for r in recs} for label, recs in graphs.items()}
    failed = []
    for name in dict.fromkeys(names):
        recs = {label: by[name] for label, by in records.items() if name in by}
        if not recs or any(r.status == "applied" or _analysed(r) for r in recs.values()):
            continue
        where = "; ".join(
            (f"{label}: " if len(recs) > 1 else "") + _outcome(r) for label, r in recs.items()
        )
        failed.append(f"{name} did not apply ({where})")
    if not failed:
        return
    msg = (
        "; ".join(failed)
        + ". The model is returned only if you ask for it: on_failure='warn' (warn and return what did apply) or "
        "'skip' (the report keeps the outcome); or loosen the pass's tolerance= where its error is the reason"
    )
    if on_failure == "raise":
        raise PassFailed(msg)
    warnings.warn(msg, PassFailedWarning, stacklevel=3)


def enforce_strict(graphs: dict[str, Iterable[Any]], strict: bool) -> None:
    """``strict=True``: every softmax a product of two activations reaches must have become
    ``tcomp.attention`` in each of ``graphs`` (label -> pass records; canonicalize's ``unmatched``);
    otherwise an error naming each module and the link that broke the match."""
    unmatched = [u for recs in graphs.values() for r in recs if r.name == "canonicalize" for u in r.unmatched]
    if not strict or not unmatched:
        return
    seen = list(dict.fromkeys(f"{u['module']} ({u['why']})" for u in unmatched))
    raise UnmatchedAttention(
        f"strict=True: {len(seen)} attention site(s) stay softmax as the model wrote them, out of reach of every "
        f"attention pass: {'; '.join(seen)}. Rewrite that attention in a form canonicalize reads (SDPA, or "
        "softmax(q @ k^T * scale + bias/mask) @ v), or optimize with strict=False and read the report"
    )
