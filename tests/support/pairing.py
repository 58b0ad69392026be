"""Test infrastructure for pairing: the enroll-agent as a process, certificates made wrong on
purpose, and a TLS impostor that records what a client sends it."""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.processes import Supervised

PEM = serialization.Encoding.PEM


class AgentProcess(Supervised):
    """`python -m tpmtls enroll-agent …`, optionally under `systemd-socket-activate -l ADDR`;
    ready once it logs that it listens (socket activation) or its pairing key."""

    name = "enroll-agent"

    def __init__(self, workdir: Path, env: dict[str, str], *args: str, activate_on: str | None = None) -> None:
        argv = [sys.executable, "-m", "tpmtls", "enroll-agent", *args]
        if activate_on:
            # systemd-socket-activate passes only the variables named with -E (as a unit's Environment=)
            argv = ["systemd-socket-activate", "-l", activate_on, "-E", "PYTHONPATH", "-E", "PATH",
                    "-E", "DBUS_SESSION_BUS_ADDRESS", *argv]
        self.ready_line = "Listening on" if activate_on else "pairing key SHA-256"
        super().__init__(argv, workdir / f"enroll-agent-{time.monotonic_ns()}.log", env)

    def fingerprint(self) -> str:
        text = self.wait_for("pairing key SHA-256")
        m = re.search(r"pairing key SHA-256 ([0-9a-f]{64})", text)
        assert m, text
        return m.group(1)

    def exit_code(self, timeout: float = 30) -> int:
        return self.wait(timeout)


def make_cert(public_key, issuer_key, issuer_cert: x509.Certificate | None, *, eku=ExtendedKeyUsageOID.SERVER_AUTH,
              san: str = "127.0.0.1", cn: str = "daemon") -> bytes:
    """A leaf certificate with exactly the properties a refusal test needs (issuer None: self-signed)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    try:
        general: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        general = x509.DNSName(san)
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer_cert.subject if issuer_cert is not None else name)
         .public_key(public_key).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
         .add_extension(x509.SubjectAlternativeName([general]), critical=False))
    return b.sign(issuer_key, hashes.SHA256()).public_bytes(PEM)


class Impostor:
    """A TLS server with a key of its own (a man in the middle): records every byte a client sends."""

    def __init__(self, workdir: Path) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        (workdir / "impostor.key").write_bytes(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                                 serialization.NoEncryption()))
        (workdir / "impostor.crt").write_bytes(make_cert(key.public_key(), key, None))
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(workdir / "impostor.crt"), str(workdir / "impostor.key"))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(30)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.handshakes = 0
        self._thread = threading.Thread(target=self._serve_one, daemon=True)
        self._thread.start()

    def _serve_one(self) -> None:
        try:
            raw, _ = self.sock.accept()
        except OSError:
            return
        raw.settimeout(20)
        data = b""
        try:
            with self.context.wrap_socket(raw, server_side=True) as tls:
                self.handshakes += 1
                for _ in range(1000):  # bounded: until the client closes
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.received.append(data)
        except (ssl.SSLEOFError, ConnectionResetError):
            # the client hung up without close_notify, or its abort arrived as a reset (two runs
            # in three on Python 3.13 here): what it sent before is what counts
            self.received.append(data)
        except (ssl.SSLError, OSError) as e:
            self.received.append(f"<{type(e).__name__}>".encode())

    def join(self) -> None:
        self._thread.join(30)
        self.sock.close()
