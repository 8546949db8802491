"""Choosing among launch candidates by timing them on the GPU, once per key, cached on disk.

A key names the kernel, the shape bucket, the dtype, the target, the device and the versions; the
cache (``~/.cache/tcomp/autotune.json``, or under ``TCOMP_CACHE_DIR``) keeps the winner and the
times of every candidate, so a second process skips the timing. Without a GPU (the interpreter in
CI) nothing is timed: the caller's default is used. ``TCOMP_AUTOTUNE=0`` does the same on a GPU.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tcomp.backends.triton.codegen import cache_dir, interpreting

_MEMO: dict[str, str] = {}


def cache_path() -> Path:
    return cache_dir().parent / "autotune.json"


def device_key() -> str:
    return _device_key(torch.cuda.current_device() if torch.cuda.is_available() else -1)


@functools.cache
def _device_key(index: int) -> str:  # asked on every launch: the driver is queried once per device
    import triton

    name = torch.cuda.get_device_name(index) if index >= 0 else "cpu"
    return f"{name}|torch={torch.__version__}|triton={triton.__version__}"


def lookup(key: str) -> str | None:
    """The winner already chosen for ``key`` in this process (launchers ask before building their
    candidates, so a steady-state launch does no autotuning work)."""
    return _MEMO.get(f"{key}|{device_key()}") if enabled() else None


def enabled() -> bool:
    return (
        torch.cuda.is_available()
        and not interpreting()
        and os.environ.get("TCOMP_AUTOTUNE", "1") not in ("0", "")
    )


def choose(key: str, candidates: dict[str, Callable[[], Any]], default: str) -> str:
    """The fastest of ``candidates`` (name -> a thunk that launches it once) for ``key``."""
    if not enabled():
        return default
    full = f"{key}|{device_key()}"
    if _MEMO.get(full) in candidates:
        return _MEMO[full]
    entry = _read().get(full)
    if entry is not None and entry.get("best") in candidates:
        _MEMO[full] = entry["best"]
        return entry["best"]
    failed: dict[str, str] = {}
    times = timings(candidates, failed)
    best = min(times, key=times.get) if times else default
    _write(full, {"best": best, "ms": times} | ({"failed": failed} if failed else {}))
    _MEMO[full] = best
    return best


def timings(
    candidates: dict[str, Callable[[], Any]], failed: dict[str, str] | None = None
) -> dict[str, float]:
    """Median milliseconds per launch of each candidate that runs. One that fails (more shared
    memory than the device has, a feature this GPU or Triton lacks) is left out and its error kept
    in ``failed`` (written to the cache, so it can be read there)."""
    from triton.testing import do_bench, do_bench_cudagraph

    times = {}
    for name, fn in candidates.items():
        try:
            try:  # kernel time without launch gaps: what decode loops under CUDA graphs see
                times[name] = float(do_bench_cudagraph(fn, rep=40, return_mode="median"))
            except Exception:  # noqa: BLE001 - not capturable: time it plainly
                times[name] = float(do_bench(fn, warmup=10, rep=40, return_mode="median"))
        except Exception as exc:  # noqa: BLE001 - any failure rules the candidate out
            if failed is not None:
                failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return times


def _read() -> dict[str, Any]:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def _write(key: str, entry: dict[str, Any]) -> None:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _read()  # merge with what other processes wrote meanwhile
    data[key] = entry
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
