"""The dev overlay's Redis keeps the policy's signals: the rendered container arguments, run by a real
redis-server, persist across a restart (append-only file on the pod's volume) and refuse writes at
maxmemory instead of evicting (noeviction), which the policy's signal store insists on."""

from __future__ import annotations

from collections.abc import Callable

from tests.k8s.manifests import Objects, container, find, pod_spec
from tests.support.own_redis import own_redis
from ztmesh.policy.signals import RedisSignalStore


def _server_options(objects: Objects) -> list[str]:
    """The manifest's redis-server arguments that a local run can take (no password from the Secret)."""
    args = [str(a) for a in container(find(objects, "Deployment", "redis"), "redis")["args"]]
    password = args.index("--requirepass")
    return args[:password] + args[password + 2 :]


def test_dev_redis_persists_signals_and_never_evicts_them(render: Callable[[str], Objects]) -> None:
    objects = render("dev")
    redis = find(objects, "Deployment", "redis")
    data = next(v for v in pod_spec(redis)["volumes"] if v["name"] == "data")
    assert (
        data["persistentVolumeClaim"]["claimName"]
        == find(objects, "PersistentVolumeClaim", "redis-data")["metadata"]["name"]
    )
    # own_redis starts without persistence; the manifest's options come last and win.
    with own_redis(*_server_options(objects)) as server:
        client = server.client()
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        store = RedisSignalStore(server.url)
        store.restore([], {})
        store.record("dr.ana", "malware_detected", 1.0, 7 * 86400.0, now=0.0)
        store.close()
        server.stop()
        server.start()
        assert client.exists("ztmesh:signals:epoch", "ztmesh:signals:s:dr.ana") == 2  # both survived the restart
        store = RedisSignalStore(server.url)
        # Another Redis process (INFO run_id) all the same: the policy restores from the trail, as after
        # a failover, since it cannot tell a restart with every signal from one with an older snapshot.
        assert store.status(0.0).lost
        store.close()
