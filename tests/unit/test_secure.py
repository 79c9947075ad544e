"""The secure stack's pure parts: each role's ACLs, the broker settings, the files' modes."""

from __future__ import annotations

import ssl
import stat

import pytest

from schemas import topics as spec
from streams.infra import kafka, secure
from streams.infra.errors import InfraError


def _may(acls: list[secure.Acl], principal: str) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for a in acls:
        if a.principal == principal and a.resource_type == secure._TOPIC and a.pattern == secure._LITERAL:
            out.setdefault(a.name, set()).add(a.operation)
    return out


def test_each_role_gets_what_it_needs_and_nothing_else():
    acls = secure.acls(("omnistream",))
    assert _may(acls, "publisher") == {t.name: {secure._WRITE} for t in (
        spec.PRD_REQUESTS, spec.METRICS_EVENTS, spec.CODEGEN_RESULTS, spec.PATTERN_FEEDBACK)}
    assert _may(acls, "operator") == {spec.ALERTS_COMMANDS.name: {secure._WRITE},
                                      spec.ALERTS.name: {secure._READ}}
    assert _may(acls, "reader") == {t.name: {secure._READ} for t in (
        spec.CODEGEN_GENERATED, spec.CODEGEN_COMPLETED, spec.ALERTS)}
    assert _may(acls, "worker") == {t.name: {secure._ALL} for t in spec.ALL}
    prefixed = {(a.resource_type, a.name) for a in acls if a.pattern == secure._PREFIXED}
    assert prefixed == {(secure._TOPIC, "omnistream"), (secure._GROUP, "omnistream")}
    assert {a.principal for a in acls if a.pattern == secure._PREFIXED} == {"worker"}
    assert not [a for a in acls if a.principal in ("publisher", "operator", "reader")
                and a.resource_type != secure._TOPIC]  # no group, no cluster rights


def test_secrets_are_made_once_private_and_load_as_a_tls_context(tmp_path):
    made = secure.ensure(tmp_path / "secure")
    again = secure.ensure(tmp_path / "secure")
    assert again.passwords == made.passwords and set(made.passwords) == {"broker", *secure.ROLES}
    assert stat.S_IMODE((tmp_path / "secure").stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "secure").iterdir()} == {
        "ca.pem": 0o600, "ca.key": 0o600, "broker.p12": 0o600, "secrets.json": 0o600}
    assert isinstance(made.client_kwargs("reader")["ssl_context"], ssl.SSLContext)
    assert made.client_env("publisher")["KAFKA_SASL_USERNAME"] == "publisher"
    with pytest.raises(InfraError, match="no principal 'broker'"):
        made.client_env("broker")  # the brokers' own login is never exported


def test_a_secure_node_refuses_what_no_acl_allows_and_its_config_is_private(tmp_path):
    made = secure.ensure(tmp_path / "secure")
    path = kafka.write_config(tmp_path, 9093, 9094, secured=made)
    props = dict(line.split("=", 1) for line in path.read_text().splitlines())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["auto.create.topics.enable"] == "false"
    assert props["listeners"] == "SASL_SSL://127.0.0.1:9093,CONTROLLER://127.0.0.1:9094"
    assert props["super.users"] == "User:broker"
    lines = kafka.write_config(tmp_path, 9093, 9094).read_text().splitlines()
    plain = dict(line.split("=", 1) for line in lines)
    assert plain["auto.create.topics.enable"] == "true" and "authorizer.class.name" not in plain
