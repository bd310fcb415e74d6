"""Checks a decision request or signal before anything is computed from it: required fields, known
classification, well-formed names and addresses, and sizes a sane caller never exceeds. Every
problem is an InvalidRequest naming the field, so a caller can fix it."""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ztmesh.policy.errors import InvalidRequest
from ztmesh.policy.model import DecisionRequest, Signal

# Actions, purposes, roles and signal kinds are identifiers: Rego compares them as strings, so a
# stray space or capital letter would silently never match a rule.
_NAME = re.compile(r"^[a-z][a-z0-9_.:-]*$")
_COUNCIL = re.compile(r"^[A-Z][A-Z0-9-]*$")


@dataclass(frozen=True)
class Limits:
    """Upper bounds of a request; anything larger is refused rather than evaluated."""

    max_id: int = 256  # subject, device, resource and request ids
    max_name: int = 64  # action, purpose, role, classification, type, council, signal kind
    max_text: int = 1024  # user agent, resource id, owner
    max_items: int = 64  # roles, consented purposes
    max_attributes_bytes: int = 16 * 1024  # JSON size of the free-form attributes
    max_attributes_depth: int = 8
    max_patch_age_days: int = 36500
    max_clock_skew_s: float = 300.0  # context.time / signal time vs the server clock


def _text(value: str, path: str, limit: int, required: bool = False) -> None:
    if required and not value:
        raise InvalidRequest(path, "is required")
    if len(value) > limit:
        raise InvalidRequest(path, f"is {len(value)} characters long; the maximum is {limit}")


def _name(value: str, path: str, limit: int, required: bool = False) -> None:
    if not value:
        if required:
            raise InvalidRequest(path, "is required")
        return
    if len(value) > limit:
        raise InvalidRequest(path, f"is {len(value)} characters long; the maximum is {limit}")
    if not _NAME.fullmatch(value):
        raise InvalidRequest(path, f"{value!r} is not a lower-case identifier ([a-z][a-z0-9_.:-]*)")


def _names(values: tuple[str, ...], path: str, limits: Limits) -> None:
    if len(values) > limits.max_items:
        raise InvalidRequest(path, f"has {len(values)} items; the maximum is {limits.max_items}")
    for i, value in enumerate(values):
        _name(value, f"{path}[{i}]", limits.max_name, required=True)


def _depth(value: Any, limit: int, path: str) -> None:
    if limit < 0:
        raise InvalidRequest(path, "is nested too deeply")
    if isinstance(value, Mapping):
        for k, v in value.items():
            _depth(v, limit - 1, f"{path}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _depth(v, limit - 1, f"{path}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(path, f"{value} is not a finite number")


def _skew(when: datetime | None, now: float, path: str, limits: Limits) -> None:
    if when is not None and abs(when.timestamp() - now) > limits.max_clock_skew_s:
        raise InvalidRequest(
            path, f"{when.isoformat()} is more than {limits.max_clock_skew_s:.0f} s away from the server clock"
        )


class RequestValidator:
    """Validates requests against limits and the classifications the loaded policy knows."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._good_ips: dict[str, None] = {}  # addresses already parsed: clients repeat

    def _ip(self, value: str, path: str) -> None:
        if not value or value in self._good_ips:
            return
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise InvalidRequest(path, f"{value!r} is not an IP address") from None
        if len(self._good_ips) > 65536:
            self._good_ips.clear()
        self._good_ips[value] = None

    def validate(self, request: DecisionRequest, classifications: Collection[str] | None, now: float) -> None:
        """Raise InvalidRequest for the first problem; `classifications` None = not checked here."""
        lim = self.limits
        subject = request.subject
        _text(subject.id, "subject.id", lim.max_id, required=True)
        _names(subject.roles, "subject.roles", lim)
        _text(subject.auth_method, "subject.auth_method", lim.max_name)
        if subject.registration is not None:
            reg = subject.registration
            if reg.council and (len(reg.council) > lim.max_name or not _COUNCIL.fullmatch(reg.council)):
                raise InvalidRequest("subject.registration.council", f"{reg.council!r} is not a council code (CRM)")
            _text(reg.region, "subject.registration.region", lim.max_name)
            _text(reg.number, "subject.registration.number", lim.max_name)
        resource = request.resource
        _name(resource.classification, "resource.classification", lim.max_name, required=True)
        if classifications is not None and resource.classification not in classifications:
            known = ", ".join(sorted(classifications))
            raise InvalidRequest(
                "resource.classification", f"unknown classification {resource.classification!r}; known: {known}"
            )
        _name(resource.type, "resource.type", lim.max_name, required=True)
        _text(resource.id, "resource.id", lim.max_text)
        _text(resource.owner, "resource.owner", lim.max_text)
        _names(resource.consented_purposes, "resource.consented_purposes", lim)
        _name(request.action, "action", lim.max_name, required=True)
        device = request.device
        if device is not None:
            _text(device.id, "device.id", lim.max_id)
            _text(device.os, "device.os", lim.max_name)
            age = device.patch_age_days
            if age is not None and not 0 <= age <= lim.max_patch_age_days:
                raise InvalidRequest("device.patch_age_days", f"{age} is outside 0-{lim.max_patch_age_days}")
        ctx = request.context
        self._ip(ctx.source_ip, "context.source_ip")
        _text(ctx.user_agent, "context.user_agent", lim.max_text)
        _name(ctx.purpose, "context.purpose", lim.max_name)
        _text(ctx.request_id, "context.request_id", lim.max_id)
        _skew(ctx.time, now, "context.time", lim)
        if request.attributes:
            _depth(request.attributes, lim.max_attributes_depth, "attributes")
            try:
                size = len(json.dumps(request.attributes, separators=(",", ":")))
            except (TypeError, ValueError) as exc:
                raise InvalidRequest("attributes", f"not JSON: {exc}") from None
            if size > lim.max_attributes_bytes:
                maximum = lim.max_attributes_bytes
                raise InvalidRequest("attributes", f"is {size} bytes of JSON; the maximum is {maximum}")

    def validate_signal(self, signal: Signal, kinds: Collection[str], now: float) -> None:
        lim = self.limits
        _text(signal.subject_id, "subject_id", lim.max_id, required=True)
        _name(signal.kind, "kind", lim.max_name, required=True)
        if signal.kind not in kinds:
            raise InvalidRequest("kind", f"unknown signal kind {signal.kind!r}; known: {', '.join(sorted(kinds))}")
        if not (math.isfinite(signal.severity) and 0.0 <= signal.severity <= 1.0):
            raise InvalidRequest("severity", f"{signal.severity} is outside 0-1")
        _text(signal.source, "source", lim.max_text)
        # A past event is fine (it has decayed accordingly); one from the future would outlive its decay.
        if signal.time is not None and signal.time.timestamp() - now > lim.max_clock_skew_s:
            raise InvalidRequest("time", f"{signal.time.isoformat()} is in the future of the server clock")
