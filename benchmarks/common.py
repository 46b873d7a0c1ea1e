"""What every benchmark shares: a description of the machine and a marked block in a docs page."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict[str, Any]:
    """CPU model, cores, GPU, versions and the load at start (timings on a busy machine say so)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = re.findall(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
            "date": time.strftime("%Y-%m-%d")}


def describe(m: dict[str, Any]) -> str:
    return (f"{m['gpu'] + ' GPU, ' if m.get('gpu') else ''}{m['cpu']}, {m['cores']} cores; Python {m['python']}, "
            f"torch {m['torch']}; 1-minute load average at start {m['load_avg_1m_at_start']}; {m['date']}")


def write_block(page: Path, name: str, text: str) -> None:
    """Replace (or append) the block between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    old = page.read_text() if page.exists() else ""
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + ("\n\n" if old else "") + block + "\n"
    page.write_text(new)
