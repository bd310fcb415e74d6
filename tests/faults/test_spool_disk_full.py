"""Fault: the disk fills up in the middle of a spool write (a short write). Through a real process
whose file-size limit (RLIMIT_FSIZE) makes the kernel write only part of a group's frames.

Safe outcome: the group that did not fit is refused (its callers are told, nothing of it is
acknowledged), and every group acknowledged before or after it is read back whole — the partial
bytes must not make a later acknowledged frame look torn and be set aside.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, resource, signal, sys
from pathlib import Path
from ztmesh.audit.spoolfile import SpoolFiles

directory = Path(sys.argv[1])
damage = []
spool = SpoolFiles(directory, segment_bytes=1 << 20, on_damage=damage.append)
frame = lambda name: json.dumps({"event_id": name, "pad": "x" * 40}).encode()
spool.append([frame("before-1"), frame("before-2")])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG / short) instead of killing us
segment = max(directory.iterdir(), key=lambda p: p.stat().st_size)
resource.setrlimit(resource.RLIMIT_FSIZE, (segment.stat().st_size + 20, resource.RLIM_INFINITY))
refused = ""
try:
    spool.append([frame("did-not-fit")])
except OSError as exc:
    refused = str(exc)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
spool.append([frame("after-1")])
spool.append([frame("after-2"), frame("after-3")])
read = [json.loads(payload)["event_id"] for _, payload in spool.read_batch(100)]
print(json.dumps({"refused": refused, "read": read, "damage": len(damage)}))
"""


def test_a_short_write_refuses_its_group_and_loses_no_acknowledged_frame(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["refused"], "the group that did not fit must be refused"
    assert result["read"] == ["before-1", "before-2", "after-1", "after-2", "after-3"]
    assert result["damage"] == 0  # nothing acknowledged was taken for a torn frame and set aside
    print(f"\nspool short write: refused {result['refused']!r}; 5 acknowledged frames read back, none set aside")
