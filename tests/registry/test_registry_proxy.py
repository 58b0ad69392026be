"""`tpmtls proxy` lets a stock dockerd push and pull through the TPM key."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from support.commands import require
from support.proxy import RegistryProxyProcess, docker, hosts_entry, unique_name
from support.registry import skopeo_raw
from support.wait import wait_until
from tpmtls.lab.process import child_env

LOG_LINE = r"^\d\d:\d\d:\d\d tpmtls proxy: (GET|HEAD|POST|PUT|PATCH|DELETE) /\S* \d{3} up=\d+ down=\d+ \d+ms"


@pytest.fixture(scope="module")
def loaded(dockerd, small_image):
    """A multi-layer image loaded into the private dockerd as demo:1."""
    docker(dockerd.env, "load", "-i", str(small_image))
    return "demo:1"


@pytest.fixture(scope="module")
def proxy(registry, tpm_certs, test_tpm, tmp_path_factory):
    require("docker-registry")
    work = tmp_path_factory.mktemp("proxy")
    with RegistryProxyProcess(work, test_tpm.env, "--upstream", f"localhost:{registry.port}", "--listen",
                              "127.0.0.1:0", "--cert-dir", str(tpm_certs)) as p:
        yield p


def _listen_refused(cli, listen: str, tpm_certs) -> str:
    line = cli.fails("proxy", "--upstream", "localhost:5000", "--listen", listen, "--cert-dir", str(tpm_certs))
    assert "refusing to listen" in line and listen in line, line
    return line


@pytest.mark.parametrize("listen", ["0.0.0.0:5000", "10.0.0.1:5000", "[::]:5000"])
def test_listen_outside_loopback_is_refused(listen, cli, tpm_certs):
    _listen_refused(cli, listen, tpm_certs)


@pytest.mark.machine  # edits /etc/hosts
def test_listen_on_a_name_resolving_off_loopback_is_refused(cli, tpm_certs):
    with hosts_entry(unique_name("off-loopback"), "10.0.0.1") as name:
        line = _listen_refused(cli, f"{name}:5000", tpm_certs)
    assert "10.0.0.1" in line


def test_push_rmi_pull_through_the_proxy(proxy, loaded, dockerd, registry, soft_certs):
    ref = f"{proxy.address}/demo:1"
    docker(dockerd.env, "tag", loaded, ref)
    pushed = docker(dockerd.env, "push", ref).stdout
    digest = pushed.strip().splitlines()[-1].split("digest: ")[1].split()[0]
    docker(dockerd.env, "rmi", ref, loaded)
    pulled = docker(dockerd.env, "pull", ref).stdout
    assert f"Digest: {digest}" in pulled
    _, upstream_digest = skopeo_raw(f"localhost:{registry.port}/demo:1", soft_certs)
    assert upstream_digest == digest
    requests = [line for line in proxy.lines() if " up=" in line]
    assert requests and all(re.match(LOG_LINE, line) for line in requests), requests[:5]
    assert any(" PUT /v2/demo/manifests/1 201 " in line for line in requests)
    status = proxy.status()
    assert status["requests"] >= len(requests) and status["bytes_up"] > 2_000_000 and status["bytes_down"] > 2_000_000
    # connections are pooled and resumed: the TPM signs once per full handshake, not per request
    assert 1 <= status["tpm_signatures"] <= status["full_handshakes"] < status["requests"]
    docker(dockerd.env, "tag", ref, loaded)


def test_untrusted_key_fails_and_the_refusal_is_logged(registry, dockerd, loaded, pki, tpm, test_tpm, tmp_path):
    from support.peers import Pki
    from support.registry import tpm_cert_dir

    foreign = tpm_cert_dir(tmp_path / "foreign", Pki(tmp_path / "other-ca", "some other CA"), tpm)
    shutil.copy(pki.ca_file, foreign / "ca.crt")  # we trust the registry; it does not trust our issuer
    with RegistryProxyProcess(tmp_path, test_tpm.env, "--upstream", f"localhost:{registry.port}", "--listen",
                              "127.0.0.1:0", "--cert-dir", str(foreign)) as p:
        pulled = docker(dockerd.env, "pull", f"{p.address}/demo:1", check=False)
    lines = p.lines()  # once it has stopped: each request's line is written after its answer
    assert pulled.returncode != 0
    assert p.returncode == 0, lines[-3:]  # SIGTERM: a clean exit, TPM key context and all
    refusals = [line for line in lines if "refused our client certificate" in line]
    assert refusals, lines
    assert all(line.count("\n") == 0 and str(foreign / "client.cert") in line for line in refusals)
    # docker prints the 502's reason phrase: the proxy's line, not a bare "502 Bad Gateway"
    assert "502 tpmtls proxy: " in pulled.stderr and "refused our client certificate" in pulled.stderr, pulled.stderr
    print(pulled.stderr.strip(), refusals[-1], sep="\n")


def test_a_502_carries_the_reason_in_its_status_line_and_error_body(registry, pki, tpm, test_tpm, tmp_path):
    """What a client that reads no body (Go's, for a 5xx) and one that does both get; the reason phrase is
    plain ASCII on one line, as HTTP requires."""
    import http.client
    import json

    from support.peers import Pki
    from support.registry import tpm_cert_dir

    foreign = tpm_cert_dir(tmp_path / "fóreign", Pki(tmp_path / "other-ca", "some other CA"), tpm)  # non-ASCII path
    shutil.copy(pki.ca_file, foreign / "ca.crt")
    with RegistryProxyProcess(tmp_path, test_tpm.env, "--upstream", f"localhost:{registry.port}", "--listen",
                              "127.0.0.1:0", "--cert-dir", str(foreign)) as p:
        host, port = p.address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("HEAD", "/v2/demo/manifests/1")  # containerd's first request: no body possible
        head = conn.getresponse()
        head.read()
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/v2/demo/manifests/1")
        got = conn.getresponse()
        body = json.loads(got.read())
    assert head.status == got.status == 502
    assert head.reason.startswith("tpmtls proxy: ") and "refused our client certificate" in head.reason
    assert head.reason.isascii() and "\\xf3" in head.reason  # the path's "ó", escaped
    assert body["errors"][0]["code"] == "UNAVAILABLE" and "refused our client certificate" in body["errors"][0]["message"]


@pytest.mark.machine  # edits /etc/hosts; starts dockerd
def test_registry_own_name_mapped_to_loopback(pki, dockerd, loaded, tpm_certs, test_tpm, soft_certs, tmp_path):
    """`docker push NAME:PORT/demo:1` with NAME → 127.0.0.2 in /etc/hosts; the proxy listens on
    127.0.0.2:PORT and reaches the real registry (127.0.0.1:PORT) with --resolve."""
    require("docker-registry")
    from tpmtls.lab import Registry

    name = unique_name()
    server_cert = pki.issue(_server_key(pki).public_key(), name, f"{name}.crt", server=True)  # SAN: the name
    with Registry(server_cert, pki.dir / "own-name.key", pki.ca_file, tmp_path / "reg") as reg, \
            hosts_entry(name, "127.0.0.2", dockerd_env=dockerd.env):
        hostport = f"{name}:{reg.port}"
        certs = tmp_path / "certs"
        shutil.copytree(tpm_certs, certs)
        with RegistryProxyProcess(tmp_path, test_tpm.env, "--upstream", hostport, "--listen", f"127.0.0.2:{reg.port}",
                                  "--cert-dir", str(certs), "--resolve", f"{hostport}:127.0.0.1") as p:
            ref = f"{hostport}/demo:1"
            docker(dockerd.env, "tag", loaded, ref)
            digest = docker(dockerd.env, "push", ref).stdout.strip().splitlines()[-1].split("digest: ")[1].split()[0]
            docker(dockerd.env, "rmi", ref)
            assert f"Digest: {digest}" in docker(dockerd.env, "pull", ref).stdout
            docker(dockerd.env, "rmi", ref)
        assert p.returncode == 0
        _, upstream_digest = skopeo_raw(f"127.0.0.1:{reg.port}/demo:1", soft_certs)
    assert upstream_digest == digest
    assert name not in Path("/etc/hosts").read_text()


def _server_key(pki):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    (pki.dir / "own-name.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    return key


def test_cli_needs_a_client_certificate(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    line = cli.fails("proxy", "--upstream", "localhost:5000", "--listen", "127.0.0.1:0", "--cert-dir", "empty")
    assert "no client certificate" in line and "empty" in line


def test_eight_concurrent_clients_get_the_same_digest(proxy, loaded, dockerd, tmp_path):
    """4 docker pulls (4 repositories, one daemon) and 4 skopeo copies at once, one proxy."""
    require("skopeo")
    import concurrent.futures

    repos = [f"{proxy.address}/conc-{i}:1" for i in range(4)]
    digests = set()
    for ref in repos:
        docker(dockerd.env, "tag", loaded, ref)
        digests.add(docker(dockerd.env, "push", ref).stdout.strip().splitlines()[-1].split("digest: ")[1].split()[0])
        docker(dockerd.env, "rmi", ref)
    assert len(digests) == 1

    def docker_pull(ref: str) -> str:
        out = docker(dockerd.env, "pull", ref).stdout
        return out.split("Digest: ", 1)[1].split()[0]

    def skopeo_copy(i: int) -> str:
        out = tmp_path / f"dir-{i}"  # dir: keeps the manifest as served (oci: would convert it)
        proc = subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{repos[i]}", f"dir:{out}"],
                              capture_output=True, text=True, env=child_env(), timeout=300)
        assert proc.returncode == 0, proc.stderr
        return "sha256:" + hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(docker_pull, ref) for ref in repos] + [pool.submit(skopeo_copy, i) for i in range(4)]
        got = [job.result(timeout=600) for job in jobs]
    assert set(got) == digests, got
    for ref in repos:
        docker(dockerd.env, "rmi", ref)


def test_rss_stays_flat_while_200_mb_stream_through(proxy):
    """A 200 MB blob up (chunked, like dockerd's PATCH) and down again; the proxy's RSS sampled."""
    import hashlib
    import http.client
    import os
    import threading

    from support.proxy import rss_kib

    block = os.urandom(1 << 20)
    size_mb = 200
    digest = hashlib.sha256()
    for _ in range(size_mb):
        digest.update(block)
    blob = f"sha256:{digest.hexdigest()}"
    host, port = proxy.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    conn.request("GET", "/v2/")
    conn.getresponse().read()
    baseline = rss_kib(proxy.pid)
    peak, samples = [baseline], [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_kib(proxy.pid))
            samples[0] += 1

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        conn.request("POST", "/v2/big/blobs/uploads/", headers={"Content-Length": "0"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 202, resp.status
        location = resp.getheader("Location")
        assert location.startswith(f"http://{proxy.address}/v2/big/blobs/uploads/"), location  # rewritten to us
        path = location.split(proxy.address, 1)[1]
        conn.request("PATCH", path, body=(block for _ in range(size_mb)), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked", "Content-Type": "application/octet-stream"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 202, resp.status
        path = resp.getheader("Location").split(proxy.address, 1)[1]
        conn.request("PUT", f"{path}{'&' if '?' in path else '?'}digest={blob}", headers={"Content-Length": "0"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 201, resp.status
        conn.request("GET", f"/v2/big/blobs/{blob}")
        resp = conn.getresponse()
        back = hashlib.sha256()
        for piece in iter(lambda: resp.read(1 << 20), b""):
            back.update(piece)
        assert resp.status == 200 and f"sha256:{back.hexdigest()}" == blob
    finally:
        done.set()
        sampler.join()
        conn.close()
    growth_mb = (peak[0] - baseline) / 1024
    print(f"proxy RSS: {baseline / 1024:.1f} MB before, peak {peak[0] / 1024:.1f} MB while 2 x {size_mb} MB streamed "
          f"({samples[0]} samples)")
    assert samples[0] >= 5
    assert growth_mb < 50, f"RSS grew by {growth_mb:.0f} MB while {size_mb} MB streamed"


@pytest.mark.machine  # binds 127.0.0.3:80 (root); edits /etc/hosts; starts dockerd
def test_portless_name_needs_the_proxy_on_port_80(registry, dockerd, loaded, tpm_certs, test_tpm, tmp_path):
    """`docker push NAME/demo:1`: dockerd tries https://NAME (443), then http://NAME (80): with NAME
    mapped to loopback, a proxy listening on port 80 of that address serves it (root or
    CAP_NET_BIND_SERVICE needed for port 80; nothing may answer TLS on 443 there)."""
    import os
    import time

    assert os.geteuid() == 0, "binding port 80 needs root or CAP_NET_BIND_SERVICE: run the machine tests as root"
    name = unique_name("portless")
    with hosts_entry(name, "127.0.0.3", dockerd_env=dockerd.env), \
            RegistryProxyProcess(tmp_path, test_tpm.env, "--upstream", f"localhost:{registry.port}",
                                 "--listen", "127.0.0.3:80", "--cert-dir", str(tpm_certs)) as p:
        ref = f"{name}/portless:1"
        docker(dockerd.env, "tag", loaded, ref)
        started = time.monotonic()
        digest = docker(dockerd.env, "push", ref).stdout.strip().splitlines()[-1].split("digest: ")[1].split()[0]
        docker(dockerd.env, "rmi", ref)
        assert f"Digest: {digest}" in docker(dockerd.env, "pull", ref).stdout
        print(f"port-less {ref}: push + pull through 127.0.0.3:80 in {time.monotonic() - started:.2f} s")
        docker(dockerd.env, "rmi", ref)
        assert any(" PUT /v2/portless/manifests/1 201 " in line for line in p.lines())


@pytest.mark.parametrize("args, words", [
    (["--upstream", "http://registry.example/v2"], "HOST[:PORT]"),
    (["--upstream", "registry.example:99999"], "HOST[:PORT]"),
    (["--upstream", "registry.example", "--listen", "127.0.0.1"], "127.0.0.1:PORT"),
    (["--upstream", "registry.example", "--resolve", "nonsense"], "HOST:PORT:ADDRESS"),
])
def test_bad_arguments_are_one_line(args, words, cli, tpm_certs):
    line = cli.fails("proxy", *args, "--cert-dir", str(tpm_certs))
    assert words in line, line


@pytest.mark.parametrize("headers", [
    {"Host": "evil.example:5000"},  # a web page whose name was rebound to 127.0.0.1
    {"Host": "127.0.0.1", "Origin": "http://evil.example"},
    {"Host": "localhost", "Sec-Fetch-Mode": "no-cors"},
])
def test_browsers_and_rebound_names_are_refused(headers, proxy):
    """The proxy signs with this machine's TPM key for its callers: only local registry clients are served."""
    import http.client

    host, port = proxy.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    conn.request("GET", "/v2/", headers=headers)
    response = conn.getresponse()
    body = response.read().decode()
    conn.close()
    assert response.status == 403 and "DENIED" in body, body
    # the proxy logs a request once it has answered it
    wait_until(lambda: any("403" in line and ("Host" in line or "browser" in line) for line in proxy.lines()), 30,
               "the proxy logging the refusal")


def test_loopback_callers_are_served(proxy):
    import http.client

    host, port = proxy.address.rsplit(":", 1)
    for name in ("127.0.0.1", "localhost", f"127.0.0.1:{port}"):
        conn = http.client.HTTPConnection(host, int(port), timeout=20)
        conn.request("GET", "/_tpmtls/status", headers={"Host": name})
        assert conn.getresponse().status == 200
        conn.close()


def test_an_upstream_body_cut_short_closes_the_client_connection(registry, tpm_certs, soft_certs, test_tpm, tmp_path):
    """The registry's connection drops in the middle of a blob: the client gets the bytes that came and
    then a closed connection (never a hang, never bytes that did not come), and the proxy logs it."""
    import http.client
    import json

    import tpmtls
    from support.peers import CuttingProxy
    from tpmtls.lab import build_docker_archive
    from tpmtls.registry.push import BlobCache

    image = build_docker_archive(tmp_path / "img.tar", [{"blob.bin": 4_000_000}])
    tpmtls.push(f"docker-archive:{image}", f"localhost:{registry.port}/cut:1", cert_dir=tpm_certs, tcti=test_tpm.tcti,
                cache=BlobCache(tmp_path / "cache.json"))
    layer = json.loads(skopeo_raw(f"localhost:{registry.port}/cut:1", soft_certs)[0])["layers"][0]
    cutter = CuttingProxy(registry.port, cut_down_after=1_000_000)
    try:
        with RegistryProxyProcess(tmp_path, test_tpm.env, "--upstream", f"localhost:{cutter.port}", "--listen",
                                  "127.0.0.1:0", "--cert-dir", str(tpm_certs)) as p:
            host, port = p.address.rsplit(":", 1)
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("GET", f"/v2/cut/blobs/{layer['digest']}")
            resp = conn.getresponse()
            assert resp.status == 200 and int(resp.getheader("Content-Length")) == layer["size"]
            got = 0
            try:  # read(amt) ends with b"" where the connection closed; read() would raise IncompleteRead
                while piece := resp.read(1 << 16):
                    got += len(piece)
            except http.client.IncompleteRead as e:
                got += len(e.partial)
            conn.close()
            deadline = time.monotonic() + 10
            while not any("stream broken" in line for line in p.lines()):
                assert time.monotonic() < deadline, p.lines()[-5:]
                time.sleep(0.02)
    finally:
        cutter.close()
    assert cutter.cuts == 1 and 0 < got < layer["size"]
