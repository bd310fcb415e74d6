"""Rotation, disabling, crypto-shredding, per-key authorization, the KEK and auditing of every operation."""

from __future__ import annotations

import pytest

from tests.keys.conftest import OTHER, OWNER
from ztmesh.keys.algorithms import OpenSslProvider, Purpose
from ztmesh.keys.errors import KeyNotAccessible, KeyVersionUnusable, PermissionDenied, WrongKek, WrongPurpose
from ztmesh.keys.kek import Kek
from ztmesh.keys.ledger import ShredLedger
from ztmesh.keys.manager import KeyManager
from ztmesh.keys.model import AccessPolicy, Operation, VersionState


def test_rotation_keeps_old_data_readable_and_new_data_uses_the_new_version(manager):
    manager.create_key(OWNER, "k", Purpose.ENCRYPT)
    old, v1 = manager.encrypt(OWNER, "k", b"before rotation")
    key = manager.rotate(OWNER, "k")
    assert key.primary_version == 2 and [v.version for v in key.versions] == [1, 2]
    new, v2 = manager.encrypt(OWNER, "k", b"after rotation")
    assert (v1, v2) == (1, 2)
    assert manager.decrypt(OWNER, old)[0] == b"before rotation"
    assert manager.decrypt(OWNER, new)[0] == b"after rotation"


def test_signatures_of_an_old_version_still_verify_after_rotation(manager):
    manager.create_key(OWNER, "s", Purpose.SIGN)
    signature, version, _ = manager.sign(OWNER, "s", b"m")
    manager.rotate(OWNER, "s")
    assert manager.verify(OWNER, "s", version, b"m", signature)
    assert manager.sign(OWNER, "s", b"m")[1] == 2


def test_disabled_version_refuses_until_enabled(manager):
    manager.create_key(OWNER, "k", Purpose.ENCRYPT)
    envelope, _ = manager.encrypt(OWNER, "k", b"x")
    assert manager.set_enabled(OWNER, "k", 1, False).state is VersionState.DISABLED
    with pytest.raises(KeyVersionUnusable, match="version 1 is disabled"):
        manager.decrypt(OWNER, envelope)
    manager.set_enabled(OWNER, "k", 1, True)
    assert manager.decrypt(OWNER, envelope)[0] == b"x"


def test_destroyed_version_is_unreadable_even_from_a_database_copy_taken_before(store_factory, kek, tmp_path, events):
    store = store_factory()
    ledger_path = tmp_path / "ledger.json"
    manager = KeyManager(store, OpenSslProvider(), kek, ShredLedger(ledger_path), events)
    manager.create_key(OWNER, "subject-123", Purpose.ENCRYPT)
    envelope, _ = manager.encrypt(OWNER, "subject-123", b"CPF 123.456.789-09")
    # The attacker's copy of the database, taken before the erasure request.
    copy = store.get_key("subject-123").version(1)
    assert copy is not None and copy.wrapped_private is not None

    destroyed = manager.destroy(OWNER, "subject-123", 1)
    assert destroyed.state is VersionState.DESTROYED and destroyed.destroyed_at is not None
    with pytest.raises(KeyVersionUnusable, match="destroyed"):
        manager.decrypt(OWNER, envelope)
    assert store.get_key("subject-123").version(1).wrapped_private is None

    # Restore the copy into the database and restart with the same KEK: still unreadable.
    store.replace_wrapped("subject-123", 1, copy.wrapped_private)
    store.set_state("subject-123", 1, VersionState.ENABLED)
    restarted = KeyManager(store_factory(), OpenSslProvider(), kek, ShredLedger(ledger_path), events)
    with pytest.raises(KeyVersionUnusable, match="no private material"):
        restarted.decrypt(OWNER, envelope)
    # And the wrapped bytes cannot be opened with the KEK alone, whatever secret is guessed.
    with pytest.raises(WrongKek):
        kek.unwrap(copy.wrapped_private, bytes(32), b"subject-123/1")


def test_destroyed_version_cannot_be_enabled_again(manager):
    manager.create_key(OWNER, "k", Purpose.SIGN)
    manager.destroy(OWNER, "k", 1)
    with pytest.raises(KeyVersionUnusable, match="destroyed"):
        manager.set_enabled(OWNER, "k", 1, True)


def test_callers_outside_the_access_policy_are_refused(manager, events):
    policy = AccessPolicy(
        {Operation.SIGN: ("spiffe://ztmesh.local/ns/ztmesh/sa/audit",), Operation.VERIFY: ("spiffe://ztmesh.local/*",)}
    )
    manager.create_key(OWNER, "audit-checkpoint", Purpose.SIGN, access_policy=policy)
    with pytest.raises(PermissionDenied, match="sa/plugins may not sign with key 'audit-checkpoint'"):
        manager.sign(OTHER, "audit-checkpoint", b"forged head")
    signature, version, _ = manager.sign("spiffe://ztmesh.local/ns/ztmesh/sa/audit", "audit-checkpoint", b"head")
    assert manager.verify(OTHER, "audit-checkpoint", version, b"head", signature)
    assert any(e.action == "keys.sign" and e.outcome == "DENIED" and e.caller_spiffe_id == OTHER for e in events.events)


def test_default_policy_is_the_creator_only(manager):
    manager.create_key(OWNER, "mine", Purpose.ENCRYPT)
    with pytest.raises(KeyNotAccessible, match="key 'mine' not found or not accessible"):
        manager.encrypt(OTHER, "mine", b"x")


def test_purpose_is_enforced(manager):
    manager.create_key(OWNER, "enc", Purpose.ENCRYPT)
    with pytest.raises(WrongPurpose):
        manager.sign(OWNER, "enc", b"x")


def test_every_operation_is_audited(manager, events):
    manager.create_key(OWNER, "k", Purpose.ENCRYPT)
    envelope, _ = manager.encrypt(OWNER, "k", b"x")
    manager.decrypt(OWNER, envelope)
    manager.rotate(OWNER, "k")
    manager.destroy(OWNER, "k", 1)
    assert [(e.action, e.outcome, e.resource) for e in events.events] == [
        ("keys.create", "OK", "key/k/v1"),
        ("keys.encrypt", "OK", "key/k/v1"),
        ("keys.decrypt", "OK", "key/k/v1"),
        ("keys.rotate", "OK", "key/k/v2"),
        ("keys.destroy", "OK", "key/k/v1"),
    ]
    assert all(e.caller_spiffe_id == OWNER and e.service == "keys" for e in events.events)


def test_wrong_kek_is_refused_and_changes_nothing(store_factory, kek, tmp_path, events):
    first = KeyManager(store_factory(), OpenSslProvider(), kek, ShredLedger(tmp_path / "l.json"), events)
    first.create_key(OWNER, "k", Purpose.ENCRYPT)
    envelope, _ = first.encrypt(OWNER, "k", b"x")
    with pytest.raises(WrongKek, match="not the one these keys were wrapped with"):
        KeyManager(store_factory(), OpenSslProvider(), Kek.generate(), ShredLedger(tmp_path / "l.json"), events)
    again = KeyManager(store_factory(), OpenSslProvider(), kek, ShredLedger(tmp_path / "l.json"), events)
    assert again.decrypt(OWNER, envelope)[0] == b"x"


def test_rewrap_moves_every_key_to_a_new_kek(store_factory, kek, tmp_path, events):
    manager = KeyManager(store_factory(), OpenSslProvider(), kek, ShredLedger(tmp_path / "l.json"), events)
    manager.create_key(OWNER, "a", Purpose.ENCRYPT)
    manager.create_key(OWNER, "b", Purpose.SIGN)
    envelope, _ = manager.encrypt(OWNER, "a", b"x")
    new_kek = Kek.generate()
    assert manager.rewrap(new_kek) == 2
    with pytest.raises(WrongKek):
        KeyManager(store_factory(), OpenSslProvider(), kek, ShredLedger(tmp_path / "l.json"), events)
    moved = KeyManager(store_factory(), OpenSslProvider(), new_kek, ShredLedger(tmp_path / "l.json"), events)
    assert moved.decrypt(OWNER, envelope)[0] == b"x"


def test_ledger_is_shared_by_server_processes(tmp_path):
    first, second = ShredLedger(tmp_path / "l.json"), ShredLedger(tmp_path / "l.json")
    secret = first.create("k", 1)
    assert second.get("k", 1) == secret
    second.erase("k", 1)
    assert first.get("k", 1) is None
    assert "k/1" not in (tmp_path / "l.json").read_text()


def test_a_missing_shred_ledger_stops_start_up(store_factory, kek, tmp_path, events):
    from ztmesh.keys.errors import LedgerMismatch

    KeyManager(store_factory(), OpenSslProvider(), kek, ShredLedger(tmp_path / "l.json"), events)
    (tmp_path / "l.json").unlink()
    with pytest.raises(LedgerMismatch, match="is not the one these keys were created with"):
        KeyManager(store_factory(), OpenSslProvider(), kek, ShredLedger(tmp_path / "l.json"), events)


def test_callers_without_identity_get_nothing(manager):
    with pytest.raises(PermissionDenied):
        manager.create_key("", "anon", Purpose.ENCRYPT)
    manager.create_key(
        OWNER, "open", Purpose.SIGN, access_policy=AccessPolicy({Operation.VERIFY: ("spiffe://ztmesh.local/*",)})
    )
    with pytest.raises(KeyNotAccessible):
        manager.verify("", "open", 1, b"m", b"s")


@pytest.mark.parametrize("pattern", ["spiffe://ztmesh.local/ns/ztmesh/sa/audit*", "*", "audit", "spiffe://*/x"])
def test_access_policy_patterns_match_whole_path_segments_only(pattern):
    from ztmesh.keys.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="must be a SPIFFE ID"):
        AccessPolicy({Operation.SIGN: (pattern,)})
