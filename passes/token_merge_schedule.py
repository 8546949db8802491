"""Schedules for ``tokens.merge``: how many tokens each attention block removes.

A schedule is resolved once, at optimize time, into a static list ``r_l`` (one per attention site),
so every shape in the rewritten graph stays static in ``r``. Kinds:

* ``r=int`` -- constant: every block removes ``r`` tokens;
* ``r=int, inflect=f`` -- a linear ramp with the same total as the constant schedule: ``f < 0``
  removes more early and fewer late (decreasing), ``f > 0`` the opposite (increasing); ``|f| <= 1``;
* ``r=[r_0, r_1, ...]`` -- explicit, one entry per attention site (0: no merging there);
* ``keep=f`` -- a target fraction of the (unprotected) tokens left after the last block, removed as
  evenly as possible over the blocks.

Every ``r_l`` is capped at half the mergeable tokens of its block: ``(N_l - protected) // 2``.
"""

from __future__ import annotations

from collections.abc import Sequence


def resolve(
    n_sites: int,
    n_tokens: int,
    n_protected: int,
    *,
    r: int | Sequence[int] | None = None,
    inflect: float = 0.0,
    keep: float | None = None,
) -> list[int]:
    """Per-site ``r_l`` for ``n_sites`` blocks on ``n_tokens`` tokens (``n_protected`` never merged)."""
    if (r is None) == (keep is None):
        raise ValueError("tokens.merge: give exactly one of r= (int or per-layer list) and keep= (fraction)")
    if keep is not None:
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"tokens.merge: keep={keep} must be a fraction in (0, 1]")
        total = round((1.0 - keep) * max(0, n_tokens - n_protected))
        wanted = [total // n_sites + (1 if i < total % n_sites else 0) for i in range(n_sites)]
    elif isinstance(r, int):
        if r < 0:
            raise ValueError(f"tokens.merge: r={r} must be >= 0")
        if not -1.0 <= inflect <= 1.0:
            raise ValueError(f"tokens.merge: inflect={inflect} must lie in [-1, 1]")
        if n_sites == 1 or inflect == 0.0:
            wanted = [r] * n_sites
        else:
            lo, hi = r * (1.0 - inflect), r * (1.0 + inflect)  # inflect < 0: start high, end low
            wanted = [round(lo + (hi - lo) * i / (n_sites - 1)) for i in range(n_sites)]
    else:
        wanted = [int(x) for x in r]
        if len(wanted) != n_sites:
            raise ValueError(
                f"tokens.merge: r lists {len(wanted)} layers but the model has {n_sites} attention sites"
            )
        if any(x < 0 for x in wanted):
            raise ValueError(f"tokens.merge: r={wanted} has negative entries")
    out, n = [], n_tokens
    for w in wanted:
        cap = max(0, (n - n_protected) // 2)
        out.append(min(w, cap))
        n -= out[-1]
    return out
