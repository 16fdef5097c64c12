#!/usr/bin/env python
"""Side-by-side speed and memory benchmark of hiera_det against every peer implementation (benchmarks/).

    python tools/benchmark.py --smoke --out /tmp/smoke       # every case, tiny, on CPU
    python tools/benchmark.py --help                         # the cases and every option

The benchmark code lives in the repository's ``benchmarks`` package, not in the installed hiera_det; this
entry point puts the checkout on ``sys.path`` so that it runs from anywhere.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.run import main  # noqa: E402

if __name__ == "__main__":
    report = main()
    # a run that measured nothing (full sizes without a GPU, a spent time budget) is not a success
    results = report.get("results", [])
    sys.exit(1 if results and all(r.get("status") == "skipped" for r in results) else 0)
