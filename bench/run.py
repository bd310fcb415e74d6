"""`make bench`: run every bench/*_bench.py in turn, each in its own process, then print the issue's
targets beside the ratios measured in this run (bench/targets.py)."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import RESULTS_ENV  # noqa: E402
from bench.targets import floors, read_results, table  # noqa: E402

if __name__ == "__main__":
    failed = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ztmesh-bench-") as tmp:
        results = Path(tmp) / "results.jsonl"
        env = {**os.environ, RESULTS_ENV: str(results)}
        for script in sorted((ROOT / "bench").glob("*_bench.py")):
            module = f"bench.{script.stem}"
            if subprocess.run([sys.executable, "-m", module], cwd=ROOT, env=env).returncode != 0:
                failed.append(module)
            print(flush=True)
        print("== targets (issue 15): measured in this run, side by side ==")
        values = read_results(results)
        print(table(values))
        print()
        print(floors(values))
        print("where the time goes, measured: docs/serving-stack.md")
    print(f"\nbench: {time.monotonic() - started:.0f} s")
    if failed:
        sys.exit(f"bench: failed: {', '.join(failed)}")
