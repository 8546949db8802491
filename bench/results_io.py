"""Writing benchmark results: one JSON file with the benchmark name, date, device and versions."""

from __future__ import annotations

import datetime as dt
import json
import platform
from pathlib import Path
from typing import Any

import torch


def environment() -> dict[str, Any]:
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for mod in ("triton", "onnxruntime", "transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional dependency absent
            pass
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else (platform.processor() or platform.machine())
    )
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "versions": versions,
    }


def write_results(path: str | Path, benchmark: str, rows: list[dict[str, Any]], **extra: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": benchmark, **environment(), "rows": rows, **extra}, indent=2))
    print(f"wrote {path}")
    return path
