"""Doctor's look at the libraries and the TPM: versions, the shim in both OpenSSLs, the TCTI,
the device's permissions (the tss group, a udev rule), the TPM itself, and its EK certificate."""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .._version import __version__
from ..errors import TpmtlsError
from .findings import FAILED, INFO, OK, WARNING, Finding

# Where udev rules live (udev(7)); Debian's tpm-udev installs 60-tpm-udev.rules in the second.
UDEV_RULES_DIRS = (Path("/etc/udev/rules.d"), Path("/lib/udev/rules.d"), Path("/usr/lib/udev/rules.d"))
TSS_GROUP = "tss"
SERVICE_USER = "tpmtls"  # what the units run as (make install creates it)


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """The versions in play, the OpenSSLs included."""
    import ssl

    from cryptography.hazmat.backends.openssl import backend

    return {"tpmtls": __version__, "python": "%d.%d.%d" % sys.version_info[:3],
            "tpm2-pytss": _version("tpm2-pytss"), "cryptography": _version("cryptography"),
            "cryptography-openssl": backend.openssl_version_text(), "pyOpenSSL": _version("pyOpenSSL"),
            "ssl-openssl": ssl.OPENSSL_VERSION}


def check_provider() -> list[Finding]:
    """Is the shim loaded in cryptography's OpenSSL (pyOpenSSL) and the system's (ssl, requests, docker-py)?"""
    import ssl

    from cryptography.hazmat.backends.openssl import backend

    from ..provider import in_cryptography, load_into_system_ssl, not_loaded_why, state

    if state.problem:
        return [Finding("provider", FAILED, "shim", state.problem)]
    found = []
    ours = backend.openssl_version_text()
    if in_cryptography():
        found.append(Finding("provider", OK, ours, f"loaded in cryptography's {ours}: pyOpenSSL can use TPM keys"))
    else:
        why = ("cryptography was imported before tpmtls: import tpmtls first" if state.cryptography_first
               else not_loaded_why())
        found.append(Finding("provider", FAILED, ours, f"not in cryptography's {ours}: {why}"))
    try:
        load_into_system_ssl()
        found.append(Finding("provider", OK, ssl.OPENSSL_VERSION,
                             f"loaded in the system's {ssl.OPENSSL_VERSION}: ssl, requests and docker-py can use TPM keys"))
    except TpmtlsError as e:
        found.append(Finding("provider", FAILED, ssl.OPENSSL_VERSION, f"not in the system's {ssl.OPENSSL_VERSION}: {e}"))
    return found


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_device(path: str, rules_dirs: tuple[Path, ...] = UDEV_RULES_DIRS) -> list[Finding]:
    """Who may use the TPM device: its mode and group, this user's groups, the service user, udev."""
    try:
        st = os.stat(path)
    except OSError as e:
        from ..tpm.transport import open_failure

        return [Finding("device", FAILED, path, open_failure(path, e, direct=False))]
    mode, owner, group = stat.S_IMODE(st.st_mode), _user_name(st.st_uid), _group_name(st.st_gid)
    shown = f"{stat.filemode(st.st_mode)} {owner}:{group}"
    found = []
    if mode & 0o006:
        found.append(Finding("device", WARNING, path,
                             f"{path} is {shown}: every user may use the TPM; give it to the {TSS_GROUP} group only "
                             f'(udev: KERNEL=="tpmrm[0-9]*", GROUP="{TSS_GROUP}", MODE="0660"; Debian: tpm-udev)'))
    elif group == TSS_GROUP and mode & 0o060 == 0o060:
        found.append(Finding("device", OK, path, f"{path} is {shown}: members of {TSS_GROUP} may use it"))
    else:
        found.append(Finding("device", WARNING, path,
                             f"{path} is {shown}: only {owner} may use it; give it to the {TSS_GROUP} group with a "
                             f'udev rule (KERNEL=="tpmrm[0-9]*", GROUP="{TSS_GROUP}", MODE="0660"; Debian: tpm-udev)'))
    found.append(_this_user(path, st, group))
    service = _service_user()
    if service is not None:
        found.append(service)
    if path.startswith("/dev/"):
        found.append(_udev_rule(rules_dirs))
    return found


def _this_user(path: str, st: os.stat_result, group: str) -> Finding:
    user = _user_name(os.getuid())
    if os.getuid() == 0:
        return Finding("group", INFO, user, "running as root, whom the device's mode does not stop; "
                       f"other users need the {TSS_GROUP} group")
    if st.st_gid in os.getgroups() or st.st_uid == os.getuid():
        return Finding("group", OK, user, f"{user} may use {path} (owner or member of {group})")
    return Finding("group", FAILED, user, f"{user} is not in the {group} group, so cannot use {path}: "
                   f"sudo usermod -aG {group} {user}, then log in again")


def _service_user() -> Finding | None:
    """The user the units run as, when `make install` made it: it must be in tss."""
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    try:
        members = grp.getgrnam(TSS_GROUP).gr_mem
    except KeyError:
        members = []
    if SERVICE_USER in members:
        return Finding("group", OK, SERVICE_USER, f"the service user {SERVICE_USER} is in {TSS_GROUP}")
    return Finding("group", FAILED, SERVICE_USER, f"the service user {SERVICE_USER} is not in {TSS_GROUP}: the proxy "
                   f"units cannot use the TPM; usermod -aG {TSS_GROUP} {SERVICE_USER}")


_RULE = re.compile(r'KERNEL=="tpmrm\[?[^"]*".*GROUP="tss"')


def _udev_rule(rules_dirs: tuple[Path, ...]) -> Finding:
    for d in rules_dirs:
        for rules in sorted(d.glob("*.rules")) if d.is_dir() else []:
            try:
                if any(_RULE.search(line) for line in rules.read_text(errors="replace").splitlines()
                       if not line.lstrip().startswith("#")):
                    return Finding("udev", OK, str(rules), f"{rules} gives /dev/tpmrm* to the {TSS_GROUP} group")
            except OSError:
                continue
    return Finding("udev", WARNING, " ".join(map(str, rules_dirs)),
                   f"no udev rule gives /dev/tpmrm* to the {TSS_GROUP} group: install tpm-udev (Debian), or write "
                   f'KERNEL=="tpmrm[0-9]*", GROUP="{TSS_GROUP}", MODE="0660" into /etc/udev/rules.d/60-tpm.rules')


def check_tpm(tcti: str | None) -> tuple[list[Finding], dict[str, int]]:
    """The TCTI and where it came from; the device (for device TCTIs); the TPM; a key; the EK certificate."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from ..tpm import connect
    from ..tpm.tcti import device_path, resolve_tcti, tcti_source

    resolved = resolve_tcti(tcti)
    found = [Finding("tcti", INFO, resolved, f"{resolved} (from {tcti_source(tcti)})")]
    if resolved.partition(":")[0] == "device":
        found += check_device(device_path(resolved))
    tpm = connect(tcti)
    try:
        info = tpm.info()
        algs = ", ".join(a for a, ok in (("ECC", info.has_ecc), ("RSA", info.has_rsa)) if ok)
        found.append(Finding("tpm", OK, resolved, f"{info.manufacturer} '{info.vendor}', firmware {info.firmware}, "
                             f"TPM {info.spec}; {algs}"))
        t0 = time.perf_counter()
        key = tpm.create_key("ecc-p256")
        created = time.perf_counter() - t0
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        t0 = time.perf_counter()
        sig = key.sign(b"tpmtls doctor", ec.ECDSA(hashes.SHA256()))
        signed = time.perf_counter() - t0
        key.public_key().verify(sig, b"tpmtls doctor", ec.ECDSA(hashes.SHA256()))
        found.append(Finding("keys", OK, resolved, f"created an ECC P-256 key in {created * 1000:.1f} ms, "
                             f"signed and verified in {signed * 1000:.1f} ms"))
        found.append(_ek_certificate(tpm))
    except TpmtlsError as e:
        found.append(Finding("tpm", FAILED, resolved, str(e)))
    s = tpm.pool.stats()
    pool = {"size": s.size, "contexts_open": s.contexts_open, "signatures": s.signatures, "errors": s.errors,
            "rebuilds": s.rebuilds}
    return found, pool


def _ek_certificate(tpm: object) -> Finding:
    from ..tpm.attest import EK_CERT_INDICES, ek_certificates

    certs = ek_certificates(tpm)  # type: ignore[arg-type]
    if not certs:
        where = ", ".join(f"0x{i:08x}" for i in EK_CERT_INDICES.values())
        return Finding("ek", WARNING, getattr(tpm, "tcti", ""),
                       f"no EK certificate in NV ({where}): 'tpmtls enroll --acme' needs one (a TPM maker provisions "
                       "it; for swtpm: swtpm_setup --create-ek-cert); pairing and key transfer do not")
    from cryptography import x509

    from ..enroll.attest_verify import ek_certificate_from_nv

    described = []
    for kind, raw in certs.items():
        try:
            cert: x509.Certificate = ek_certificate_from_nv(raw, f"the {kind} EK certificate")
        except Exception as e:  # noqa: BLE001 - whatever is wrong with it, say so in the finding
            return Finding("ek", WARNING, kind, f"the {kind} EK certificate in NV does not parse ({e})")
        described.append(f"{kind} from {cert.issuer.rfc4514_string() or 'an unnamed issuer'}, "
                         f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")
    return Finding("ek", OK, ", ".join(certs), "EK certificates: " + "; ".join(described))
