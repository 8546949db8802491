"""Linear layers with their epilogue: lowering and launch.

``fuse_epilogues`` finds ``aten.linear`` followed by an activation (GELU, SiLU, ReLU) and/or a
residual add, each the only user of the one before, and replaces the chain by one ``linear`` node.
``linear`` then runs either the generated Triton GEMM with the epilogue fused
(``gemm_template``) or cuBLAS followed by the epilogue in PyTorch, whichever the autotuner timed
faster for this shape on this GPU (``autotune.choose``; cached on disk). Plain linears without an
epilogue stay on ``aten.linear`` (cuBLAS), which nothing here beats at prefill sizes; a decode
step's few-row linears (static rows <= ``SMALL_ROWS``) all become ``linear`` launches whose
candidates are cuBLAS and skinny 16-row tiles (their epilogues go to the elementwise fusion).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import torch
import torch.fx as fx
import torch.nn.functional as F

from tcomp.backends.triton import TRITON, autotune
from tcomp.backends.triton import gemm_template as tmpl
from tcomp.backends.triton.codegen import interpreting, load
from tcomp.backends.triton.configs import cdiv, pow2
from tcomp.graph import shape, val
from tcomp.targets import Target, get_target

aten = torch.ops.aten
_ACT_OF = {op: name for name, op in tmpl.ACTIVATION_OPS.items()}
_TORCH_ACT = {"none": lambda y: y, "relu": F.relu, "gelu": F.gelu, "silu": F.silu}


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int
    tma: bool = False  # the persistent tensor-descriptor variant (Hopper)

    @property
    def name(self) -> str:
        c = self
        kind = "tma" if c.tma else "triton"
        return f"{kind}_{c.block_m}x{c.block_n}x{c.block_k}_g{c.group_m}_w{c.num_warps}_s{c.num_stages}"


SMALL_ROWS = 16  # a linear with at most this many static rows is a GEMV (a decode step's batch)

# Hopper/Ampere candidates (the shapes Triton's matmul tutorial and Inductor's mm configs favour)
GPU_CONFIGS = [
    GemmConfig(128, 256, 64, 8, 8, 3),
    GemmConfig(128, 128, 64, 8, 8, 3),
    GemmConfig(128, 128, 64, 8, 4, 4),
    GemmConfig(256, 128, 64, 8, 8, 3),
    GemmConfig(64, 256, 32, 8, 4, 4),
    GemmConfig(128, 64, 64, 8, 4, 4),
]
# a decode step's few rows (M <= SMALL_ROWS): one 16-row tile, narrow columns so the weight stream is
# spread over many programs (a GEMV is bound by reading the weight once), long K tiles, deep pipelines
SKINNY_CONFIGS = [
    GemmConfig(16, 32, 256, 1, 4, 4),
    GemmConfig(16, 64, 128, 1, 4, 4),
    GemmConfig(16, 32, 128, 1, 4, 6),
    GemmConfig(16, 64, 256, 1, 8, 3),
    GemmConfig(16, 128, 128, 1, 4, 4),
    GemmConfig(16, 16, 512, 1, 4, 3),
]
HOPPER_CONFIGS = [
    GemmConfig(128, 256, 64, 8, 8, 3, tma=True),
    GemmConfig(128, 128, 64, 8, 8, 4, tma=True),
    GemmConfig(128, 128, 64, 8, 4, 4, tma=True),
    GemmConfig(256, 128, 64, 8, 8, 3, tma=True),
]


def interpreter_config(m: int, n: int, k: int) -> GemmConfig:
    """Few, large programs: the interpreter's cost grows with their number."""
    return GemmConfig(min(64, pow2(m)), min(64, pow2(n)), min(64, pow2(k)), 8, 4, 1)


@functools.cache
def kernel_for(spec: tmpl.GemmSpec, interp: bool):
    if spec.tma:
        _descriptor_scratch()
    return load(tmpl.render(spec), spec.name)


def _descriptor_scratch() -> None:
    """Tensor descriptors made inside a kernel need global scratch memory from an allocator."""
    import triton

    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, device="cuda", dtype=torch.int8)

    if torch.cuda.is_available():
        triton.set_allocator(alloc)


def tma_ok(*tensors: torch.Tensor | None) -> bool:
    """Tensor descriptors need unit last strides and 16-byte aligned bases and rows."""
    for t in tensors:
        if t is None:
            continue
        size = t.element_size()
        if t.stride(-1) != 1 or (t.stride(0) * size) % 16 or t.data_ptr() % 16:
            return False
    return True


def num_programs() -> int:
    if torch.cuda.is_available() and not interpreting():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return 4


def reference(x, w, bias, residual, activation: str):
    """What the chain computes in eager PyTorch (cuBLAS, then the epilogue)."""
    y = _TORCH_ACT[activation](F.linear(x, w, bias))
    return y if residual is None else y + residual


def sources(node: fx.Node) -> dict[str, str]:
    """The GEMM a lowered ``linear`` node launches, and its TMA variant where the target has TMA
    (the autotuner may pick it)."""
    x, _w, bias, residual, act = node.args[:5]
    spec = tmpl.GemmSpec(bias is not None, act, residual is not None, val(x).dtype == torch.float32)
    out = {f"{spec.name}.py": tmpl.render(spec)}
    if get_target(node.kwargs["target"]).hopper:
        tma = replace(spec, tma=True)
        out[f"{tma.name}.py"] = tmpl.render(tma)
    return out


@TRITON.launcher(sources=sources)
def linear(
    x,
    w,
    bias=None,
    residual=None,
    activation: str = "none",
    *,
    target: Target | str,
    config: GemmConfig | None = None,
):
    """``act(x @ w.T + bias) + residual`` on the faster of the fused Triton kernel and cuBLAS
    (``config`` forces one Triton configuration); the TMA variants are candidates on targets that
    have TMA."""
    tgt = get_target(target)
    n, k = w.shape
    a = x.reshape(-1, k)
    m = a.shape[0]
    spec = tmpl.GemmSpec(bias is not None, activation, residual is not None, x.dtype == torch.float32)
    if m == 0:
        return reference(x, w, bias, residual, activation)
    res = residual.reshape(m, n) if residual is not None else None

    def launch(cfg: GemmConfig) -> torch.Tensor:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
        tiles = cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n)
        if cfg.tma:
            progs = min(tiles, num_programs())
            kernel_for(replace(spec, tma=True), interpreting())[(progs,)](
                a, w, bias if bias is not None else a, res if res is not None else a, out, m, n, k,
                a.stride(0), w.stride(0), *(res.stride() if res is not None else (0, 0)), out.stride(0),
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
                NUM_PROGRAMS=progs, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            )  # fmt: skip
            return out.view(*x.shape[:-1], n)
        grid = (tiles,)
        kernel_for(spec, interpreting())[grid](
            a, w, bias if bias is not None else a, res if res is not None else a, out, m, n, k,
            *a.stride(), *w.stride(), *(res.stride() if res is not None else (0, 0)), *out.stride(),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            EVEN_K=k % cfg.block_k == 0, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
        return out.view(*x.shape[:-1], n)

    if config is not None:
        return launch(config)
    if interpreting():
        return launch(interpreter_config(m, n, k))
    rows = m if m <= SMALL_ROWS else pow2(m)  # a decode batch is its own bucket: 1 and 16 rows may differ
    key = f"gemm|{spec.name}|m{rows}|n{n}|k{k}|{x.dtype}|{tgt.name}"
    choice = autotune.lookup(key)  # steady state: no candidates built, nothing timed
    if choice is None:
        hopper = tgt.hopper and torch.cuda.get_device_capability(x.device)[0] >= 9
        if m <= SMALL_ROWS:
            configs = SKINNY_CONFIGS
        else:
            configs = GPU_CONFIGS + (HOPPER_CONFIGS if hopper and tma_ok(a, w, res) else [])
        candidates = {"cublas": lambda: reference(x, w, bias, residual, activation)}
        candidates.update({c.name: functools.partial(launch, c) for c in configs})
        choice = autotune.choose(key, candidates, default="cublas")
    config = _BY_NAME.get(choice)
    return launch(config) if config is not None else reference(x, w, bias, residual, activation)


_BY_NAME = {c.name: c for c in GPU_CONFIGS + HOPPER_CONFIGS + SKINNY_CONFIGS}


# ---- lowering ---------------------------------------------------------------------------------


def _only_user(n: fx.Node) -> fx.Node | None:
    return next(iter(n.users)) if len(n.users) == 1 else None


def _passes_through(n: fx.Node) -> bool:
    """Eval-mode dropout and copies: the value goes on unchanged."""
    if n.target is aten.dropout.default:
        return len(n.args) > 2 and (n.args[2] is False or n.args[1] == 0)
    return n.target in (aten.clone.default, aten.alias.default)


def _chain(lin: fx.Node) -> tuple[str, fx.Node | None, list[fx.Node]] | None:
    """(activation, residual, nodes replaced) for the epilogue after ``lin``, or None if there is none."""
    nodes, act, residual = [lin], "none", None
    cur = lin
    while (u := _only_user(cur)) is not None and u.op == "call_function" and _passes_through(u):
        nodes.append(u)
        cur = u
    u = _only_user(cur)
    if u is not None and u.op == "call_function" and u.target in _ACT_OF:
        if u.target is aten.gelu.default and u.kwargs.get("approximate", "none") != "none":
            u = None
        else:
            act = _ACT_OF[u.target]
            nodes.append(u)
            cur = u
            u = _only_user(cur)
    if (
        u is not None
        and u.op == "call_function"
        and u.target is aten.add.Tensor
        and u.kwargs.get("alpha", 1) == 1
    ):
        other = u.args[1] if u.args[0] is cur else u.args[0]
        if (
            isinstance(other, fx.Node)
            and _same_layout(other, cur)
            and not (act == "none" and _norm_only_user(u))  # the add fuses better with the norm after it
        ):
            residual = other
            nodes.append(u)
    if act == "none" and residual is None:
        return None
    return act, residual, nodes


def _norm_only_user(add: fx.Node) -> bool:
    """A post-norm block's residual add, read only by the LayerNorm/RMSNorm after it: the
    elementwise fusion joins the two in one kernel."""
    from tcomp.backends.triton.fusion import is_norm

    return len(add.users) == 1 and is_norm(u := next(iter(add.users))) and u.args[0] is add


def few_rows(lin: fx.Node) -> bool:
    """A linear over at most :data:`SMALL_ROWS` static rows (a decode step): a GEMV, where cuBLAS
    beats the generated tile GEMM, so an epilogue there would be a launch of its own -- left to the
    elementwise fusion instead, which joins it with its neighbours (SiLU and the gate product,
    the residual add and the next RMSNorm)."""
    rows = shape(lin.args[0])
    return rows is not None and all(isinstance(d, int) for d in rows[:-1]) and math.prod(rows[:-1]) <= SMALL_ROWS


def _same_layout(a: fx.Node, b: fx.Node) -> bool:
    va, vb = val(a), val(b)
    return (
        isinstance(va, torch.Tensor)
        and isinstance(vb, torch.Tensor)
        and va.dtype == vb.dtype
        and [str(s) for s in va.shape] == [str(s) for s in vb.shape]
    )


def _supported(lin: fx.Node) -> bool:
    x, w = val(lin.args[0]), val(lin.args[1])
    if not isinstance(x, torch.Tensor) or not isinstance(w, torch.Tensor) or w.dim() != 2:
        return False
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32) or w.dtype != x.dtype:
        return False
    if x.device.type != "cuda" and not interpreting():
        return False
    k = shape(lin.args[1])[1]
    return isinstance(k, int) and isinstance(shape(lin.args[1])[0], int)


def fuse_epilogues(gm: fx.GraphModule, target: Target | str) -> int:
    """Replace each linear+epilogue chain, and each few-row linear, by one ``linear`` node; returns how many."""
    kwargs = {"target": get_target(target).name}  # resolved once; the nodes carry the name
    count = 0
    for lin in list(gm.graph.nodes):
        if lin.op != "call_function" or lin.target is not aten.linear.default or not _supported(lin):
            continue
        # a decode step's GEMV gets the choice of cuBLAS or a skinny tile; its epilogue goes to the
        # elementwise fusion
        found = ("none", None, [lin]) if few_rows(lin) else _chain(lin)
        if found is None:
            continue
        act, residual, nodes = found
        x, w = lin.args[0], lin.args[1]
        bias = lin.args[2] if len(lin.args) > 2 else lin.kwargs.get("bias")
        last = nodes[-1]
        with gm.graph.inserting_before(last):
            new = gm.graph.call_function(linear, (x, w, bias, residual, act), dict(kwargs))
        new.meta.update(last.meta)  # value, source line and module of the chain's result
        last.replace_all_uses_with(new)
        for n in reversed(nodes):
            gm.graph.erase_node(n)
        count += 1
    gm.recompile()
    return count
