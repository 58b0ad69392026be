"""Renewal that cannot be forgotten: what a certificate was enrolled with and where it was installed,
and a loop that renews it at two thirds of its life.

Beside every certificate tpmtls enrolls (or installs) lies a *renewal record*,
`<certificate>.renew.json` (docs/formats.md, "The renewal record"): its key file, how to get
a new one (the ACME directory, its CA file, the identifier) and every place a copy was
installed (certs.d directories, DOCKER_CERT_PATH directories; each such directory holds a
`.tpmtls-renewal` pointer back to the record). A renewal writes the new certificate, then
every copy, each directory swapped whole when its key changes too (`_files.replace_together`).

When: at 2/3 of the lifetime, jittered by ±1/30 of it so a fleet enrolled together does not
renew together, and after a failure again with exponential backoff, never waiting past a
quarter of the time left. `RenewalDaemon` is `tpmtls enroll --renew --daemon`; a systemd timer
runs `tpmtls enroll --renew --if-due` instead (helpers/tpmtls-renew@.timer).
"""

from __future__ import annotations

import datetime
import json
import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cryptography import x509

from .._files import read_json, replace_together, write_atomic
from ..errors import TpmtlsError, UsageError

RECORD_SUFFIX = ".renew.json"
POINTER = ".tpmtls-renewal"
_FORMAT = "tpmtls renewal"
#: Docker's file names per kind of install directory: (certificate, key).
INSTALL_NAMES = {"certs.d": ("client.cert", "client.key"), "cert-path": ("cert.pem", "key.pem")}


@dataclass
class Install:
    """One directory the certificate and its key were copied to, under Docker's names for its kind."""

    kind: str  # "certs.d" (a registry's directory) | "cert-path" (a DOCKER_CERT_PATH)
    directory: Path

    @property
    def names(self) -> tuple[str, str]:
        return INSTALL_NAMES[self.kind]


@dataclass
class RenewalRecord:
    """`<certificate>.renew.json`: the key, how to renew, and where copies live."""

    cert: Path
    key: Path
    source: dict[str, Any] = field(default_factory=lambda: {"kind": "none"})  # "acme", or "none": installed only
    installs: list[Install] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return record_path(self.cert)

    @classmethod
    def load(cls, cert: str | os.PathLike[str]) -> "RenewalRecord | None":
        """The record beside `cert`, None if it has none."""
        path = record_path(Path(cert))
        try:
            doc = read_json(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: not a renewal record ({e}); move it away to write a new one") from None
        try:
            if doc["format"] != _FORMAT or doc["version"] != 1:
                raise ValueError(f"{doc['format']!r} version {doc['version']}")
            installs = [Install(i["kind"], Path(i["directory"])) for i in doc["installs"]]
            if any(i.kind not in INSTALL_NAMES for i in installs) or not isinstance(doc["source"], dict):
                raise ValueError("unknown install kind or source")
            return cls(Path(doc["certificate"]), Path(doc["key"]), dict(doc["source"]), installs)
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{path}: damaged renewal record ({e}); move it away to write a new one") from None

    @classmethod
    def for_files(cls, cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> "RenewalRecord":
        """The record beside `cert` (its key updated to `key`), or a new one."""
        record = cls.load(cert)
        if record is None:
            return cls(Path(cert).absolute(), Path(key).absolute())
        record.key = Path(key).absolute()
        return record

    def save(self) -> Path:
        doc = {"format": _FORMAT, "version": 1, "certificate": str(self.cert.absolute()), "key": str(self.key.absolute()),
               "source": self.source,
               "installs": [{"kind": i.kind, "directory": str(i.directory.absolute())} for i in self.installs]}
        return write_atomic(self.path, (json.dumps(doc, indent=1) + "\n").encode(), 0o644)

    def install(self, kind: str, directory: str | os.PathLike[str], extra: dict[str, tuple[bytes, int]] | None = None) -> Path:
        """Copy certificate and key into `directory` (Docker's names for `kind`), with `extra` files (a CA), all
        at once; remember the directory, and leave it a pointer back here."""
        target = Path(directory).absolute()
        self._put(Install(kind, target), extra or {})
        if all(i.directory != target for i in self.installs):
            self.installs.append(Install(kind, target))
        self.save()
        return target

    def refresh(self, log: Callable[[str], None] | None = None) -> list[Path]:
        """Bring every installed copy up to date with the certificate and key; the directories refreshed."""
        done = []
        for inst in self.installs:
            if not inst.directory.is_dir():
                if log is not None:
                    log(f"warning: {inst.directory} is gone; its copy of {self.cert} was not renewed")
                continue
            self._put(inst, {})
            done.append(inst.directory)
        return done

    def _put(self, inst: Install, extra: dict[str, tuple[bytes, int]]) -> None:
        cert_name, key_name = inst.names
        files = {**extra,
                 cert_name: (_read(self.cert, "certificate"), _mode(inst.directory / cert_name, 0o644)),
                 key_name: (_read(self.key, "key"), _mode(inst.directory / key_name, 0o600)),
                 POINTER: (f"{self.path.absolute()}\n".encode(), 0o644)}
        replace_together(inst.directory, files)

    def command(self) -> str:
        """The command that renews this certificate by hand."""
        if self.source.get("kind") == "acme":
            return f"tpmtls enroll --renew --cert-out {self.cert}"
        return f"tpmtls enroll --acme URL --renew --key-out {self.key} --cert-out {self.cert}"


def record_path(cert: Path) -> Path:
    return cert.with_name(cert.name + RECORD_SUFFIX)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UsageError(f"{path}: cannot read the {what} to install: {e.strerror}") from None


def _mode(path: Path, default: int) -> int:
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return default


def find_record(cert_file: str | os.PathLike[str]) -> RenewalRecord | None:
    """The record of a certificate, or of an installed copy of one (through its directory's pointer)."""
    path = Path(cert_file)
    try:
        record = RenewalRecord.load(path)
        if record is not None:
            return record
        pointer = (path.parent / POINTER).read_text().strip()
    except (OSError, UsageError):
        return None
    if not pointer.endswith(RECORD_SUFFIX):
        return None
    try:
        return RenewalRecord.load(pointer[: -len(RECORD_SUFFIX)])
    except UsageError:
        return None


def renewal_command(cert_file: str | os.PathLike[str]) -> str:
    """What to run to renew the certificate at `cert_file` (an original or a copy), as exactly as known."""
    record = find_record(cert_file)
    if record is not None:
        return record.command()
    path = Path(cert_file).absolute()
    for store in (path.parent, path.parent.parent.parent):  # a pairing store's client.crt, servers/HOST:PORT/cert.pem
        if (store / "client.crt").is_file() and (store / "ca" / "ca.crt").is_file() and \
                (path == store / "client.crt" or path.parent.parent == store / "servers"):
            return f"tpmtls enroll --renew --store {store}"
    return "tpmtls enroll --renew (with the options it was enrolled with)"


# --- when ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenewalTiming:
    """When to renew: at `fraction` of the lifetime, ± `jitter` of it; after failures, backoff."""

    fraction: float = 2 / 3
    jitter: float = 1 / 30
    backoff_min: float = 30.0
    backoff_max: float = 3600.0

    def due(self, cert: x509.Certificate, rng: random.Random | None = None) -> float:
        """The time (epoch seconds) to renew `cert`: jittered if `rng` is given."""
        start, end = cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp()
        life = max(end - start, 0.0)
        spread = rng.uniform(-self.jitter, self.jitter) if rng is not None else 0.0
        return start + life * min(max(self.fraction + spread, 0.0), 1.0)

    def backoff(self, failures: int, cert: x509.Certificate | None, now: float, rng: random.Random) -> float:
        """Seconds to wait after the `failures`-th failure in a row: doubling from `backoff_min` up to
        `backoff_max`, at most a quarter of the time the certificate has left, ±10 %."""
        wait = min(self.backoff_min * 2 ** max(failures - 1, 0), self.backoff_max)
        if cert is not None:
            left = cert.not_valid_after_utc.timestamp() - now
            if left > 0:
                wait = min(wait, max(left / 4, self.backoff_min))
        return wait * rng.uniform(0.9, 1.1)


def load_certificate(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (OSError, ValueError):
        return None


# --- the loop ----------------------------------------------------------------------------------


class RenewalDaemon:
    """Renew one certificate for as long as it runs: at its due time, again after each renewal, with
    backoff after failures. `renew()` does one renewal (and the refresh of its copies)."""

    def __init__(self, cert: Path, renew: Callable[[], x509.Certificate], *, timing: RenewalTiming | None = None,
                 log: Callable[[str], None] = print, clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.cert = cert
        self.renew = renew
        self.timing = timing or RenewalTiming()
        self.log = log
        self.clock = clock
        self.rng = rng or random.Random()
        self._stop = threading.Event()
        self.renewed = 0
        self.failures = 0

    def stop(self) -> None:
        self._stop.set()

    def _sleep_until(self, when: float) -> None:
        while not self._stop.is_set():
            left = when - self.clock()
            if left <= 0:
                return
            self._stop.wait(min(left, 60.0))  # re-read the clock now and then (suspend, clock changes)

    def serve(self) -> None:
        """Until `stop()`."""
        due: float | None = None
        while not self._stop.is_set():
            current = load_certificate(self.cert)
            if due is None:
                due = self.timing.due(current, self.rng) if current is not None else self.clock()
                when = datetime.datetime.fromtimestamp(due, datetime.timezone.utc)
                self.log(f"{self.cert}: next renewal {when:%Y-%m-%d %H:%M:%S} UTC")
            self._sleep_until(due)
            if self._stop.is_set():
                return
            try:
                new = self.renew()
            except TpmtlsError as e:
                self.failures += 1
                wait = self.timing.backoff(self.failures, current, self.clock(), self.rng)
                due = self.clock() + wait
                self.log(f"{self.cert}: renewal failed ({e}); trying again in {wait:.1f} s")
                continue
            self.failures = 0
            self.renewed += 1
            due = None
            self.log(f"{self.cert}: renewed, valid until {new.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")


__all__ = ["INSTALL_NAMES", "POINTER", "RECORD_SUFFIX", "Install", "RenewalDaemon", "RenewalRecord", "RenewalTiming",
           "find_record", "load_certificate", "record_path", "renewal_command"]
