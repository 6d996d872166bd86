"""What every benchmark script ends with: the machine it ran on, and the JSON results plus an exit code."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any


def machine(*packages: str, **extra: Any) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        **extra,
        **{p: version(p) for p in packages},
    }


def cpu_seconds() -> float:
    """This process's user + system CPU time (benchmarks also run it on each Dask worker)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def finish(output: Path, result: dict[str, Any], failures: list[str]) -> int:
    """Write the results as JSON; 1 (and the reasons on stderr) when a target was missed."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"results written to {output}", file=sys.stderr)
    if failures:
        print(f"FAILED: {'; '.join(failures)}", file=sys.stderr)
        return 1
    return 0
