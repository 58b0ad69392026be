"""Test PKI (software CA, certificates for TPM keys) and real OpenSSL peers on loopback."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import socket
import ssl
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.processes import Supervised
from tpmtls.testing import free_port

PEM = serialization.Encoding.PEM


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class Pki:
    """A CA with a software server certificate for localhost/127.0.0.1, issuing more on demand."""

    def __init__(self, directory: Path, cn: str = "tpmtls test CA") -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self._build(self.key.public_key(), cn, ca=True, issuer=(self.key, _name(cn)))
        self.ca_file = self._write("ca.crt", self.cert.public_bytes(PEM))
        server_key = ec.generate_private_key(ec.SECP256R1())
        self.server_key = self._write_key("server.key", server_key)
        self.server_cert = self.issue(server_key.public_key(), "localhost", "server.crt", server=True)

    def _build(self, public_key, cn, *, ca=False, server=False, issuer=None) -> x509.Certificate:
        signer, issuer_name = issuer or (self.key, self.cert.subject)
        now = datetime.datetime.now(datetime.timezone.utc)
        b = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(issuer_name).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            # RFC 5280's identifiers, which strict verification (Python 3.13's default) demands
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if issuer is None:  # not self-signed
            b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
        if ca:
            b = b.add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                              data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                              crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        else:
            eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
            b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(cn), x509.DNSName("server.domain.com"),
                                             x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return b.sign(signer, hashes.SHA256())

    def _write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path

    def _write_key(self, name: str, key) -> Path:
        return self._write(
            name, key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )

    def issue(self, public_key, cn: str, filename: str, *, server: bool = False) -> Path:
        """A certificate for `public_key` (a TPM key's, or any) signed by this CA."""
        return self._write(filename, self._build(public_key, cn, server=server).public_bytes(PEM))

    def software_client(self, cn: str = "software-client", key=None) -> tuple[Path, Path]:
        """A client certificate and its software key file (`key`: a cryptography private key; P-256 if None)."""
        key = key or ec.generate_private_key(ec.SECP256R1())
        return self.issue(key.public_key(), cn, f"{cn}.crt"), self._write_key(f"{cn}.key", key)


class OpenSSLServer(Supervised):
    """`openssl s_server` on a free loopback port (`address`: 127.0.0.1 or ::1), serving the
    CA's server certificate unless `cert`/`key` are given; ready once it prints ACCEPT."""

    name = "openssl s_server"
    ready_line = "ACCEPT"

    def __init__(self, pki: Pki, *extra: str, verify_client: bool = True, www: bool = True,
                 env: dict[str, str] | None = None, address: str = "127.0.0.1", cert: Path | None = None,
                 key: Path | None = None) -> None:
        self.address, self.port = address, free_port()
        accept = f"[{address}]:{self.port}" if ":" in address else f"{address}:{self.port}"
        args = ["openssl", "s_server", "-accept", accept, "-cert", str(cert or pki.server_cert),
                "-key", str(key or pki.server_key), "-CAfile", str(pki.ca_file), "-naccept", "100000"]
        if verify_client:
            args += ["-Verify", "1", "-verify_return_error"]
        if www:
            args.append("-www")
        super().__init__([*args, *extra], pki.dir / f"s_server-{self.port}.log", env)


def shut_down(*socks: socket.socket, close: bool = False) -> None:
    """Both directions of each socket ended (the peer sees EOF), whatever state it is in."""
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if close:
            s.close()


def read_to_close(sock, pieces: int = 100, size: int = 4096) -> bytes:
    """What a peer sends until it closes the connection, bounded at `pieces` reads of `size`."""
    data = b""
    for _ in range(pieces):
        chunk = sock.recv(size)
        if not chunk:
            break
        data += chunk
    return data


class LoopbackListener:
    """A TCP listener on a free 127.0.0.1 port whose thread hands every connection to `handle`
    until `close()`. Accept waits are 0.2 s, so closing is prompt; a context manager.
    Subclasses set their own attributes before calling `super().__init__()` (it starts the thread)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closing.set()
        self.listener.close()
        self._thread.join(5)

    def __enter__(self):  # noqa: ANN204 - returns the subclass
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



class PythonTlsServer(LoopbackListener):
    """A threaded stdlib TLS server that answers each connection with the client's CN.

    `context` decides the rest: a TPM key as the server key (server-role tests), or a
    software key with CERT_REQUIRED (to check what a client presented). Bounded: each
    connection has a timeout, and the accept loop stops when `stop()` is called.
    """

    def __init__(self, context) -> None:
        self.context = context
        self.subjects: list[str] = []
        self.errors: list[str] = []
        super().__init__()

    def handle(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            with self.context.wrap_socket(raw, server_side=True) as tls:
                peer = tls.getpeercert() or {}
                cn = next((v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"), "-")
                self.subjects.append(cn)
                tls.recv(1024)
                tls.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello " + cn.encode() + b"\n")
                try:
                    tls.unwrap()  # close_notify: a clean end of the response
                except (ssl.SSLError, OSError):
                    pass
        except (ssl.SSLError, OSError) as e:
            self.errors.append(str(e))
            raw.close()

    def stop(self) -> None:
        self.close()


def verifying_server_context(pki: Pki):
    """A software-key server context that requires client certificates from `pki`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    ctx.load_verify_locations(str(pki.ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class CuttingProxy(LoopbackListener):
    """Loopback TCP proxy counting client→registry bytes (`sent`) and registry→client bytes
    (`received`). Once a connection has carried more than `cut_after` bytes up it is cut,
    once: `inside` a request (in the middle of the upload data) or `after` the registry's
    next response (between two requests); with `cut_down_after`, once a connection has
    carried more than that many bytes down (in the middle of a download).
    `throttle` sleeps per forwarded upload piece (a slow link); `carried_enough` is set once
    `signal_after` bytes went up. With `hold_down_after` (`hold_up_after`), downloads (uploads)
    stall once that many bytes came down (went up) in all, `holding` is set, until `close()`:
    a transfer caught in the middle for certain, however fast the machine."""

    def __init__(self, upstream_port: int, cut_after: int | None = None, where: str = "inside",
                 throttle: float = 0.0, signal_after: int = 0, cut_down_after: int | None = None,
                 hold_down_after: int | None = None, hold_up_after: int | None = None) -> None:
        self.upstream, self.where, self.throttle = upstream_port, where, throttle
        self.cut_after = cut_after if cut_after is not None else float("inf")
        self.cut_down_after = cut_down_after if cut_down_after is not None else float("inf")
        self.signal_after = signal_after
        self.hold_down_after = hold_down_after if hold_down_after is not None else float("inf")
        self.hold_up_after = hold_up_after if hold_up_after is not None else float("inf")
        self.holding = threading.Event()  # set once a transfer stalls
        self.carried_enough = threading.Event()  # set once `signal_after` upload bytes went through
        self.sent = 0
        self.received = 0
        self.cuts = 0
        self.lock = threading.Lock()
        super().__init__()

    def handle(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=30)
        client.settimeout(30)
        state = {"carried": 0, "armed": False, "down": 0}
        threading.Thread(target=self._pump, args=(client, upstream, True, state), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client, False, state), daemon=True).start()

    def _cut_now(self, state: dict, upward: bool) -> bool:
        with self.lock:
            if self.cuts:
                return False
            if upward and state["carried"] > self.cut_after:
                if self.where == "inside":
                    self.cuts += 1
                    return True
                state["armed"] = True
            if not upward and state["armed"]:
                self.cuts += 1
                return True
            if not upward and state["down"] > self.cut_down_after:
                self.cuts += 1
                return True
        return False

    def _stall(self) -> None:
        """A transfer stuck in the middle: nothing more goes through until close()."""
        self.holding.set()
        self.closing.wait(120)

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool, state: dict) -> None:
        try:
            while not self.closing.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if upward:
                    if self.throttle:
                        time.sleep(self.throttle)  # per piece: a slow link
                    with self.lock:
                        self.sent += len(data)
                        state["carried"] += len(data)
                        if self.sent > self.signal_after:
                            self.carried_enough.set()
                        hold = self.sent > self.hold_up_after
                    if hold:
                        self._stall()
                        break
                    if state.get("frozen") or self._cut_now(state, True):
                        break  # frozen: the response that ends the connection is on its way to the client
                    dst.sendall(data)
                else:
                    if state["armed"]:
                        state["frozen"] = True  # nothing more goes up: the cut falls between requests
                    with self.lock:
                        self.received += len(data)
                        state["down"] += len(data)
                        hold = self.received > self.hold_down_after
                    if hold:
                        self._stall()
                        break
                    if state["down"] > self.cut_down_after and self._cut_now(state, False):
                        break  # mid-download: what was carried so far went through, the rest never will
                    dst.sendall(data)
                    if self._cut_now(state, False):
                        break
        except OSError:
            pass
        finally:
            shut_down(src, dst, close=True)


def serve_https(handler: type[http.server.BaseHTTPRequestHandler], pki: Pki) -> http.server.ThreadingHTTPServer:
    """`handler` over TLS (the CA's server certificate) on a free 127.0.0.1 port, served by a
    thread of its own until `shutdown()`; `server_close()` then frees the port."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    return httpd


class HostileRegistry:
    """A small https registry front that a real registry cannot imitate: it asks for Basic
    credentials, then sends every upload to `upload_location` (a plain-HTTP URL, or another
    host). Records what arrived: (method, path, Authorization header or None)."""

    def __init__(self, pki: Pki, upload_location: str = "") -> None:
        self.upload_location = upload_location  # also where blob downloads are redirected
        self.seen: list[tuple[str, str, str | None]] = []
        digest = "sha256:" + "ab" * 32
        self.manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                         "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2,
                                    "digest": digest},
                         "layers": []}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, headers: dict[str, str] | None = None) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                elif self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().strip() or b"0", 16)
                        self.rfile.read(size + 2)
                        if size == 0:
                            break
                server.seen.append((self.command, self.path, self.headers.get("Authorization")))
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _route(self) -> None:
                if not self.headers.get("Authorization"):
                    return self._answer(401, {"WWW-Authenticate": 'Basic realm="hostile"'})
                if self.command == "POST" and "/blobs/uploads/" in self.path:
                    return self._answer(202, {"Location": server.upload_location, "Range": "0-0"})
                if self.command == "HEAD":
                    return self._answer(404)
                if self.command == "GET" and "/manifests/" in self.path:  # one layer, whose blob is redirected
                    server.seen.append((self.command, self.path, self.headers.get("Authorization")))
                    body = json.dumps(server.manifest).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return None
                if self.command == "GET" and "/blobs/" in self.path and server.upload_location:
                    return self._answer(307, {"Location": server.upload_location})
                return self._answer(200)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = _route  # noqa: N815 - http.server's naming

        self.httpd = serve_https(Handler, pki)
        self.port = self.httpd.server_address[1]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "HostileRegistry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CountingListener(LoopbackListener):
    """A TCP listener that counts connections and bytes. `mode`: "close" reads and closes (a
    plain-HTTP endpoint nothing should reach), "hold" accepts and never answers, "http"
    answers like a plain-HTTP server (400) and closes."""

    def __init__(self, mode: str = "close") -> None:
        self.mode = mode
        self.held: list[socket.socket] = []
        self.connections = 0
        self.received = 0
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        self.connections += 1
        if self.mode == "hold":
            self.held.append(conn)
            return
        conn.settimeout(1)
        try:
            self.received += len(conn.recv(65536))
            if self.mode == "http":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        super().close()
        for conn in self.held:
            conn.close()


class ConnectProxy(LoopbackListener):
    """An HTTP CONNECT proxy that sends every tunnel to 127.0.0.1:<the port asked for>.

    How a test lets stock dockerd reach a loopback registry under a name that does not
    resolve into 127.0.0.0/8 (dockerd treats those as insecure and ignores certs.d)."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        super().__init__()

    def handle(self, client: socket.socket) -> None:
        threading.Thread(target=self._tunnel, args=(client,), daemon=True).start()

    def _tunnel(self, client: socket.socket) -> None:
        client.settimeout(30)
        try:
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                data = client.recv(4096)
                if not data:
                    return
                head += data
            method, target = head.split(b" ", 2)[:2]
            if method != b"CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target.decode())
            upstream = socket.create_connection(("127.0.0.1", int(target.rpartition(b":")[2])), timeout=30)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        except (OSError, ValueError):
            client.close()
            return
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Forward src → dst until either side ends (or the listener closes), then shut both down."""
        try:
            while not self.closing.is_set():
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            shut_down(src, dst)
