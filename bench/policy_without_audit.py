"""`python -m bench.policy_without_audit`: the policy service with audit records going nowhere.

Not a product configuration — ztmesh has no switch to stop recording decisions. The benchmark runs it
beside the real service only to show, in the same run, what the durable audit record of each decision
costs."""

from __future__ import annotations

import sys

import ztmesh.policy.app as policy_app
from ztmesh.cli import main


class DiscardingEmitter:
    def emit(self, event: object) -> None:
        pass

    async def emit_async(self, event: object) -> None:
        pass

    def close(self, flush_timeout: float = 0.0) -> None:
        pass


if __name__ == "__main__":
    policy_app.audit_emitter = lambda *args, **kwargs: DiscardingEmitter()  # type: ignore[assignment]
    sys.exit(main(["serve", "policy"]))
