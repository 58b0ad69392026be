"""`tpmtls enroll-agent`: pair on first connect (docs/pairing.md), then become dockerd on the same socket.

Before dockerd runs, the agent owns the daemon's TLS port (a systemd socket, LISTEN_FDS).
It makes the server key, serves a self-signed pairing certificate whose public-key
fingerprint it prints, and accepts exactly one POSTed server certificate from a client
whose certificate chains to --ca — only one that is issued by that CA, for this key,
with serverAuth and the expected names; anything else gets a 4xx and nothing is stored
(docker-easyenroll answered 401 and stored it anyway). Then it execs
`dockerd -H fd:// --tlsverify …`: same PID, so LISTEN_PID still holds, and the listening
socket never closes, so connections waiting in its backlog are served by dockerd.

The server key is a 0600 *file*: dockerd reads its TLS key with Go's crypto/tls from a
PEM file and cannot use a TPM (or any external signer). A TPM-held server key needs a
front that can sign with it (`tpmtls certs nginx-front`); the agent hands off to dockerd
itself, so a file it is.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import logging
import os
import select
import shutil
import socket
import ssl
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .._files import write_atomic
from .._systemd import SD_LISTEN_FDS_START, passed_fds
from ..errors import TlsSetupError, UsageError
from ..pki.csr import parse_san
from .store import key_fingerprint

ENROLL_PATH = "/tpmtls/v1/enroll"
_log = logging.getLogger("tpmtls.enroll_agent")
_MAX_BODY = 64 * 1024
_MAX_CONNECTIONS = 16  # handled at once; more wait in the listening socket's backlog
_POLL = 0.25  # seconds between looks at "enrolled yet?" while waiting for a connection or a slot
_CONN_TIMEOUT = 15.0  # per read
# per connection: handshake, request and answer ($TPMTLS_ENROLL_DEADLINE seconds if set)
_CONN_DEADLINE = float(os.environ.get("TPMTLS_ENROLL_DEADLINE") or 30.0)


def _shut(conn: socket.socket) -> None:
    """End a connection that overran its deadline (wakes a read blocked on it)."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
PEM = serialization.Encoding.PEM


class Refusal(Exception):
    """A POSTed certificate the agent will not store: HTTP status and a reason for the client."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class AgentState:
    """Files in --state DIR: server.key (0600), pairing.crt (self-signed), server.crt once enrolled."""

    directory: Path

    @property
    def key(self) -> Path:
        return self.directory / "server.key"

    @property
    def pairing_cert(self) -> Path:
        return self.directory / "pairing.crt"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"


def _load_ca(path: str | os.PathLike[str]) -> x509.Certificate:
    from .._files import read_input

    p = Path(path)
    try:
        return x509.load_pem_x509_certificate(read_input(p, "CA certificate"))
    except ValueError:
        raise UsageError(f"{p}: not a PEM CA certificate") from None


def ensure_server_key(state: AgentState) -> ec.EllipticCurvePrivateKey:
    """The server's key (made once, 0600) and a self-signed pairing certificate for it."""
    if not state.directory.is_dir():
        raise UsageError(f"{state.directory}: no such state directory; create it (mode 0700)")
    if state.key.exists():
        try:
            key = serialization.load_pem_private_key(state.key.read_bytes(), None)
        except (ValueError, TypeError, OSError) as e:
            raise UsageError(f"{state.key}: not a usable server key ({e}); remove it to make a new one") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise UsageError(f"{state.key}: not the EC key enroll-agent makes; remove it to make a new one")
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        write_atomic(state.key, key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()), 0o600)
    if not state.pairing_cert.exists() or \
            x509.load_pem_x509_certificate(state.pairing_cert.read_bytes()).public_key() != key.public_key():
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"tpmtls pairing {socket.gethostname()}")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=30))
                .sign(key, hashes.SHA256()))
        write_atomic(state.pairing_cert, cert.public_bytes(PEM), 0o644)
    return key


def check_certificate(pem: bytes, ca: x509.Certificate, server_key: object, names: Sequence[str],
                      now: datetime.datetime | None = None) -> x509.Certificate:
    """The POSTed server certificate, or a Refusal saying what is wrong with it."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise Refusal(400, "the body is not a PEM certificate") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise Refusal(403, f"not issued by this agent's CA ({ca.subject.rfc4514_string()})") from None
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise Refusal(422, "a CA certificate, not a server certificate")
    except x509.ExtensionNotFound:
        pass
    mine = server_key.public_key()  # type: ignore[attr-defined]
    if cert.public_key() != mine:
        raise Refusal(422, f"for another key (SHA-256 {key_fingerprint(cert.public_key())}), "
                           f"not this daemon's (SHA-256 {key_fingerprint(mine)})")
    try:
        ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise Refusal(422, "no extendedKeyUsage serverAuth") from None
    if ExtendedKeyUsageOID.SERVER_AUTH not in ekus:
        raise Refusal(422, "no extendedKeyUsage serverAuth")
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise Refusal(422, "not valid now (check its dates and both clocks)")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise Refusal(422, f"no subjectAltName; it must name {', '.join(names)}") from None
    dns = {n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)}
    ips = {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    for name in names:
        try:
            ok = str(ipaddress.ip_address(name)) in ips
        except ValueError:
            ok = name.lower().rstrip(".") in dns
        if not ok:
            raise Refusal(422, f"no subjectAltName for {name}, the name clients use for this daemon")
    return cert


def listening_socket(listen: str | None) -> tuple[socket.socket, int]:
    """(the TCP socket to pair on, how many sockets systemd passed; 0: we bound `listen`).

    systemd (LISTEN_FDS/LISTEN_PID, sd_listen_fds(3)) may pass several sockets: we pair on
    the one TCP socket and hand all of them to dockerd. Note dockerd wraps *every* fd://
    socket in TLS when --tlsverify is on (moby listeners.Init), so a local unix socket
    belongs in --dockerd-arg=--host=unix://… rather than in the socket unit.
    """
    passed = passed_fds()
    if passed:
        tcp = []
        for fd in passed:
            s = socket.socket(fileno=fd)
            if s.type == socket.SOCK_STREAM and s.family in (socket.AF_INET, socket.AF_INET6):
                tcp.append(s)
            else:
                s.detach()  # leave it open for dockerd
        if len(tcp) != 1:
            raise UsageError(f"systemd passed {len(tcp)} TCP sockets (LISTEN_FDS={len(passed)}); enroll-agent needs "
                             "exactly one: the daemon's TLS port (ListenStream=2376)")
        return tcp[0], len(passed)
    if not listen:
        raise UsageError("no listening socket: run under systemd socket activation "
                         "(helpers/tpmtls-enroll-agent.socket) or pass --listen ADDRESS:PORT")
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"--listen {listen[:80]!r}: write ADDRESS:PORT (a port from 1 to 65535)")
    try:
        sock = socket.create_server((host, int(port)), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    backlog=128)
    except (OSError, UnicodeError) as e:
        raise UsageError(f"--listen {listen[:80]}: cannot listen: {getattr(e, 'strerror', None) or e}") from None
    return sock, 0  # moved to fd 3 only at exec: until then fd 3 may belong to someone else


@dataclass
class PairingAgent:
    """One pairing: serve until a valid certificate is POSTed, store it, return.

    Connections are handled concurrently, up to `max_connections` at once, each with its own
    deadline, so idle or trickling peers cannot keep a legitimate client from its handshake.
    Only what follows the handshake of a client of --ca is one at a time, and no connection is
    accepted while it runs: those made meanwhile wait in the backlog, and once the daemon is
    enrolled they are dockerd's.
    """

    ca_path: Path
    state: AgentState
    sans: list[str] = field(default_factory=list)
    enrolled: bool = False
    max_connections: int = _MAX_CONNECTIONS

    def __post_init__(self) -> None:
        self.ca = _load_ca(self.ca_path)
        self.key = ensure_server_key(self.state)
        self.fingerprint = key_fingerprint(self.key.public_key())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.state.pairing_cert), str(self.state.key))
        ctx.load_verify_locations(cafile=str(self.ca_path))
        ctx.verify_mode = ssl.CERT_REQUIRED  # only clients of --ca may even speak to us
        ctx.sni_callback = self._remember_sni
        self.context = ctx
        self._sni: dict[int, str] = {}  # per handshake in progress, by id of its SSL socket
        self._sni_lock = threading.Lock()
        self._enroll_lock = threading.Lock()  # one enrollment at a time: check, store, answer
        self._session = threading.Lock()  # held by an authenticated client's request, and by each accept
        self._answered = threading.Event()  # the enrolling client has its 201: time to hand over

    def _remember_sni(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        if name:
            with self._sni_lock:
                self._sni[id(sslobj)] = name

    def say(self, text: str, level: int = logging.INFO) -> None:
        """An event for the log (stderr; the journal under systemd, refusals as warnings)."""
        _log.log(level, text)

    def serve(self, sock: socket.socket) -> None:
        """Accept until enrolled, each connection in a thread of its own (at most `max_connections`); return
        once the enrolling client has its answer. The listening socket stays open, blocking, for dockerd."""
        slots = threading.BoundedSemaphore(self.max_connections)
        sock.setblocking(False)  # accept only what select() found, so a vanished peer cannot block us
        try:
            while not self.enrolled:
                if not slots.acquire(timeout=_POLL):
                    continue  # every slot busy: new connections wait in the backlog, each slot ends by its deadline
                try:
                    ready, _, _ = select.select([sock], [], [], _POLL)
                    if not ready or not self._session.acquire(timeout=_POLL):
                        raise BlockingIOError  # nothing, or a client is enrolling: new ones wait in the backlog
                    try:
                        if self.enrolled:
                            slots.release()
                            break  # what is still in the backlog is dockerd's
                        conn, addr = sock.accept()
                    finally:
                        self._session.release()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    slots.release()
                    continue
                conn.setblocking(True)
                threading.Thread(target=self._serve_one, args=(conn, addr, slots), daemon=True,
                                 name=f"enroll-agent {addr[0]}:{addr[1]}").start()
            self._answered.wait(_CONN_DEADLINE)  # bounded: the 201 is written, or its deadline passed
        finally:
            sock.setblocking(True)  # dockerd inherits the file description as it was handed to us

    def _serve_one(self, conn: socket.socket, addr: tuple[str, int], slots: threading.BoundedSemaphore) -> None:
        # Each connection has a read timeout and a deadline for the whole exchange, so a peer
        # that trickles a byte at a time holds one slot for at most that long.
        deadline = threading.Timer(_CONN_DEADLINE, _shut, args=(conn,))
        deadline.daemon = True
        deadline.start()
        enrolled_here = False
        try:
            enrolled_here = self._serve_one_bounded(conn, addr)
        except Exception as e:  # noqa: BLE001 - one connection's bug must not end pairing for the others
            self.say(f"{addr[0]}:{addr[1]}: {type(e).__name__}: {e}")
        finally:
            deadline.cancel()
            conn.close()
            slots.release()
            if enrolled_here:
                self._answered.set()

    def _serve_one_bounded(self, conn: socket.socket, addr: tuple[str, int]) -> bool:
        """Handshake, then one request; True if this connection enrolled the daemon."""
        conn.settimeout(_CONN_TIMEOUT)
        peer = f"{addr[0]}:{addr[1]}"
        try:
            tls = self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        except (ssl.SSLError, OSError) as e:
            self.say(f"refused {peer}: TLS handshake failed ({getattr(e, 'reason', None) or e})", logging.WARNING)
            return False
        try:
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError) as e:
                self.say(f"refused {peer}: TLS handshake failed ({getattr(e, 'reason', None) or e})", logging.WARNING)
                return False
            finally:
                with self._sni_lock:
                    sni = self._sni.pop(id(tls), None)
            names = [str(n.value) for n in parse_san(self.sans)] if self.sans else [sni or tls.getsockname()[0]]
            # An authenticated client (its certificate is from --ca) has the agent to itself: no new connection
            # is accepted meanwhile, so those made while it enrolls wait in the backlog and are dockerd's.
            if not self._session.acquire(timeout=_CONN_DEADLINE):
                return False
            try:
                return _Handler(tls, (addr[0], addr[1]), self, names).enrolled
            finally:
                self._session.release()
        except (ssl.SSLError, OSError) as e:
            self.say(f"{peer}: connection failed ({e})", logging.WARNING)
            return False
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def accept_certificate(self, pem: bytes, names: list[str], peer: str) -> None:
        """Check and store the POSTed certificate (raises Refusal; writes nothing then).

        What is stored is the certificate that was checked, re-encoded: not the body as sent,
        which may carry more than one PEM block or bytes around it."""
        with self._enroll_lock:
            if self.enrolled:
                raise Refusal(409, "already enrolled")
            cert = check_certificate(pem, self.ca, self.key, names)
            write_atomic(self.state.server_cert, cert.public_bytes(PEM), 0o644)
            self.enrolled = True
        self.say(f"enrolled by {peer}: stored {self.state.server_cert}")


class _Handler(http.server.BaseHTTPRequestHandler):
    """One HTTP request on an accepted TLS connection (BaseHTTPRequestHandler runs it in __init__)."""

    protocol_version = "HTTP/1.1"
    server_version = "tpmtls-enroll-agent"

    def __init__(self, request: ssl.SSLSocket, client_address: tuple[str, int], agent: PairingAgent,
                 names: list[str]) -> None:
        self.agent, self.names = agent, names
        super().__init__(request, client_address, None)  # type: ignore[arg-type]

    enrolled = False  # set when this request enrolled the daemon (its 201 is written)

    def setup(self) -> None:
        super().setup()
        self.close_connection = True

    def handle(self) -> None:
        self.handle_one_request()  # one request per connection

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # the agent logs decisions itself, never bodies

    def _reply(self, status: int, message: str) -> None:
        body = json.dumps({"message": message}).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path == ENROLL_PATH:
            self._reply(200, f"awaiting a server certificate for key SHA-256 {self.agent.fingerprint}")
        else:
            self._reply(503, "this Docker daemon is not enrolled yet: pair it with 'tpmtls enroll HOST[:PORT]'")

    def do_POST(self) -> None:
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        if self.path != ENROLL_PATH:
            self._reply(503, "this Docker daemon is not enrolled yet: pair it with 'tpmtls enroll HOST[:PORT]'")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._reply(411, "Content-Length required")
            return
        if not 0 < length <= _MAX_BODY:
            self._reply(413, f"the certificate must be 1..{_MAX_BODY} bytes")
            return
        pem = self.rfile.read(length)
        r: Refusal
        try:
            self.agent.accept_certificate(pem, self.names, peer)
        except Refusal as refusal:
            r = refusal
        except (ValueError, TypeError) as e:  # a malformed extension cryptography cannot parse
            r = Refusal(400, f"cannot read the certificate ({str(e)[:120]})")
        else:
            try:
                self._reply(201, "enrolled: dockerd starts on this socket now")
            finally:
                self.enrolled = True
            return
        self.agent.say(f"refused the certificate POSTed by {peer}: {r} (HTTP {r.status}; nothing stored)", logging.WARNING)
        self._reply(r.status, f"certificate refused: {r}")

    def do_PUT(self) -> None:
        self._reply(405, "use POST")


def dockerd_argv(dockerd: str, ca: Path, state: AgentState, extra: Sequence[str]) -> list[str]:
    return [dockerd, "-H", "fd://", "--tlsverify", f"--tlscacert={ca}", f"--tlscert={state.server_cert}",
            f"--tlskey={state.key}", *extra]


def exec_dockerd(argv: list[str], sock: socket.socket, passed: int) -> NoReturn:
    """Replace this process with dockerd, keeping the PID and the listening socket(s) from fd 3 on."""
    env = dict(os.environ)
    if passed:  # systemd's sockets are where dockerd expects them: just let them survive exec
        sock.detach()
        for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + passed):
            os.set_inheritable(fd, True)
    else:
        fd = sock.detach()
        if fd != SD_LISTEN_FDS_START:  # dockerd -H fd:// takes fds from 3 on (sd_listen_fds)
            os.dup2(fd, SD_LISTEN_FDS_START, inheritable=True)
            os.close(fd)
        else:
            os.set_inheritable(fd, True)
        env.pop("LISTEN_FDNAMES", None)
    env["LISTEN_FDS"], env["LISTEN_PID"] = str(passed or 1), str(os.getpid())
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        raise UsageError(f"{argv[0]}: cannot start dockerd: {e.strerror}") from None


def check_enrolled(state: AgentState, ca_path: Path) -> None:
    """An existing server.crt must still fit: from --ca, for server.key; else say how to re-pair."""
    from ..docker.certcheck import check_server

    try:
        check_server(str(state.server_cert), str(state.key), str(ca_path))
    except (TlsSetupError, UsageError) as e:
        raise UsageError(f"{e}; remove {state.server_cert} to pair again") from None


def run_agent(ca: str, state_dir: str, dockerd_args: Sequence[str] = (), *, dockerd: str = "dockerd",
              sans: Sequence[str] = (), listen: str | None = None) -> NoReturn:
    """The whole agent: enroll if needed, then exec dockerd on the same socket."""
    ca_path, state = Path(ca).resolve(), AgentState(Path(state_dir).resolve())
    binary = shutil.which(dockerd)
    if binary is None:
        raise UsageError(f"{dockerd}: dockerd not found; install Docker or pass --dockerd PATH")
    sock, passed = listening_socket(listen)
    where = _describe(sock)
    if state.server_cert.exists():
        check_enrolled(state, ca_path)
        print(f"enroll-agent: already enrolled ({state.server_cert}); starting dockerd on {where}", flush=True)
    else:
        agent = PairingAgent(ca_path, state, list(sans))
        print(f"enroll-agent: listening on {where}; server key {state.key} (a 0600 file: dockerd reads its "
              "TLS key from a file and cannot use a TPM)", flush=True)
        print(f"enroll-agent: pairing key SHA-256 {agent.fingerprint} — give it to 'tpmtls enroll "
              "--expect-fingerprint' or compare what it shows", flush=True)
        agent.serve(sock)
        print(f"enroll-agent: enrolled; starting dockerd on {where}", flush=True)
    exec_dockerd(dockerd_argv(binary, ca_path, state, dockerd_args), sock, passed)


def _describe(sock: socket.socket) -> str:
    try:
        host, port = sock.getsockname()[:2]
        return f"fd {sock.fileno()} ({host}:{port})"
    except OSError:
        return f"fd {sock.fileno()}"


__all__ = ["AgentState", "PairingAgent", "Refusal", "check_certificate", "run_agent", "ENROLL_PATH"]
