"""`omnistream infra up --secure`: the local Kafka with TLS, SCRAM logins and ACLs per role.

What a secure stack holds (in `<home>/kafka/secure/`, the folder 0700, every file 0600):
- `ca.pem`: a CA made for this stack (clients verify the brokers with it), its key `ca.key`;
- `broker.p12`: the brokers' key and certificate (for 127.0.0.1 and localhost), signed by it;
- `secrets.json`: a generated password for each principal and for the keystore.

Listeners: `SASL_SSL` (SCRAM-SHA-512) for clients and between brokers; the controllers'
listener takes SASL PLAIN from the brokers' own principal only. The standard authorizer
refuses what no ACL allows; topics are never created by a read or a write. Principals:

| principal | may |
|---|---|
| `broker` | everything (the brokers between themselves; `infra` sets the ACLs as it) |
| `worker` | everything omnistream uses: the public topics, the topics and group of the app |
|  | id(s) in the environment at `infra up` (as a prefix) |
| `publisher` | write `prd.requests`, `metrics.events`, `codegen.results`, `pattern.feedback` |
| `operator` | write `alerts.commands`; read `alerts` |
| `reader` | read `codegen.generated`, `codegen.completed`, `alerts` |

`omnistream infra env --as NAME` exports one principal's client settings.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from schemas import topics as spec
from streams.infra.errors import InfraError
from streams.infra.proc import write_private

FOLDER = "secure"  # under the Kafka folder of the stack's home
MECHANISM = "SCRAM-SHA-512"
PROTOCOL = "SASL_SSL"
ROLES = ("worker", "publisher", "operator", "reader")
BROKER = "broker"

# Kafka's ACL wire codes (org.apache.kafka.common.{resource,acl}).
_TOPIC, _GROUP, _CLUSTER = 2, 3, 4
_LITERAL, _PREFIXED = 3, 4
_ALL, _READ, _WRITE, _DESCRIBE, _DESCRIBE_CONFIGS = 2, 3, 4, 8, 10
_ALLOW = 3


@dataclass(frozen=True)
class Acl:
    principal: str
    resource_type: int
    name: str
    pattern: int
    operation: int


def acls(app_prefixes: tuple[str, ...]) -> list[Acl]:
    """Every role's ACLs (see the table above). `app_prefixes`: the app ids the worker runs as
    (a prefix: `omnistream` covers `omnistream-eu`), its internal topics and consumer group."""
    public = [t.name for t in spec.ALL]
    out = [Acl("worker", _TOPIC, name, _LITERAL, _ALL) for name in public]
    for prefix in app_prefixes:
        out += [Acl("worker", kind, prefix, _PREFIXED, _ALL) for kind in (_TOPIC, _GROUP)]
    out += [Acl("worker", _CLUSTER, "kafka-cluster", _LITERAL, op) for op in (_DESCRIBE, _DESCRIBE_CONFIGS)]
    for topic in (spec.PRD_REQUESTS, spec.METRICS_EVENTS, spec.CODEGEN_RESULTS, spec.PATTERN_FEEDBACK):
        out.append(Acl("publisher", _TOPIC, topic.name, _LITERAL, _WRITE))
    out += [Acl("operator", _TOPIC, spec.ALERTS_COMMANDS.name, _LITERAL, _WRITE),
            Acl("operator", _TOPIC, spec.ALERTS.name, _LITERAL, _READ)]
    for topic in (spec.CODEGEN_GENERATED, spec.CODEGEN_COMPLETED, spec.ALERTS):
        out.append(Acl("reader", _TOPIC, topic.name, _LITERAL, _READ))
    return out


@dataclass(frozen=True)
class Secrets:
    """The secure stack's files and passwords (made once by `ensure`)."""
    folder: Path
    passwords: dict[str, str]
    store_password: str

    @property
    def ca(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def keystore(self) -> Path:
        return self.folder / "broker.p12"

    def client_env(self, role: str) -> dict[str, str]:
        """The settings a client of `role` needs (`infra env --as ROLE`)."""
        if role not in self.passwords or role == BROKER:
            raise InfraError(f"no principal {role!r} on this stack: one of {', '.join(ROLES)}")
        return {"KAFKA_SECURITY_PROTOCOL": PROTOCOL, "KAFKA_SASL_MECHANISM": MECHANISM,
                "KAFKA_SASL_USERNAME": role, "KAFKA_SASL_PASSWORD": self.passwords[role],
                "KAFKA_SSL_CAFILE": str(self.ca)}

    def client_kwargs(self, role: str = BROKER) -> dict[str, Any]:
        """aiokafka keyword arguments for `role` (the stack's own probes and ACLs: `broker`)."""
        import ssl

        return {"security_protocol": PROTOCOL, "sasl_mechanism": MECHANISM,
                "sasl_plain_username": role, "sasl_plain_password": self.passwords[role],
                "ssl_context": ssl.create_default_context(cafile=str(self.ca))}

    def scram_args(self) -> list[str]:
        """`kafka-storage format` arguments that store every principal's SCRAM credentials."""
        out = []
        for name, password in sorted(self.passwords.items()):
            out += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
        return out

    def server_properties(self, port: int, controller_port: int) -> dict[str, str]:
        """What a node's server.properties changes for a secure stack."""
        broker = self.passwords[BROKER]
        return {
            "listeners": f"{PROTOCOL}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"{PROTOCOL}://127.0.0.1:{port}",
            "listener.security.protocol.map": f"{PROTOCOL}:{PROTOCOL},CONTROLLER:SASL_PLAINTEXT",
            "inter.broker.listener.name": PROTOCOL,
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.{PROTOCOL.lower()}.{MECHANISM.lower()}.sasl.jaas.config":
                f'org.apache.kafka.common.security.scram.ScramLoginModule required '
                f'username="{BROKER}" password="{broker}";',
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config":
                f'org.apache.kafka.common.security.plain.PlainLoginModule required '
                f'username="{BROKER}" password="{broker}" user_{BROKER}="{broker}";',
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.keystore),
            "ssl.keystore.password": self.store_password,
            "ssl.key.password": self.store_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.ca),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{BROKER}",
            "allow.everyone.if.no.acl.found": "false",
            "auto.create.topics.enable": "false",
        }


def load(folder: Path) -> Secrets | None:
    """The secrets of a secure stack in `folder`, or None when there is none."""
    path = folder / "secrets.json"
    if not path.exists():
        return None
    data = orjson.loads(path.read_bytes())
    return Secrets(folder, data["passwords"], data["store_password"])


def ensure(folder: Path) -> Secrets:
    """The stack's CA, broker keystore and passwords, made on first use (kept after)."""
    found = load(folder)
    if found is not None:
        return found
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "omnistream local CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=825))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "omnistream broker")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    store_password = secrets.token_urlsafe(24)
    made = Secrets(folder, {name: secrets.token_urlsafe(24) for name in (BROKER, *ROLES)}, store_password)
    write_private(made.ca, ca.public_bytes(serialization.Encoding.PEM))
    write_private(folder / "ca.key", ca_key.private_bytes(serialization.Encoding.PEM,
                                                     serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    write_private(made.keystore, pkcs12.serialize_key_and_certificates(
        b"broker", key, cert, [ca], serialization.BestAvailableEncryption(store_password.encode())))
    write_private(folder / "secrets.json", orjson.dumps({"passwords": made.passwords,
                                                     "store_password": store_password}))
    return made


async def apply_acls(bootstrap: str, made: Secrets, app_prefixes: tuple[str, ...]) -> int:
    """Create every role's ACLs (idempotent: the same binding twice is one) as the brokers'
    principal; return how many bindings were sent."""
    from aiokafka.errors import for_code
    from aiokafka.protocol.admin import CreateAclsRequest

    from streams.infra.kafka import admin_call

    wanted = acls(app_prefixes)

    async def create(admin: Any) -> None:
        refused = []
        for acl in wanted:
            # aiokafka's admin has no create_acls; its request negotiates the version (v1+).
            response = await admin._send_request(CreateAclsRequest(
                acl.resource_type, acl.name, acl.pattern, f"User:{acl.principal}", "*",
                acl.operation, _ALLOW))
            for code, message in response.creation_responses:
                if code:
                    refused.append(f"{acl}: {for_code(code).__name__} {message or ''}".strip())
        if refused:
            raise InfraError("the cluster refused ACLs: " + "; ".join(refused[:5]))

    await admin_call(bootstrap, create, **made.client_kwargs())
    return len(wanted)
