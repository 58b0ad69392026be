"""The renewal loop's schedule: 2/3 of the life with bounded jitter, and after failures a backoff that
doubles up to its cap, never beyond a quarter of the time left; it keeps trying until it succeeds."""

from __future__ import annotations

import datetime
import random
import re
import threading

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tpmtls.enroll.renewal import RenewalDaemon, RenewalTiming
from tpmtls.enroll.store import CertificateStore


def _cert(life: datetime.timedelta, start: datetime.datetime) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + life).sign(key, hashes.SHA256()))


def test_due_is_two_thirds_with_bounded_jitter():
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    cert = _cert(datetime.timedelta(hours=24), start)
    timing = RenewalTiming()
    assert timing.due(cert) == (start + datetime.timedelta(hours=16)).timestamp()
    rng = random.Random(7)
    dues = [timing.due(cert, rng) - start.timestamp() for _ in range(500)]
    assert min(dues) >= 24 * 3600 * (2 / 3 - 1 / 30) and max(dues) <= 24 * 3600 * (2 / 3 + 1 / 30)
    assert max(dues) - min(dues) > 24 * 3600 / 30  # spread, so a fleet enrolled together renews apart


def test_backoff_doubles_to_its_cap_and_respects_the_time_left():
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    cert = _cert(datetime.timedelta(hours=24), start)
    timing, rng = RenewalTiming(), random.Random(1)
    now = start.timestamp() + 16 * 3600
    waits = [timing.backoff(n, cert, now, rng) for n in range(1, 10)]
    for n, wait in enumerate(waits, 1):
        expected = min(30 * 2 ** (n - 1), 3600)
        assert 0.9 * expected <= wait <= 1.1 * expected, (n, wait)
    late = cert.not_valid_after_utc.timestamp() - 600  # ten minutes left: never wait past a quarter of them
    assert timing.backoff(9, cert, late, rng) <= 1.1 * 150


def test_the_loop_backs_off_then_renews(test_tpm, tmp_path):
    """A real failure (the store's CA key gone) three times, then the key is back: renewed."""
    store = CertificateStore(tmp_path / "store")
    store.ensure_client(test_tpm.tcti)
    first = x509.load_pem_x509_certificate(store.client_cert.read_bytes())
    key = store.ca_dir / "ca.key"
    hidden = tmp_path / "ca.key.away"
    key.rename(hidden)
    lines: list[str] = []
    failures = threading.Event()

    def log(line: str) -> None:
        lines.append(line)
        if sum("renewal failed" in x for x in lines) >= 3 and not failures.is_set():
            failures.set()
            hidden.rename(key)  # the operator restores it

    def renew() -> x509.Certificate:
        cert = store.renew_client()
        daemon.stop()  # one renewal is what this test needs
        return cert

    daemon = RenewalDaemon(store.client_cert, renew, log=log, rng=random.Random(3),
                           timing=RenewalTiming(fraction=0.0, jitter=0.0, backoff_min=0.05, backoff_max=0.2))
    runner = threading.Thread(target=daemon.serve, daemon=True)
    runner.start()
    runner.join(60)
    assert not runner.is_alive() and daemon.renewed == 1, lines
    waits = [float(m.group(1)) for x in lines if (m := re.search(r"trying again in (\S+) s", x))]
    assert len(waits) >= 3 and all("not a CA directory (ca.key missing" in x for x in lines if "failed" in x), lines
    assert lines[-1].startswith(f"{store.client_cert}: renewed, valid until ")
    second = x509.load_pem_x509_certificate(store.client_cert.read_bytes())
    assert second.serial_number != first.serial_number and second.public_key() == first.public_key()
