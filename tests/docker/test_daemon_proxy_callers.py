"""`tpmtls daemon-proxy --listen tcp://127.0.0.1:P`: every request on every connection is read
whole and checked before the daemon sees it — long, slow, late, second, pipelined, smuggled —
from raw sockets and from a real browser (headless Chromium) rebinding its name to loopback.
The daemon is a real dockerd; "never seen" means no volume was created."""

from __future__ import annotations

import http.server
import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

from support.daemon import DOCKER, DaemonPki, run
from support.proxy import in_thread
from support.wait import wait_until
from tpmtls.lab.process import child_env
from tpmtls.testing import free_port

HEAD_TIMEOUT = 2.0  # the proxies here wait this long for a request head (10 s by default)


@contextmanager
def serving(daemon_pki: DaemonPki, upstream_port: int, tcti: str, listen: str, **options: float) -> Iterator:
    """An in-process DaemonProxy (short head timeout) on `listen`; yields (proxy, log lines)."""
    from tpmtls.docker.files import CertPath
    from tpmtls.docker.proxy import DaemonProxy

    lines: list[str] = []
    proxy = DaemonProxy(f"tcp://127.0.0.1:{upstream_port}", listen, CertPath(daemon_pki.tpm_dir), tcti=tcti,
                        log=lines.append, **{"head_timeout": HEAD_TIMEOUT, **options})
    proxy.probe()
    with in_thread(proxy):
        yield proxy, lines


@pytest.fixture(scope="module")
def proxy(daemon_pki, tls_dockerd, test_tpm):
    _daemon, port = tls_dockerd
    with serving(daemon_pki, port, test_tpm.tcti, "tcp://127.0.0.1:0") as (p, lines):
        p.listen_port = int(p.bound.rsplit(":", 1)[1])
        p.lines = lines
        yield p


def volumes(tls_dockerd) -> list[str]:
    daemon, _port = tls_dockerd
    proc = run([DOCKER, "volume", "ls", "-q"], env=daemon.env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def create_volume(name: str, host: str = "127.0.0.1", extra: str = "") -> bytes:
    body = f'{{"Name": "{name}"}}'.encode()
    return (f"POST /volumes/create HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def answer(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP response read off `sock` (Content-Length framed, as dockerd and the proxy answer)."""
    buffered = _unread.setdefault(sock.fileno(), bytearray())
    while b"\r\n\r\n" not in buffered:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed without an answer (got {bytes(buffered)!r})")
        buffered += data
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-length"), 0)
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    buffered[:] = rest[length:]
    return int(lines[0].split()[1]), rest[:length]


_unread: dict[int, bytearray] = {}  # bytes read past one response, per socket


def exchange(port: int, *pieces: bytes, gap: float = 0.0) -> tuple[int, bytes]:
    """Send `pieces` (with `gap` seconds between them) on a new connection; the response."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for i, piece in enumerate(pieces):
            if i and gap:
                time.sleep(gap)
            s.sendall(piece)
        return answer(s)


def test_a_loopback_caller_is_served_and_may_keep_its_connection(proxy, tls_dockerd):
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=30) as s:
        for _ in range(3):
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert answer(s) == (200, b"OK"), proxy.lines
        s.sendall(create_volume("callers-served"))
        status, body = answer(s)
    assert status == 201, body
    assert "callers-served" in volumes(tls_dockerd)


@pytest.mark.parametrize("size, status", [(20_000, 403), (100_000, 431)])
def test_a_long_request_line_is_read_whole_before_it_is_judged(proxy, tls_dockerd, size, status):
    """A request line past the old 16 KiB peek hid the Host field: now the head is read whole
    (403 for the foreign Host), or refused as too large (431) — never forwarded."""
    name = f"callers-long-{size}"
    body = f'{{"Name": "{name}"}}'.encode()
    head = (f"POST /volumes/create?pad={'a' * size} HTTP/1.1\r\nHost: rebound.example:{proxy.listen_port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    got, text = exchange(proxy.listen_port, head + body)
    assert got == status, text
    assert b"tpmtls daemon-proxy" in text
    assert name not in volumes(tls_dockerd)


def test_a_slow_head_is_judged_once_complete_or_refused_when_too_slow(proxy, tls_dockerd):
    request = create_volume("callers-slow", host="rebound.example")
    pieces = [request[i:i + 8] for i in range(0, len(request), 8)]
    status, body = exchange(proxy.listen_port, *pieces, gap=0.02)  # ≈0.5 s in all: past the old peek's patience
    assert status == 403 and b"rebound.example" in body, body
    status, body = exchange(proxy.listen_port, b"GET /_ping HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n", gap=HEAD_TIMEOUT + 3)
    assert status == 408 and b"did not arrive within" in body, body
    assert "callers-slow" not in volumes(tls_dockerd)


def test_a_connection_idle_before_its_request_is_still_checked_then_closed(proxy, tls_dockerd):
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=30) as s:
        time.sleep(HEAD_TIMEOUT / 4)
        s.sendall(create_volume("callers-idle", extra="Origin: http://rebound.example\r\n"))
        status, body = answer(s)
    assert status == 403 and b"web browser" in body, body
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=30) as s:
        s.settimeout(HEAD_TIMEOUT * 5)
        assert s.recv(100) == b""  # nothing sent: closed after the head timeout, nothing forwarded
    assert "callers-idle" not in volumes(tls_dockerd)


@pytest.mark.parametrize("foreign", ["Host: rebound.example", "Host: 127.0.0.1\r\nOrigin: null",
                                     "Host: 127.0.0.1\r\nSec-Fetch-Mode: no-cors", "Host: 127.0.0.1\r\nHost: evil"])
def test_the_second_request_on_a_kept_alive_connection_is_checked(proxy, tls_dockerd, foreign):
    name = f"callers-second-{abs(hash(foreign))}"
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=30) as s:
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert answer(s) == (200, b"OK")
        s.sendall(create_volume(name).replace(b"Host: 127.0.0.1", foreign.encode()))
        status, body = answer(s)
    assert status in (400, 403), body
    assert name not in volumes(tls_dockerd)


def test_a_pipelined_request_is_checked_after_the_first_is_answered(proxy, tls_dockerd):
    with socket.create_connection(("127.0.0.1", proxy.listen_port), timeout=30) as s:
        s.sendall(b"GET /_ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + create_volume("callers-piped", "rebound.example"))
        assert answer(s) == (200, b"OK")
        status, body = answer(s)
    assert status == 403, body
    assert "callers-piped" not in volumes(tls_dockerd)


def test_a_request_hidden_in_odd_framing_never_reaches_the_daemon(proxy, tls_dockerd):
    hidden = create_volume("callers-smuggled")
    both = (b"POST /_ping HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n" + hidden.replace(b"127.0.0.1", b"rebound.example"))
    status, body = exchange(proxy.listen_port, both)
    assert status == 400 and b"Content-Length and Transfer-Encoding" in body, body
    chunk = hidden.replace(b"127.0.0.1", b"rebound.example")
    in_body = (b"GET /_ping HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
    assert exchange(proxy.listen_port, in_body)[0] == 200  # a body is a body: /_ping answers, nothing else runs
    folded = b"GET /_ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: b\r\n c\r\n\r\n"  # obsolete folding: unfolded, not split
    assert exchange(proxy.listen_port, folded)[0] == 200
    assert "callers-smuggled" not in volumes(tls_dockerd)


def test_a_unix_socket_serves_the_clis_own_host_name(daemon_pki, tls_dockerd, test_tpm, tmp_path):
    """The caller check is for ports; a unix socket's file mode decides, and the CLI's Host there is `docker`."""
    _daemon, port = tls_dockerd
    sock = tmp_path / "d.sock"
    with serving(daemon_pki, port, test_tpm.tcti, f"unix://{sock}"):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(sock))
            for host in (b"docker", b"api.moby.localhost"):
                s.sendall(b"GET /_ping HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
                assert answer(s) == (200, b"OK")


# ---- a real browser ------------------------------------------------------------------------

PAGE = """<!doctype html><title>rebinding</title><script>
const report = (what, text) => fetch("http://127.0.0.1:{collect}/" + what, {{method: "POST", mode: "no-cors",
    body: String(text).slice(0, 300)}}).catch(() => null);
async function attempt(round) {{
  // same origin once the name points at the proxy (DNS rebinding): the page could read the answers
  for (const [path, init] of [["/info", {{}}], ["/volumes/create", {{method: "POST",
        headers: {{"Content-Type": "application/json"}}, body: JSON.stringify({{Name: "browser-rebound"}})}}]]) {{
    try {{ const r = await fetch(path, init); report("same-origin", r.status + " " + await r.text()); }}
    catch (e) {{ report("error", round + " " + path + " " + e); }}
  }}
  // cross-site, fire and forget: what a page can do without rebinding
  fetch("http://127.0.0.1:{port}/volumes/create", {{method: "POST", mode: "no-cors",
        body: JSON.stringify({{Name: "browser-no-cors"}})}}).then(() => report("no-cors", "sent"),
        e => report("error", "no-cors " + e));
  const form = document.createElement("form");
  form.method = "POST"; form.enctype = "text/plain"; form.target = "sink" + round;
  form.action = "http://127.0.0.1:{port}/volumes/create";
  const field = document.createElement("input");
  field.name = '{{"Name": "browser-form", "x": "'; field.value = '"}}';
  form.appendChild(field);
  const sink = document.createElement("iframe"); sink.name = "sink" + round; document.body.appendChild(sink);
  document.body.appendChild(form); form.submit();
}}
report("loaded", location.href);
let round = 0;
const timer = setInterval(async () => {{
  round += 1;
  if (round > 40) {{ clearInterval(timer); report("done", "gave up"); return; }}
  // the page's own server answers 404, nothing answers in between; the proxy refuses (403)
  try {{ if ((await fetch("/_ping", {{cache: "no-store"}})).status !== 403) return; }} catch (e) {{ return; }}
  clearInterval(timer);
  await attempt(round);
  setTimeout(() => report("done", "after round " + round), 1500);
}}, 500);
</script>"""


class _Collector(http.server.BaseHTTPRequestHandler):
    """Serves the page (until told to stop) and collects what the page reports."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        page = self.server.page.encode()  # type: ignore[attr-defined]
        self.send_response(200 if self.path == "/" else 404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(page)

    def do_POST(self) -> None:  # noqa: N802
        text = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode(errors="replace")
        self.server.reports.append((self.path.strip("/"), text))  # type: ignore[attr-defined]
        self.send_response(204)
        self.send_header("Connection", "close")
        self.end_headers()


@contextmanager
def http_server(port: int, page: str = "", reports: list | None = None) -> Iterator[http.server.HTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Collector)
    server.page, server.reports = page, reports if reports is not None else []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def wait_for(reports: list, what: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(kind == what for kind, _ in reports):
            return True
        time.sleep(0.1)
    return False


def test_a_browser_page_rebinding_its_name_to_the_proxy_never_reaches_the_daemon(daemon_pki, tls_dockerd, test_tpm, tmp_path):
    """The page is served on the port the proxy will take, under a name Chromium resolves to
    127.0.0.1; then the page's server goes and the proxy comes: the page's same-origin requests
    (and its cross-site ones) now reach the proxy, as after a DNS rebinding."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (helpers/setup-debian.sh installs it)")
    _daemon, upstream = tls_dockerd
    port, collect = free_port(), free_port()
    reports: list[tuple[str, str]] = []
    page = PAGE.format(port=port, collect=collect)
    with http_server(collect, reports=reports):
        with http_server(port, page=page):
            browser = subprocess.Popen(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
                 "--host-resolver-rules=MAP rebound.example 127.0.0.1", f"http://rebound.example:{port}/"],
                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "chromium.log", "wb"), env=child_env(),
                start_new_session=True)
            try:
                assert wait_for(reports, "loaded", 60), (tmp_path / "chromium.log").read_text()[-2000:]
            except BaseException:
                browser.kill()
                browser.wait(10)
                raise
        try:
            with serving(daemon_pki, upstream, test_tpm.tcti, f"tcp://127.0.0.1:{port}") as (_proxy, lines):
                assert wait_for(reports, "done", 60), reports
                # the page's last two requests are fire-and-forget: wait for the proxy to have judged them
                wait_until(lambda: sum("refused:" in ln for ln in lines) >= 5, 30, "the proxy refusing the page's five")
        finally:
            browser.terminate()
            try:
                browser.wait(10)
            except subprocess.TimeoutExpired:
                browser.kill()
                browser.wait(10)
    same = [text for kind, text in reports if kind == "same-origin"]
    # over plain http the page is no secure context: Chromium sends no Sec-Fetch-* to its own
    # origin and no Origin on a GET, so its rebound Host is what gives it away
    assert len(same) == 2 and all(t.startswith("403 ") and "tpmtls daemon-proxy" in t for t in same), reports
    assert "DNS rebinding?" in same[0]
    assert not any("ServerVersion" in text for _, text in reports)
    refused = [ln for ln in lines if "refused:" in ln]
    assert len(refused) >= 5, lines  # the probe, /info, volumes/create, the no-cors POST, the form POST
    assert all(" 0 requests," in ln for ln in refused)
    assert not {"browser-rebound", "browser-no-cors", "browser-form"} & set(volumes(tls_dockerd))
