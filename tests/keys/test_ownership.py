"""Key ids are owned: created once, by their creator; reserved ids only by their workload; and a caller
without grants cannot tell an absent key from a forbidden one (KeyManager over both stores)."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from tests.keys.conftest import OTHER, OWNER
from ztmesh.keys.algorithms import OpenSslProvider, Purpose
from ztmesh.keys.errors import InvalidArgument, KeyExists, KeyNotAccessible, ReservedKeyId
from ztmesh.keys.ledger import ShredLedger
from ztmesh.keys.manager import KeyManager
from ztmesh.keys.model import AccessPolicy, Operation, parse_reservations
from ztmesh.keys.store import SqliteKeyStore

AUDIT = "spiffe://ztmesh.local/ns/ztmesh/sa/audit"
RESERVED = {"audit-checkpoints": AUDIT}


@pytest.fixture
def reserving_manager(store_factory, kek, tmp_path, events) -> KeyManager:
    ledger = ShredLedger(tmp_path / "ledger.json")
    return KeyManager(store_factory(), OpenSslProvider(), kek, ledger, events, reserved_ids=RESERVED)


def test_a_reserved_id_is_created_only_by_its_workload(reserving_manager, events):
    with pytest.raises(ReservedKeyId, match="'audit-checkpoints' is reserved for .*sa/audit"):
        reserving_manager.create_key(OTHER, "audit-checkpoints", Purpose.SIGN)
    assert events.events[-1].outcome == "DENIED" and events.events[-1].details["reason"] == "reserved"
    key = reserving_manager.create_key(AUDIT, "audit-checkpoints", Purpose.SIGN)
    assert key.owner == AUDIT


def test_a_prefix_reserves_every_id_it_begins(store_factory, kek, tmp_path, events):
    ledger = ShredLedger(tmp_path / "ledger.json")
    reserved = {"audit-checkpoints*": AUDIT}
    manager = KeyManager(store_factory(), OpenSslProvider(), kek, ledger, events, reserved_ids=reserved)
    for key_id in ("audit-checkpoints", "audit-checkpoints-ed25519"):
        with pytest.raises(ReservedKeyId):
            manager.create_key(OTHER, key_id, Purpose.SIGN)
        assert manager.create_key(AUDIT, key_id, Purpose.SIGN).owner == AUDIT
    assert manager.create_key(OTHER, "audit-exports", Purpose.SIGN).owner == OTHER


def test_a_reserved_id_taken_before_reservations_is_reported_at_start_up(store_factory, kek, tmp_path, events, caplog):
    ledger = ShredLedger(tmp_path / "ledger.json")
    KeyManager(store_factory(), OpenSslProvider(), kek, ledger, events).create_key(
        OTHER, "audit-checkpoints-ml", Purpose.SIGN
    )
    with caplog.at_level(logging.ERROR, logger="ztmesh.keys.manager"):
        KeyManager(store_factory(), OpenSslProvider(), kek, ledger, events, reserved_ids={"audit-checkpoints*": AUDIT})
    assert any(
        "'audit-checkpoints-ml' is reserved for " + AUDIT in r.getMessage() and OTHER in r.getMessage()
        for r in caplog.records
    ), caplog.text


def test_creating_a_taken_id_changes_nothing_of_the_owners_key(manager, store_factory):
    manager.create_key(OWNER, "patient-7", Purpose.ENCRYPT)
    sealed, _ = manager.encrypt(OWNER, "patient-7", b"laudo")
    for attacker in (OTHER, OWNER):
        with pytest.raises(KeyExists):
            manager.create_key(attacker, "patient-7", Purpose.ENCRYPT, access_policy=AccessPolicy.owner_only(OTHER))
    # The owner's secret in the shred ledger was not replaced: the old envelope still opens.
    assert manager.decrypt(OWNER, sealed)[0] == b"laudo"
    assert manager.get_key(OWNER, "patient-7").owner == OWNER


def test_absent_and_forbidden_keys_look_the_same_to_a_caller_without_grants(manager):
    manager.create_key(OWNER, "exists", Purpose.SIGN)
    calls = {
        "public_key": lambda key_id: manager.public_key(OTHER, key_id),
        "sign": lambda key_id: manager.sign(OTHER, key_id, b"m"),
        "verify": lambda key_id: manager.verify(OTHER, key_id, 1, b"m", b"s"),
        "rotate": lambda key_id: manager.rotate(OTHER, key_id),
        "destroy": lambda key_id: manager.destroy(OTHER, key_id, 1),
        "encrypt": lambda key_id: manager.encrypt(OTHER, key_id, b"m"),
    }
    for name, call in calls.items():
        answers = []
        for key_id in ("exists", "absent"):
            with pytest.raises(KeyNotAccessible) as err:
                call(key_id)
            answers.append(str(err.value).replace(key_id, "<id>"))
        assert answers[0] == answers[1] == "key '<id>' not found or not accessible", name


def test_list_keys_page_tokens_never_name_hidden_keys(manager):
    for key_id in ("a-mine", "b-hidden", "c-hidden", "d-mine", "e-hidden"):
        owner = OWNER if key_id.endswith("mine") else OTHER
        manager.create_key(owner, key_id, Purpose.ENCRYPT)
    first, token = manager.list_keys(OWNER, 1, "")
    assert [k.key_id for k in first] == ["a-mine"] and token == "a-mine"
    second, token = manager.list_keys(OWNER, 1, token)
    assert [k.key_id for k in second] == ["d-mine"] and token == "d-mine"
    assert manager.list_keys(OWNER, 1, token) == ([], "")


def test_owners_survive_a_restart_and_old_stores_gain_the_column(tmp_path, kek):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE keys (key_id TEXT PRIMARY KEY, purpose TEXT NOT NULL, algorithm TEXT NOT NULL, "
        "primary_version INTEGER NOT NULL, access_policy TEXT NOT NULL, labels TEXT NOT NULL, "
        "created_at TEXT NOT NULL);"
        "INSERT INTO keys VALUES ('legacy', 'sign', 'ML-DSA-65', 1, '{}', '{}', '2026-01-01T00:00:00+00:00');"
    )
    old.commit()
    old.close()
    store = SqliteKeyStore(path)
    try:
        assert store.get_key("legacy").owner == ""
    finally:
        store.close()


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (("audit-checkpoints=audit",), {"audit-checkpoints": AUDIT}),
        (("audit-checkpoints*=audit",), {"audit-checkpoints*": AUDIT}),
        (("k=spiffe://ztmesh.local/ns/ops/sa/x",), {"k": "spiffe://ztmesh.local/ns/ops/sa/x"}),
    ],
)
def test_reservations_name_a_workload(entries, expected):
    assert parse_reservations(entries, "ztmesh.local", "ztmesh") == expected


@pytest.mark.parametrize("entry", ["Bad Id=audit", "k=", "k=spiffe://bad domain/x", "noequals"])
def test_malformed_reservations_are_refused(entry):
    with pytest.raises(InvalidArgument, match="KEY_ID=SERVICE_ACCOUNT|SPIFFE"):
        parse_reservations((entry,), "ztmesh.local", "ztmesh")


def test_grants_on_one_operation_reveal_the_key(manager):
    policy = AccessPolicy({Operation.VERIFY: (OTHER,), Operation.SIGN: (OWNER,)})
    manager.create_key(OWNER, "shared", Purpose.SIGN, access_policy=policy)
    with pytest.raises(Exception, match="may not sign with key 'shared'"):
        manager.sign(OTHER, "shared", b"m")
