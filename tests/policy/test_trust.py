"""The trust algorithm: each factor's table, explainability, threat lists, decaying signals, and the
data files' error messages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.policy.conftest import TRUST_FILES, Clock, physician, with_context, with_device, with_resource, with_subject
from ztmesh.policy.errors import ConfigError, InvalidRequest
from ztmesh.policy.model import Assurance, Fault, Outcome, Signal
from ztmesh.policy.signals import EMPTY, MemorySignalStore, add_event, decayed
from ztmesh.policy.trust import TrustScorer
from ztmesh.policy.trust_config import TrustFiles


@pytest.fixture(scope="module")
def scorer() -> TrustScorer:
    return TrustScorer(TRUST_FILES.load())


def factor(scorer: TrustScorer, request, name: str, now: float = Clock().now):
    result = scorer.score(request, EMPTY, now)
    return next(f for f in result.factors if f.name == name)


@pytest.mark.parametrize(
    ("assurance", "method", "expected"),
    [
        (Assurance.HIGH, "webauthn", 1.0),
        (Assurance.MEDIUM, "pwd,otp", 0.8 * 0.95),
        (Assurance.MEDIUM, "otp,pwd", 0.8 * 0.95),  # the strongest method counts, whatever the order
        (Assurance.LOW, "pwd", 0.45 * 0.85),
        (Assurance.LOW, "carrier-pigeon", 0.45 * 0.75),
        (Assurance.UNSPECIFIED, "", 0.2 * 0.7),
    ],
)
def test_identity_factor(scorer, assurance, method, expected):
    f = factor(scorer, with_subject(physician(), assurance=assurance, auth_method=method), "identity")
    assert f.score == pytest.approx(expected, abs=1e-4)
    assert assurance.value in f.explanation


@pytest.mark.parametrize(
    ("changes", "expected", "mentions"),
    [
        ({}, 1.0, "managed, compliant"),
        ({"managed": False}, 0.75, "not managed"),
        ({"disk_encrypted": False, "endpoint_protection": False}, 0.65, "not disk_encrypted"),
        ({"patch_age_days": 14}, 1.0, "patched"),
        ({"patch_age_days": 52}, 1.0 - 0.15 * 0.5, "patches 52 d old"),
        ({"patch_age_days": 400}, 0.85, "patches 400 d old"),
        ({"patch_age_days": None}, 0.85, "patch age unknown"),
    ],
)
def test_device_factor(scorer, changes, expected, mentions):
    f = factor(scorer, with_device(physician(), **changes), "device")
    assert f.score == pytest.approx(expected, abs=1e-4)
    assert mentions in f.explanation


def test_no_device_posture_scores_zero(scorer):
    f = factor(scorer, physician(device=None), "device")
    assert (f.score, f.explanation) == (0.0, "no device posture reported")


@pytest.mark.parametrize(
    ("ip", "expected", "flag"),
    [
        ("10.20.30.40", 0.9, ""),
        ("8.8.8.8", 0.6, ""),
        ("198.51.100.7", 0.3, ""),
        ("192.0.2.55", 0.0, "network_blocklisted"),
        ("::ffff:192.0.2.55", 0.0, "network_blocklisted"),
        ("2001:db8:bad::1", 0.0, "network_blocklisted"),
        ("", 0.4, ""),
    ],
)
def test_network_factor_from_threat_lists(scorer, ip, expected, flag):
    result = scorer.score(with_context(physician(), source_ip=ip), EMPTY, Clock().now)
    assert result.factor_scores()["network"] == expected
    assert result.flags == ((flag,) if flag else ())


@pytest.mark.parametrize(
    ("utc_hour", "roles", "purpose", "agent", "expected"),
    [
        (13, ("physician",), "treatment", "ehr", 1.0),  # 10:00 in São Paulo
        (3, ("physician",), "treatment", "ehr", 0.7),  # 00:00: off hours
        (3, ("physician", "on_call"), "treatment", "ehr", 1.0),
        (13, ("physician",), "", "ehr", 0.7),
        (13, ("physician",), "treatment", "", 0.9),
    ],
)
def test_context_factor(scorer, utc_hour, roles, purpose, agent, expected):
    now = Clock().now + (utc_hour - 13) * 3600
    request = with_context(with_subject(physician(), roles=roles), purpose=purpose, user_agent=agent)
    assert factor(scorer, request, "context", now).score == pytest.approx(expected)


def test_the_score_is_the_sum_of_the_contributions(scorer):
    result = scorer.score(with_device(physician(), managed=False, patch_age_days=40), EMPTY, Clock().now)
    assert result.score == pytest.approx(sum(f.contribution for f in result.factors), abs=0.011)
    weights = {f.name: f.weight for f in result.factors}
    for f in result.factors:
        assert f.contribution == pytest.approx(100 * f.weight * f.score / sum(weights.values()), abs=0.01)
        assert 0 <= f.score <= 1 and f.explanation


def test_decay_math():
    assert decayed(1.0, 0.0, 3600.0, 3600.0) == pytest.approx(0.5)
    value, ref = add_event(1.0, 0.0, 1.0, 3600.0, 3600.0)
    assert (value, ref) == (pytest.approx(1.5), 3600.0)
    late, ref = add_event(1.0, 3600.0, 1.0, 0.0, 3600.0)  # reported late: added as already decayed
    assert (late, ref) == (pytest.approx(1.5), 3600.0)


def test_signals_lower_trust_and_decay(make_engine, clock):
    engine = make_engine()
    critical = with_resource(physician(), classification="critical_patient_data")
    before = engine.decide(critical)
    assert (before.outcome, before.trust_score) == (Outcome.ALLOW, 91.3)
    assert engine.report_signal(Signal("dr.ana", "impossible_travel")) == pytest.approx(0.4)
    after = engine.decide(critical)
    assert after.trust_score == pytest.approx(91.3 - 20 * 0.6)
    assert after.outcome is Outcome.CHALLENGE
    assert "impossible_travel 1.00" in next(f for f in after.factors if f.name == "behaviour").explanation
    clock.advance(86400)  # one half-life of impossible_travel
    assert engine.decide(critical).trust_score == pytest.approx(91.3 - 20 * 0.3)
    assert engine.decide(critical).outcome is Outcome.ALLOW
    clock.advance(30 * 86400)
    assert engine.decide(critical).trust_score == pytest.approx(91.3, abs=0.01)


def test_signals_accumulate_with_severity(make_engine):
    engine = make_engine()
    for _ in range(3):
        engine.report_signal(Signal("dr.ana", "failed_login"))
    assert engine.report_signal(Signal("dr.ana", "anomaly", severity=0.5)) == pytest.approx(1 - 3 * 0.08 - 0.15)
    assert engine.report_signal(Signal("dr.ana", "malware_detected")) == 0.0  # risk above 1 floors at 0


@pytest.mark.parametrize(
    ("signal", "field"),
    [
        (Signal("", "failed_login"), "subject_id"),
        (Signal("dr.ana", "sneezed"), "kind"),
        (Signal("dr.ana", "failed_login", severity=1.5), "severity"),
        (Signal("dr.ana", "failed_login", severity=float("nan")), "severity"),
    ],
)
def test_bad_signals_are_refused(make_engine, signal, field):
    with pytest.raises(InvalidRequest) as info:
        make_engine().report_signal(signal)
    assert info.value.field == field


def test_a_signal_from_the_future_is_refused(make_engine, clock):
    from datetime import UTC, datetime

    future = datetime.fromtimestamp(clock.now + 3600, UTC)
    with pytest.raises(InvalidRequest, match="future"):
        make_engine().report_signal(Signal("dr.ana", "anomaly", time=future))


def test_memory_store_keeps_versions_per_subject():
    store = MemorySignalStore()
    assert store.record("a", "anomaly", 1.0, 10.0, now=100.0) == 1
    assert store.record("a", "anomaly", 1.0, 10.0, now=110.0) == 2
    assert store.record("b", "anomaly", 1.0, 10.0, now=110.0) == 1
    state = store.state("a", 110.0, {"anomaly": 10.0})
    assert state.version == 2 and state.levels["anomaly"] == pytest.approx(1.5)
    assert store.state("a", 110.0, {}).levels == {}  # a kind no longer configured does not count


def test_blocklisted_source_is_denied_end_to_end(make_engine):
    decision = make_engine().decide(with_context(physician(), source_ip="192.0.2.10"))
    assert decision.outcome is Outcome.DENY
    assert "source address is on the threat block list" in decision.reasons
    assert decision.fault is Fault.NONE


def test_threat_lists_reload_with_the_trust_data(tmp_path: Path, make_engine):
    threat = tmp_path / "threat"
    shutil.copytree(TRUST_FILES.threat_dir, threat)
    files = TrustFiles(TRUST_FILES.weights, threat)
    engine = make_engine(trust_files=files)
    request = with_context(physician(), source_ip="203.0.113.9")
    assert engine.decide(request).outcome is Outcome.ALLOW
    (threat / "blocklist.txt").write_text("203.0.113.0/24\n")
    engine.scorer.model = files.load()
    assert engine.decide(request).reasons == ("source address is on the threat block list",)


def _weights(tmp_path: Path, mutate) -> TrustFiles:
    raw = json.loads(TRUST_FILES.weights.read_text())
    mutate(raw)
    path = tmp_path / "weights.json"
    path.write_text(json.dumps(raw))
    return TrustFiles(path, TRUST_FILES.threat_dir)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["weights"].update(luck=5), "weights.luck: unknown factor"),
        (lambda r: r["weights"].pop("device"), "weights.device: is missing"),
        (lambda r: r["identity"]["assurance"].pop("high"), "identity.assurance.high: is missing"),
        (lambda r: r["identity"]["assurance"].update(low=1.5), "identity.assurance.low: must be a number in 0-1"),
        (lambda r: r["device"].update(patch_stale_days=5), "device.patch_stale_days: must be a number in 15-36500"),
        (lambda r: r["network"]["lists"][0].update(file="../etc/passwd"), "network.lists[0].file"),
        (lambda r: r["network"]["lists"][0].update(file="missing.txt"), "missing.txt: cannot read"),
        (lambda r: r["behaviour"]["kinds"]["anomaly"].update(half_life_s=0), "half_life_s: must be a number in 1-"),
        (lambda r: r["context"].update(timezone="Mars/Olympus"), "context.timezone: unknown time zone"),
    ],
)
def test_bad_trust_data_is_refused_with_the_key(tmp_path, mutate, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        _weights(tmp_path, mutate).load()


def test_bad_threat_list_line_is_named(tmp_path):
    threat = tmp_path / "threat"
    shutil.copytree(TRUST_FILES.threat_dir, threat)
    (threat / "suspicious.txt").write_text("# ok\n10.0.0.0/8\n10.0.0.1/8\n")
    with pytest.raises(ConfigError, match=r"suspicious.txt:3: not an IP address or CIDR"):
        TrustFiles(TRUST_FILES.weights, threat).load()
