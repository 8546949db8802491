"""The optimization report: per pass what changed, under which contract, and the measured error;
the attention sites found; the cost of each site. JSON-able and printable."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tcomp.pipeline import PassRecord


@dataclass
class Report:
    model: str
    target: str
    passes: list[PassRecord] = field(default_factory=list)
    sites: list[dict[str, Any]] = field(default_factory=list)  # attention sites of the final graph
    base_error: float | None = None  # the original model's own error vs float64 in its dtype
    final_error: float | None = None  # the optimized module's error vs float64
    dynamic_dims: dict[str, Any] = field(default_factory=dict)
    cost: list[dict[str, Any]] = field(default_factory=list)  # numeric cost rows by sequence length
    cost_symbolic: dict[str, str] = field(default_factory=dict)  # site kind -> sympy expression text
    notes: list[str] = field(default_factory=list)
    planner: dict[str, Any] | None = None  # optimize(max_error=...): tcomp.planner.Search.to_dict()

    @property
    def unmatched(self) -> list[dict[str, Any]]:
        """Softmax attention canonicalize found but could not take (module, why): it stays as the
        model wrote it and no attention pass reaches it."""
        return [u for r in self.passes if r.name == "canonicalize" for u in r.unmatched]

    def __getitem__(self, name: str) -> PassRecord:
        for r in self.passes:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "target": self.target,
            "base_error": self.base_error,
            "final_error": self.final_error,
            "passes": [r.to_dict() for r in self.passes],
            "sites": self.sites,
            "dynamic_dims": self.dynamic_dims,
            "cost": self.cost,
            "cost_symbolic": self.cost_symbolic,
            "notes": self.notes,
            "planner": self.planner,
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    def render(self, console: Any | None = None) -> str:
        """Human-readable tables (rich); returns the text and prints it to ``console`` if given."""
        from rich.console import Console
        from rich.table import Table

        con = Console(record=True, width=140, file=open("/dev/null", "w")) if console is None else console  # noqa: SIM115
        con.print(f"[bold]tcomp[/bold] {self.model} -> target [bold]{self.target}[/bold]")
        t = Table(title="passes")
        for col in ("pass", "contract", "status", "rewrites", "rel. error", "tolerance", "reason"):
            t.add_column(col)
        for r in self.passes:
            t.add_row(
                r.name, r.contract, r.status, str(r.rewrites), _fmt(r.error), _fmt(r.tolerance), r.reason
            )
        con.print(t)
        if self.sites:
            s = Table(title=f"attention sites ({len(self.sites)})")
            for col in (
                "#",
                "module",
                "spelling",
                "q shape",
                "k shape",
                "bias",
                "mask",
                "causal",
                "scale",
                "proj",
                "runs on",
            ):
                s.add_column(col)
            for site in self.sites:
                s.add_row(
                    str(site.get("layer")),
                    site.get("module", ""),
                    site.get("spelling", ""),
                    "×".join(site.get("q", [])),
                    "×".join(site.get("k", [])),
                    _yn(site.get("bias")),
                    _yn(site.get("mask")),
                    _yn(site.get("causal")),
                    f"{site.get('scale', 0):.4g}",
                    site.get("projections", ""),
                    site.get("runs_on", ""),
                )
            con.print(s)
        if self.cost:
            c = Table(title="cost (roofline on target)")
            for col in self.cost[0]:
                c.add_column(col)
            for row in self.cost:
                c.add_row(*[_fmt(v) if isinstance(v, float) else str(v) for v in row.values()])
            con.print(c)
        if self.planner:
            planner_tables(con, self.planner)
        con.print(f"error vs float64: original {_fmt(self.base_error)}, optimized {_fmt(self.final_error)}")
        for n in self.notes:
            con.print(f"note: {n}")
        return con.export_text()

    def __str__(self) -> str:
        return self.render()


def site_record(attn: Any) -> dict[str, Any]:
    """The report's description of one ``tcomp.attention`` node: where it is in the user's model,
    how it was spelled, shapes, bias/mask/causal/scale and its q/k/v projections."""
    from tcomp import meta
    from tcomp.graph import module_path, shape, source_line

    q, k, _v, bias, mask, scale, causal = attn.args[:7]  # tcomp.cached_attention: kv_len (and int8 scales) follow
    return {
        "layer": attn.meta.get(meta.ATTN_LAYER),
        "node": attn.name,
        "module": attn.meta.get(meta.ATTN_SOURCE) or module_path(attn),
        "spelling": attn.meta.get(meta.ATTN_SPELLING, ""),
        "source": source_line(attn),
        "q": [str(s) for s in shape(q)],
        "k": [str(s) for s in shape(k)],
        "bias": bias is not None,
        "mask": mask is not None,
        "scale": float(scale),
        "causal": bool(causal),
        "projections": _projections(attn),
    }


def _projections(attn: Any) -> str:
    """e.g. "qkv" (one fused projection) or "q + k + v" (from canonicalize's annotation)."""
    from tcomp import meta

    groups: dict[str, str] = {}
    for role, name in (attn.meta.get(meta.ATTN_PROJ) or {}).items():
        groups[name] = groups.get(name, "") + role
    return " + ".join(sorted(groups.values(), key=len, reverse=True))


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def _yn(x: Any) -> str:
    return "yes" if x else "-"


def planner_tables(con: Any, p: dict[str, Any]) -> None:
    """The planner's choice per site and its end-to-end checks (optimize(max_error=...))."""
    from rich.table import Table

    err = {(m["site"], m["candidate"]): m for m in p["measured"]}
    t = Table(title=f"plan under max_error={p['max_error']} ({p['metric']}, objective {p['objective']})")
    for col in ("site", "chosen", "error alone", "saving"):
        t.add_column(col)
    for site, cand in p["chosen"].items():
        m = err.get((site, cand), {})
        t.add_row(site, cand, _fmt(m.get("error")), _fmt(m.get("saving")))
    con.print(t)
    v = Table(title="plan checks (fit / held-back split)")
    for col in ("sites", "estimated", "fit error", "held-back error", "predicted gain"):
        v.add_column(col)
    for ver in p["verifications"]:
        gain = ver.get("speedup", ver.get("saving"))
        v.add_row(str(len(ver["chosen"])), _fmt(ver["estimated_error"]), _fmt(ver["fit_error"]),
                  _fmt(ver["held_back_error"]), _fmt(gain))  # fmt: skip
    con.print(v)
    if p.get("reason"):
        con.print(f"planner: {p['reason']}")
