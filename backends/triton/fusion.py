"""Fusion of elementwise chains (and a LayerNorm or RMSNorm that ends one) into generated Triton kernels.

``find_groups`` walks the graph and grows groups of elementwise ATen ops whose intermediate values
have no other user; a group may end in ``aten.layer_norm`` over the last dim or in the lowered
``tcomp.rms_norm`` (the residual add of a pre-norm decoder block and the next block's RMSNorm
become one kernel that stores both the sum and the normalised row). Each group becomes
one node calling ``run_fused(desc, *inputs)``: ``desc`` is a small text description of the group
(the kernel's source is rendered from it, cached, and can be regenerated from the saved graph).

Inputs of a group must be the full output shape (contiguous), a vector along the last dim, or a
number; anything else keeps the group on the eager reference. Arithmetic is fp32 throughout.
"""

from __future__ import annotations

import functools
import json
import operator
from typing import Any

import torch
import torch.fx as fx

from tcomp.backends.triton import TRITON
from tcomp.graph import shape, val

aten = torch.ops.aten

# aten op -> Triton expression over its operands {a}, {b} (fp32 values)
UNARY = {
    aten.relu.default: "tl.maximum({a}, 0.0)",
    aten.gelu.default: "0.5 * {a} * (1.0 + tl.math.erf({a} * 0.7071067811865476))",
    aten.silu.default: "{a} * tl.sigmoid({a})",
    aten.sigmoid.default: "tl.sigmoid({a})",
    aten.neg.default: "-{a}",
    aten.exp.default: "tl.exp({a})",
}
BINARY = {
    aten.add.Tensor: "{a} + {b}",
    aten.sub.Tensor: "{a} - {b}",
    aten.mul.Tensor: "{a} * {b}",
    aten.div.Tensor: "{a} / {b}",
}
IDENTITY = {aten.clone.default, aten.contiguous.default, aten.alias.default}
CASTS = {aten.to.dtype, aten._to_copy.default}


def _elementwise(n: fx.Node) -> bool:
    if n.op != "call_function":
        return False
    t = n.target
    if t is aten.gelu.default and n.kwargs.get("approximate", "none") != "none":
        return False
    if t in BINARY and n.kwargs.get("alpha", 1) != 1:
        return False
    if t is aten.dropout.default:
        return len(n.args) > 2 and (n.args[2] is False or n.args[1] == 0)
    if t in CASTS:
        v = val(n)
        return isinstance(v, torch.Tensor) and v.is_floating_point() and set(n.kwargs) <= {"dtype"}
    return t in UNARY or t in BINARY or t in IDENTITY


def _layer_norm_ok(n: fx.Node) -> bool:
    if n.op != "call_function" or n.target is not aten.layer_norm.default:
        return False
    norm_shape = n.args[1]
    s = shape(n.args[0])
    return (
        s is not None
        and len(norm_shape) == 1
        and isinstance(s[-1], int)
        and norm_shape[0] == s[-1]
        and s[-1] <= 16384
    )


def _rms_norm_ok(n: fx.Node) -> bool:
    """A ``tcomp.rms_norm`` the Triton lowering already put on its kernel (row fits in registers)."""
    from tcomp.backends.triton.rms_norm import MAX_D
    from tcomp.backends.triton.rms_norm import rms_norm as lowered

    if n.op != "call_function" or n.target is not lowered:
        return False
    s = shape(n.args[0])
    return s is not None and len(s) > 0 and isinstance(s[-1], int) and s[-1] <= MAX_D


def is_norm(n: fx.Node) -> bool:
    """A normalisation over the last dim that may end a fused group (LayerNorm or lowered RMSNorm)."""
    return _layer_norm_ok(n) or _rms_norm_ok(n)


def find_groups(gm: fx.GraphModule) -> list[list[fx.Node]]:
    """Maximal single-consumer chains/trees of elementwise ops, optionally ending in a LayerNorm or
    RMSNorm.

    The value a LayerNorm normalises may have users after it (the residual stream of pre-LN blocks:
    ``h = x + attn; y = ln(h); ... h + mlp(y)``): the group then stores it as a second output."""
    group_of: dict[fx.Node, list[fx.Node]] = {}
    groups: list[list[fx.Node]] = []
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for n in gm.graph.nodes:
        is_ln = is_norm(n)
        if not (_elementwise(n) or is_ln) or not isinstance(val(n), torch.Tensor):
            continue
        merged: list[fx.Node] = [n]
        for inp in n.all_input_nodes if not is_ln else [n.args[0]]:
            g = group_of.get(inp)
            if (
                g is not None
                and g in groups
                and (
                    len(inp.users) == 1
                    or (is_ln and all(order[u] > order[n] for u in inp.users if u is not n))
                )
                and g[-1] is inp
                and _same(shape(inp), shape(n))
            ):
                groups.remove(g)
                merged = g + merged
        groups.append(merged)
        for m in merged:
            group_of[m] = merged
        if is_ln:
            for m in merged:
                group_of.pop(m)  # nothing fuses after a LayerNorm (its output is a reduction)
    # a lone LayerNorm is kept too (bench/profile_e2e.py, H200, bf16): aten's moved 1.4 TB/s on ViT-B/16
    # (107 us for 50k x 768 rows), the generated add+LayerNorm kernel 3.5 TB/s on BERT (21 us, 16k rows)
    # (a lone RMSNorm keeps its own kernel: the same one, without the group's generality)
    return [g for g in groups if len(g) >= 2 or g[0].target is aten.layer_norm.default]


def _same(a: tuple | None, b: tuple | None) -> bool:
    return (
        a is not None and b is not None and len(a) == len(b) and all(str(x) == str(y) for x, y in zip(a, b))
    )


def describe(group: list[fx.Node]) -> tuple[str, list[Any]] | None:
    """``(desc, inputs)`` for a group, or None when an input has a layout the kernel does not take."""
    out_shape = shape(group[-1].args[0] if is_norm(group[-1]) else group[-1])
    inside = set(group)
    inputs: list[Any] = []
    kinds: list[str] = []
    names: dict[Any, str] = {}
    steps: list[list[Any]] = []

    def ref(x: Any) -> Any:
        if isinstance(x, fx.Node) and x in inside:
            return names[x]
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return float(x)
        if not isinstance(x, fx.Node):
            raise ValueError("unsupported argument")
        if x not in names:
            s = shape(x)
            if _same(s, out_shape):
                v = val(x)  # a strided view of rows (a slice of a joined projection): read in place
                kind = "full" if v.is_contiguous() or row_stride(v) is None else "rows"
            elif s is not None and len(s) == 1 and str(s[0]) == str(out_shape[-1]):
                kind = "row"
            elif s is not None and all(str(d) == "1" for d in s):
                kind = "scalar"
            else:
                raise ValueError("unsupported broadcast")
            names[x] = f"x{len(inputs)}"
            inputs.append(x)
            kinds.append(kind)
        return names[x]

    try:
        for i, n in enumerate(group):
            t = n.target
            if _rms_norm_ok(n):
                w = n.args[1]
                step = ["rms", ref(n.args[0]), ref(w) if w is not None else None, float(n.args[2])]
            elif t is aten.layer_norm.default:
                w, b = (n.args[2] if len(n.args) > 2 else None), (n.args[3] if len(n.args) > 3 else None)
                eps = n.args[4] if len(n.args) > 4 else 1e-5
                step = [
                    "ln",
                    ref(n.args[0]),
                    ref(w) if w is not None else None,
                    ref(b) if b is not None else None,
                    float(eps),
                ]
            elif t in UNARY:
                step = ["u", str(t), ref(n.args[0])]
            elif t in BINARY:
                step = ["b", str(t), ref(n.args[0]), ref(n.args[1])]
            else:  # identity, cast, dropout in eval: the value passes through (fp32 inside the kernel)
                step = ["id", ref(n.args[0])]
            names[n] = f"t{i}"
            steps.append(step)
    except ValueError:
        return None
    if not any(k in ("full", "rows") for k in kinds):
        return None
    dtype = lambda n: str(val(n).dtype).replace("torch.", "")  # noqa: E731
    extra = [[names[n], dtype(n)] for n in extra_outputs(group)]
    desc = {"kinds": kinds, "steps": steps, "out": dtype(group[-1])} | ({"extra": extra} if extra else {})
    return json.dumps(desc, separators=(",", ":")), inputs


def row_stride(t: torch.Tensor) -> int | None:
    """The stride between consecutive rows of ``t`` seen as (rows, last dim) when its last dim is
    dense and its leading dims collapse to one (a slice along the last dim of a contiguous tensor),
    else None."""
    if t.dim() == 0 or (t.stride(-1) != 1 and t.shape[-1] != 1):
        return None
    dims = [(t.shape[i], t.stride(i)) for i in range(t.dim() - 1) if t.shape[i] != 1]
    if not dims:
        return t.shape[-1]
    for (_, outer), (size, inner) in zip(dims, dims[1:]):
        if outer != inner * size:
            return None
    return dims[-1][1]


def extra_outputs(group: list[fx.Node]) -> list[fx.Node]:
    """Members of ``group`` besides its result that are used outside it (stored as more outputs)."""
    inside = set(group)
    return [n for n in group[:-1] if any(u not in inside for u in n.users)]


_EXPR = {str(k): v for k, v in {**UNARY, **BINARY}.items()}


@functools.cache
def render(desc: str) -> tuple[str, str]:
    """Source text and kernel name for a group description."""
    import hashlib

    d = json.loads(desc)
    name = "tcomp_fused_" + hashlib.sha256(desc.encode()).hexdigest()[:12]
    ln = d["steps"][-1][0] in ("ln", "rms")  # one program per row
    extra = d.get("extra", [])
    strides = [f"S{i}" for i, k in enumerate(d["kinds"]) if k == "rows"]
    args = ", ".join(
        [f"X{i}" for i in range(len(d["kinds"]))] + ["OUT"] + [f"OUT{j + 1}" for j in range(len(extra))] + strides
    )
    lines = [
        "# Generated by tcomp (backends/triton/fusion.py). Do not edit.",
        f"# group: {desc}",
        "import triton",
        "import triton.language as tl",
        "",
        "",
        "@triton.jit",
        f"def {name}({args}, NUMEL, COLS, BLOCK: tl.constexpr):",
    ]
    body = []
    if ln:
        body += [
            "row = tl.program_id(0)",
            "cols = tl.arange(0, BLOCK)",
            "ok = cols < COLS",
            "offs = row * COLS + cols",
        ]
    else:
        body += [
            "offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)",
            "ok = offs < NUMEL",
            "cols = offs % COLS",
        ]
    for i, kind in enumerate(d["kinds"]):
        idx = {"full": "offs", "rows": f"(offs // COLS) * S{i} + cols", "row": "cols", "scalar": "offs * 0"}[kind]
        body.append(f"x{i} = tl.load(X{i} + {idx}, mask=ok, other=0.0).to(tl.float32)")
    for i, step in enumerate(d["steps"]):
        op = step[0]
        if op == "u":
            body.append(f"t{i} = " + _EXPR[step[1]].format(a=f"({_arg(step[2])})"))
        elif op == "b":
            body.append(f"t{i} = " + _EXPR[step[1]].format(a=f"({_arg(step[2])})", b=f"({_arg(step[3])})"))
        elif op == "id":
            body.append(f"t{i} = {_arg(step[1])}")
        elif op == "rms":  # RMSNorm over the row, fp32 as tcomp.rms_norm's reference
            _, x, w, eps = step
            body += [
                f"xs = tl.where(ok, {_arg(x)}, 0.0)",
                "ms = tl.sum(xs * xs, 0) / COLS",
                f"t{i} = xs * (1.0 / tl.sqrt(ms + {eps!r}))",
            ]
            if w is not None:
                body.append(f"t{i} = t{i} * {_arg(w)}")
        else:  # layer norm over the row
            _, x, w, b, eps = step
            body += [
                f"xs = tl.where(ok, {_arg(x)}, 0.0)",
                "mean = tl.sum(xs, 0) / COLS",
                "xc = tl.where(ok, xs - mean, 0.0)",
                "var = tl.sum(xc * xc, 0) / COLS",
                f"t{i} = xc * tl.rsqrt(var + {eps!r})",
            ]
            if w is not None:
                body.append(f"t{i} = t{i} * {_arg(w)}")
            if b is not None:
                body.append(f"t{i} = t{i} + {_arg(b)}")
    last = len(d["steps"]) - 1
    body.append(f"tl.store(OUT + offs, t{last}.to(OUT.dtype.element_ty), mask=ok)")
    for j, (value, _dtype) in enumerate(extra):
        body.append(f"tl.store(OUT{j + 1} + offs, {value}.to(OUT{j + 1}.dtype.element_ty), mask=ok)")
    lines += ["    " + b for b in body]
    return "\n".join(lines) + "\n", name


def _arg(x: Any) -> str:
    return repr(float(x)) if isinstance(x, (int, float)) else str(x)


@functools.cache
def _compiled(desc: str, interp: bool) -> tuple[dict, Any]:
    """Parsed description and compiled kernel, once per process (run_fused is on the hot path)."""
    from tcomp.backends.triton.codegen import load

    src, name = render(desc)
    return json.loads(desc), load(src, name)


def sources(node: fx.Node) -> dict[str, str]:
    """The generated kernel of a fused node (file name -> source)."""
    src, name = render(node.args[0])
    return {f"{name}.py": src}


@TRITON.launcher(sources=sources)
def run_fused(desc: str, *inputs: torch.Tensor) -> torch.Tensor:
    """Run a fused group (the target of fused nodes in lowered graphs)."""
    from tcomp.backends.triton.codegen import interpreting

    d, kern = _compiled(desc, interpreting())
    args, strides = [], []
    for x, k in zip(inputs, d["kinds"]):
        if k == "rows":
            if (rs := row_stride(x)) is None:
                x, rs = x.contiguous(), x.shape[-1]
            strides.append(rs)
        elif k == "full":
            x = x.contiguous()
        args.append(x)
    full = next(x for x, k in zip(args, d["kinds"]) if k in ("full", "rows"))
    out = torch.empty(full.shape, dtype=getattr(torch, d["out"]), device=full.device)
    extra = [
        torch.empty(full.shape, dtype=getattr(torch, t), device=full.device) for _, t in d.get("extra", [])
    ]
    numel, cols = full.numel(), full.shape[-1] if full.dim() else 1
    if numel == 0:
        return (out, *extra) if extra else out
    if d["steps"][-1][0] in ("ln", "rms"):
        block = 1 << max(4, (cols - 1).bit_length())
        grid = (numel // cols,)
        warps = 4 if block <= 2048 else 8
    else:
        block = 4096 if interpreting() else 1024
        grid = ((numel + block - 1) // block,)
        warps = 4
    kern[grid](*args, out, *extra, *strides, numel, cols, BLOCK=block, num_warps=warps)
    return (out, *extra) if extra else out


def drop_noop_casts(gm: fx.GraphModule) -> int:
    """Erase ``aten.to.dtype`` nodes whose input already has that dtype (eager returns the input
    itself): a no-op cast between a residual sum and its later readers would otherwise keep the sum
    out of the next norm's group. Returns how many."""
    count = 0
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target is not aten.to.dtype or set(n.kwargs) - {"non_blocking"}:
            continue
        src = n.args[0]
        if len(n.args) > 2 or not isinstance(src, fx.Node):  # copy= given: a real copy
            continue
        v, out = val(src), val(n)
        if isinstance(v, torch.Tensor) and isinstance(out, torch.Tensor) and v.dtype == out.dtype == n.args[1]:
            n.replace_all_uses_with(src)
            gm.graph.erase_node(n)
            count += 1
    return count


def fuse(gm: fx.GraphModule) -> tuple[int, list[str]]:
    """Replace every fusable group of ``gm`` by a ``run_fused`` node; returns (groups fused, notes)."""
    fused, notes = 0, []
    drop_noop_casts(gm)
    for group in find_groups(gm):
        d = describe(group)
        if d is None:
            notes.append(f"{group[-1].name}: group of {len(group)} ops stays eager (input layout)")
            continue
        desc, inputs = d
        last = group[-1]
        extras = extra_outputs(group)
        with gm.graph.inserting_before(last):
            node = gm.graph.call_function(run_fused, (desc, *inputs))
            results = [node]
            if extras:
                results = [
                    gm.graph.call_function(operator.getitem, (node, i)) for i in range(1 + len(extras))
                ]
                node.meta["val"] = tuple(val(n) for n in [last, *extras])
        for res, old in zip(results, [last, *extras]):
            res.meta.update({k: v for k, v in old.meta.items()})
            old.replace_all_uses_with(res)
        for n in reversed(group):
            gm.graph.erase_node(n)
        fused += 1
    gm.recompile()
    return fused, notes
