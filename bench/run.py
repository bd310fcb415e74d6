"""`make bench`: run every bench/*_bench.py in turn, each in its own process."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    failed = []
    for script in sorted((ROOT / "bench").glob("*_bench.py")):
        module = f"bench.{script.stem}"
        if subprocess.run([sys.executable, "-m", module], cwd=ROOT).returncode != 0:
            failed.append(module)
        print(flush=True)
    if failed:
        sys.exit(f"bench: failed: {', '.join(failed)}")
