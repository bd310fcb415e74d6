"""A stand-alone emitting service for the crash test: emits events through a spool and prints each
event id once `emit` returned (i.e. once it was acknowledged as durable), until it is killed.

`python -m tests.audit.emitter_child emit|drain SPOOL_DIR KIND DSN [--direct]`
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tests.audit.factory import POLICY, Backend
from ztmesh.audit.sink import LocalSink
from ztmesh.audit.spool import SpoolEmitter, SpoolSettings
from ztmesh.mesh.auditing import AuditEvent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["emit", "drain"])
    parser.add_argument("spool", type=Path)
    parser.add_argument("kind")
    parser.add_argument("dsn")
    parser.add_argument("--direct", action="store_true")
    args = parser.parse_args()
    backend = Backend(args.kind, args.dsn)
    sink = LocalSink(backend.sink_store, emitter=POLICY)
    settings = SpoolSettings(args.spool, retry_initial=0.05, retry_max=0.3, direct=args.direct, batch_max=50)
    emitter = SpoolEmitter(sink, settings)
    if args.mode == "drain":
        ok = emitter.flush(timeout=60)
        emitter.close()
        print("drained" if ok else f"NOT drained: {emitter.pending()} left", flush=True)
        return 0 if ok else 1
    i = 0
    while True:  # until SIGKILL
        event = AuditEvent(service="policy", action="decide", outcome="ALLOW", subject=f"s{i}", details={"i": i})
        emitter.emit(event)
        sys.stdout.write(event.event_id + "\n")
        sys.stdout.flush()
        i += 1


if __name__ == "__main__":
    sys.exit(main())
