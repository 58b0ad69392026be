"""Renewal that cannot be forgotten: an enrolled certificate and every installed copy renewed together, at 2/3
of its life, by a timer's `--if-due` run or by `--daemon`, through attestation again; a revoked key or a
machine that left the PCR policy is not renewed.

The server issues certificates that live 72 s (`--cert-hours 0.02`), so 2/3 of a life is 48 s.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

import tpmtls
from support.attest import EkCa, ek_machine
from support.commands import Cli, require
from support.enroll_server import ServerProcess
from support.registry import env_for, run_cli
from support.wait import wait_until
from tpmtls.enroll.renewal import RenewalTiming

LIFE_HOURS = "0.02"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require("swtpm", "swtpm_setup", "swtpm_localca", "tpm2-abrmd")
    tmp = tmp_path_factory.mktemp("renew")
    ek_ca = EkCa(tmp / "ekca")
    machine = ek_machine(tmp / "a", ek_ca)
    cli = Cli(machine.env, tmp)
    cli("ca", "init", str(tmp / "ca"), "--name", "fleet CA")
    cli("enroll", "policy", "--out", str(tmp / "policy.json"))
    server = ServerProcess(machine.env, tmp, "--ca", str(tmp / "ca"), "--ek-roots", str(ek_ca.bundle(tmp / "roots.pem")),
                           "--policy", str(tmp / "policy.json"), "--cert-hours", LIFE_HOURS)
    yield tmp, machine, cli, server
    rc = server.stop()
    machine.stop()
    assert rc == 0, server.log.read_text()


@pytest.fixture(scope="module")
def registry(world, pki, tmp_path_factory):
    """A registry that takes client certificates of the enrollment server's CA."""
    require("docker-registry")
    from tpmtls.lab import Registry

    tmp = world[0]
    with Registry(pki.server_cert, pki.server_key, tmp / "ca" / "ca.crt", tmp_path_factory.mktemp("registry")) as reg:
        yield f"localhost:{reg.port}"


def _enroll(world, tmp_path: Path, *extra: str, certs_d: Path | None = None) -> x509.Certificate:
    tmp, _, cli, server = world
    cli("enroll", "--acme", server.directory, "--cafile", str(tmp / "ca" / "ca.crt"), "--key-out",
        str(tmp_path / "client.key"), "--cert-out", str(tmp_path / "client.cert"), *extra,
        env={"TPMTLS_CERTS_D": str(certs_d)} if certs_d else None)
    return _cert(tmp_path / "client.cert")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def _wait_until(moment: float, what: str) -> None:
    """Wait for a moment of the clock (bounded: certificates here live 72 s)."""
    assert moment - time.time() < 120, what
    while time.time() < moment:
        time.sleep(min(0.5, max(moment - time.time(), 0.01)))


def _push(machine, small_image, host: str, certs_d: Path, tmp_path: Path, tag: str) -> subprocess.CompletedProcess[str]:
    return run_cli("push", f"docker-archive:{small_image}", f"{host}/renewed:{tag}",
                   env=env_for(machine, tmp_path, TPMTLS_CERTS_D=str(certs_d)))


def test_installed_copies_renewed_in_place_and_used_by_a_push(world, registry, pki, small_image, tmp_path):
    """Before: `--renew` left the certs.d copy `--install` wrote to expire, and every later push failed."""
    tmp, machine, cli, _ = world
    certs_d = tmp_path / "certs.d"
    first = _enroll(world, tmp_path, "--install", registry, certs_d=certs_d)
    shutil.copy(pki.ca_file, certs_d / registry / "ca.crt")  # the registry's own server CA
    cert_path = tmp_path / "docker-certs"  # a DOCKER_CERT_PATH laid out from the same certificate
    cli("certs", "env", "daemon.example:2376", "--cert-path", str(cert_path), "--cert", str(tmp_path / "client.cert"),
        "--key", str(tmp_path / "client.key"), "--ca", str(tmp / "ca" / "ca.crt"))
    record = json.loads((tmp_path / "client.cert.renew.json").read_text())
    assert record["source"]["kind"] == "acme" and record["source"]["directory"].endswith("/acme/directory")
    assert [(i["kind"], Path(i["directory"]).name) for i in record["installs"]] == [
        ("certs.d", registry), ("cert-path", "docker-certs")]

    out = cli("enroll", "--renew", "--cert-out", str(tmp_path / "client.cert"), "--if-due").stdout
    assert out.startswith(f"{tmp_path / 'client.cert'}: not due; renewal at "), out
    assert _cert(tmp_path / "client.cert").serial_number == first.serial_number

    _wait_until(RenewalTiming().due(first), "2/3 of the certificate's life")
    key_before = (tmp_path / "client.key").read_bytes()
    out = cli("enroll", "--renew", "--cert-out", str(tmp_path / "client.cert"), "--if-due").stdout
    assert out.startswith(f"renewed {tmp_path / 'client.cert'}: valid until "), out
    renewed = (tmp_path / "client.cert").read_bytes()
    second = _cert(tmp_path / "client.cert")
    assert second.serial_number != first.serial_number and second.public_key() == first.public_key()
    assert (tmp_path / "client.key").read_bytes() == key_before  # same key, re-attested
    for copy in (certs_d / registry / "client.cert", cert_path / "cert.pem"):
        assert copy.read_bytes() == renewed, copy
    assert (certs_d / registry / "client.key").read_bytes() == key_before
    assert (certs_d / registry / "ca.crt").read_bytes() == pki.ca_file.read_bytes()  # what else is there stays

    _wait_until(first.not_valid_after_utc.timestamp() + 1, "the first certificate's expiry")
    push = _push(machine, small_image, registry, certs_d, tmp_path, "in-place")
    assert push.returncode == 0, push.stderr  # the old certificate has expired: this push used the renewed copy


def test_daemon_renews_at_two_thirds_without_a_dropped_push(world, registry, pki, small_image, tmp_path):
    tmp, machine, _, _ = world
    certs_d = tmp_path / "certs.d"
    first = _enroll(world, tmp_path, "--install", registry, certs_d=certs_d)
    shutil.copy(pki.ca_file, certs_d / registry / "ca.crt")
    log = tmp_path / "daemon.log"
    daemon = subprocess.Popen([sys.executable, "-m", "tpmtls", "enroll", "--renew", "--cert-out",
                               str(tmp_path / "client.cert"), "--daemon"], env={**Cli(machine.env, tmp).env},
                              stdout=subprocess.DEVNULL, stderr=open(log, "wb"), start_new_session=True)
    results: list[int] = []
    stop = threading.Event()

    def keep_pushing() -> None:
        n = 0
        while not stop.is_set() and n < 400:  # bounded: a warm push takes ~0.2 s, the test ~2 min
            n += 1
            results.append(_push(machine, small_image, registry, certs_d, tmp_path, f"p{n}").returncode)
            stop.wait(0.5)

    pusher = threading.Thread(target=keep_pushing, daemon=True)
    pusher.start()
    try:
        wait_until(lambda: "renewed" in log.read_text() or daemon.poll() is not None, 120, "the daemon renewing")
        assert "renewed" in log.read_text(), log.read_text()
        _wait_until(first.not_valid_after_utc.timestamp() + 1, "the first certificate's expiry")
        pushed = len(results)
        # a push that started after the old certificate expired
        wait_until(lambda: len(results) > pushed + 1, 60, "a push after the first certificate expired")
    finally:
        stop.set()
        pusher.join(120)
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
    assert daemon.returncode == 0, log.read_text()
    assert len(results) >= 3 and all(rc == 0 for rc in results), results

    text = log.read_text()
    planned = re.search(r"next renewal (\S+ \S+) UTC", text)
    assert planned, text
    when = datetime.datetime.strptime(planned.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    start, life = first.not_valid_before_utc, first.not_valid_after_utc - first.not_valid_before_utc
    assert start + life * (2 / 3 - 1 / 30) - datetime.timedelta(seconds=1) <= when <= start + life * (2 / 3 + 1 / 30)
    second = _cert(tmp_path / "client.cert")
    assert second.serial_number != first.serial_number
    assert (certs_d / registry / "client.cert").read_bytes() == (tmp_path / "client.cert").read_bytes()
    assert "Traceback" not in text


def test_a_revoked_key_is_not_renewed(world, tmp_path):
    tmp, _, cli, server = world
    first = _enroll(world, tmp_path)
    out = cli("ca", "revoke", str(tmp / "ca"), "--cert", str(tmp_path / "client.cert"), "--reason",
              "keyCompromise").stdout
    assert "to refuse that machine new certificates too, add its EK to enroll-server's --ek-deny file: urn:ek:" in out
    line = cli.fails("enroll", "--renew", "--cert-out", str(tmp_path / "client.cert"))
    assert line == (f"tpmtls: {server.directory}: refused (unauthorized): this key's certificate "
                    f"{first.serial_number:x} was revoked (keyCompromise): enroll a new key"), line
    assert _cert(tmp_path / "client.cert").serial_number == first.serial_number


def test_a_machine_that_left_the_policy_is_not_renewed(world, tmp_path):
    """Renewal attests again: PCR 0 extended after the first certificate, and the renewal is refused.
    (Last in this module: the machine's PCR 0 stays extended.)"""
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
    from tpm2_pytss.types import TPML_DIGEST_VALUES, TPMT_HA

    tmp, machine, cli, server = world
    certs_d = tmp_path / "certs.d"
    first = _enroll(world, tmp_path, "--install", "registry.example:5000", certs_d=certs_d)
    copy = (certs_d / "registry.example:5000" / "client.cert").read_bytes()

    def extend(ctx):  # type: ignore[no-untyped-def]
        ha = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        ha.digest.sha256 = b"\x22" * 32
        ctx.esapi.pcr_extend(ESYS_TR.PCR0, TPML_DIGEST_VALUES([ha]))

    pool = tpmtls.Pool(machine.tcti)
    try:
        tpmtls.connect(pool=pool).pool.run("extend PCR 0", extend)
    finally:
        pool.close()
    line = cli.fails("enroll", "--renew", "--cert-out", str(tmp_path / "client.cert"))
    assert "refused (badAttestationStatement): PCR sha256:0 = " in line and "is not allowed by the policy" in line
    assert _cert(tmp_path / "client.cert").serial_number == first.serial_number
    assert (certs_d / "registry.example:5000" / "client.cert").read_bytes() == copy
