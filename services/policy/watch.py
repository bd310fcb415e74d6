"""Hot reload: a thread that polls the policy bundle and the trust data files for changes, and
Redis notifications that tell the other replicas when one of them loaded a new revision.

Polling (stat of a few files every couple of seconds) works everywhere, including the symlink swap
by which Kubernetes updates a mounted ConfigMap. A changed bundle is checked in full before it
serves (bundle.py); a refused one is logged and the old one keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ztmesh.policy.bundle import Bundle, fingerprint
from ztmesh.policy.decider import PolicyEngine
from ztmesh.policy.errors import BundleError, ConfigError, EngineError
from ztmesh.policy.trust_config import TrustFiles

log = logging.getLogger("ztmesh.policy.watch")

CHANNEL = "ztmesh:policy:reload"


class RedisReloadNotifier:
    """Publishes the revision a replica just loaded; calls `on_revision` for the others' messages."""

    def __init__(self, url: str, channel: str = CHANNEL, client: Any = None) -> None:
        import redis

        self._redis = client or redis.Redis.from_url(url, socket_connect_timeout=1.0)
        self._channel = channel
        self._pubsub: Any = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    def publish(self, revision: str) -> None:
        try:
            self._redis.publish(self._channel, revision)
        except Exception as exc:  # the others still find it by polling their files
            log.warning("cannot announce policy revision %s: %s", revision, exc)

    def subscribe(self, on_revision: Callable[[str], None]) -> None:
        """Listen in a thread of our own: a Redis that is down at start-up or restarts later only
        pauses the notifications (the replicas still poll their files), it never ends them."""
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)

        def handle(message: dict[str, Any]) -> None:
            data = message.get("data")
            on_revision(data.decode() if isinstance(data, bytes) else str(data))

        def listen() -> None:
            while not self._closing.is_set():
                try:
                    if not self._pubsub.subscribed:
                        self._pubsub.subscribe(**{self._channel: handle})
                    self._pubsub.get_message(timeout=0.2)  # calls `handle`
                except Exception as exc:  # reconnects (and subscribes again) on the next round
                    log.warning("policy reload notifications interrupted, retrying: %s", exc)
                    self._closing.wait(1.0)

        self._thread = threading.Thread(target=listen, name="policy-reload-notifications", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=2)  # it wakes every 0.2 s; closing under it would break its read
        if self._pubsub is not None:
            self._pubsub.close()
        self._redis.close()


class PolicyWatcher:
    """Reloads the bundle and the trust data when their files change (and when told by a peer)."""

    def __init__(
        self,
        engine: PolicyEngine,
        trust_files: TrustFiles | None = None,
        interval_s: float = 2.0,
        notifier: RedisReloadNotifier | None = None,
    ) -> None:
        self.engine = engine
        self.trust_files = trust_files
        self.interval_s = interval_s
        self.notifier = notifier
        self._bundle_print = fingerprint(engine.bundles.root)
        self._trust_print = self._trust_fingerprint()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_lock = threading.Lock()

    def _trust_fingerprint(self) -> tuple[Any, ...]:
        if self.trust_files is None:
            return ()
        return fingerprint(self.trust_files.weights, self.trust_files.threat_dir)

    def check_once(self) -> None:
        """Reload whatever changed since the last look; errors are logged, the old state serves."""
        with self._check_lock:
            bundle_print = fingerprint(self.engine.bundles.root)
            # Not loaded yet (e.g. the OPA sidecar was not up at start), or a checked bundle that the
            # engine did not take (OPA unreachable): try again on every look until it serves.
            bundles = self.engine.bundles
            if bundle_print != self._bundle_print or not bundles.loaded or bundles.pending:
                self._bundle_print = bundle_print
                try:
                    self.engine.reload()
                except (BundleError, EngineError) as exc:
                    log.error("policy bundle change refused: %s", exc)
            trust_print = self._trust_fingerprint()
            if trust_print != self._trust_print and self.trust_files is not None:
                self._trust_print = trust_print
                try:
                    self.engine.scorer.model = self.trust_files.load()
                    log.info("trust data %s loaded", self.engine.scorer.model.revision)
                except ConfigError as exc:
                    log.error("trust data change refused, the old one keeps serving: %s", exc)

    def _peer_revision(self, revision: str) -> None:
        current = self.engine.bundles.current.revision if self.engine.bundles.loaded else ""
        if revision != current:
            self._bundle_print = ()  # force a re-read: a peer saw new files, ours may have them too
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.check_once()
            except Exception:  # the watcher must outlive any one bad look
                log.exception("policy watcher check failed")

    def _announce(self, bundle: Bundle) -> None:
        if self.notifier is not None and not self._stop.is_set():
            self.notifier.publish(bundle.revision)

    def start(self) -> None:
        if self.notifier is not None:
            self.notifier.subscribe(self._peer_revision)
            # Every swap is announced, whatever caused it (a file change, ReloadPolicy, a peer's
            # message: the peers that already serve it ignore the echo).
            self.engine.bundles.on_swap(self._announce)
        self._thread = threading.Thread(target=self._run, name="policy-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.notifier is not None:
            self.notifier.close()
