"""`tpmtls doctor`: one line per finding, each with what to do; exit 1 on a failure; --format json
as docs/schemas/doctor.schema.json says. Each finding kind is produced here by the real thing:
the software TPM, the /dev/tpmrm0 stand-in, certificates in certs.d roots of the test's own,
Docker's config.json and the PATH."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.schemas import validated
from tpmtls.lab.process import child_env
from tpmtls.testing import free_port

DAY = datetime.timedelta(days=1)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Empty certs.d roots, Docker config and PATH of the test's own (nothing of the machine's)."""
    for d in ("tpmtls-certs.d", "docker-certs.d", "docker-config", "bin"):
        (tmp_path / d).mkdir()
    return {"TPMTLS_CERTS_D": str(tmp_path / "tpmtls-certs.d"), "DOCKER_CERTS_D": str(tmp_path / "docker-certs.d"),
            "DOCKER_CONFIG": str(tmp_path / "docker-config"), "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}


def doctor(cli, env: dict[str, str], *args: str, code: int | None = None) -> dict:
    proc = cli("doctor", "--format", "json", *args, check=False, env=env)
    report = validated(proc.stdout, "doctor")
    assert proc.returncode == (code if code is not None else (0 if report["ok"] else 1)), proc.stderr
    assert report["ok"] == (proc.returncode == 0)
    return report


def findings(report: dict, check: str) -> list[tuple[str, str]]:
    return [(f["status"], f["message"]) for f in report["findings"] if f["check"] == check]


def test_doctor_ok(cli, test_tpm, env):
    report = doctor(cli, env, code=0)
    assert findings(report, "tcti") == [("info", f"{test_tpm.tcti} (from $TPMTLS_TCTI)")]
    assert [s for s, _ in findings(report, "provider")] == ["ok", "ok"]
    (status, message), = findings(report, "tpm")
    assert status == "ok" and message.startswith("IBM")
    assert findings(report, "keys")[0][1].startswith("created an ECC P-256 key")
    assert report["pool"]["signatures"] >= 1 and report["versions"]["tpmtls"] == report["tpmtls"]
    # and as lines: one per finding, the status first
    text = cli("doctor", env=env).stdout.splitlines()
    assert text[0].startswith("tpmtls ") and text[-1].startswith("pool: ")
    assert any(line.startswith("ok       tpm: IBM") for line in text)



def test_provider_missing_from_cryptographys_openssl_fails_and_says_why(tmp_path):
    """A program that imported cryptography before tpmtls: the shim is in the system's OpenSSL only."""
    import subprocess
    import sys

    code = ("from cryptography.hazmat.backends.openssl import backend\n"
            "import json\nfrom tpmtls.doctor import tpm\n"
            "print(json.dumps([[f.status, f.message] for f in tpm.check_provider()]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=tmp_path,
                          timeout=120, check=True)
    (theirs, why), (system, _) = json.loads(proc.stdout)
    assert (theirs, system) == ("failed", "ok")
    assert why.endswith(": cryptography was imported before tpmtls: import tpmtls first")

def test_no_tpm_fails_in_one_line(cli, env):
    tcti = f"swtpm:host=127.0.0.1,port={free_port(2)}"
    line = cli.fails("doctor", "--tcti", tcti, env=env)
    assert line.startswith("tpmtls doctor: cannot reach the TPM") and tcti in line
    report = doctor(cli, env, "--tcti", tcti, code=1)
    assert findings(report, "tpm")[0][0] == "failed"


def test_no_ek_certificate_is_a_warning(cli, env):
    report = doctor(cli, env, code=0)  # the session TPM has none
    (status, message), = findings(report, "ek")
    assert status == "warning" and "'tpmtls enroll --acme' needs one" in message and "swtpm_setup --create-ek-cert" in message


def test_ek_certificate_found(cli, env, tmp_path):
    from tpmtls.lab.ekca import EkCa, ek_machine

    machine = ek_machine(tmp_path / "machine", EkCa(tmp_path / "ekca"))
    try:
        report = doctor(cli, {**env, **machine.env}, code=0)
    finally:
        machine.stop()
    (status, message), = findings(report, "ek")
    assert status == "ok" and "EK certificates: RSA 2048 from CN=swtpm-localca" in message
    assert "ECC P-384 (high range) from CN=swtpm-localca" in message



def test_nothing_set_up_yet_is_said_not_failed(cli, env):
    """A new machine: empty certs.d roots, no credential helper anywhere; each said, none failed."""
    report = doctor(cli, env, code=0)
    assert findings(report, "certs.d") == [
        ("info", f"{env['TPMTLS_CERTS_D']}: no registry directories (tpmtls certs install HOST[:PORT] …)"),
        ("info", f"{env['DOCKER_CERTS_D']}: no registry directories")]
    (status, message), = findings(report, "credentials")
    assert status == "info" and "docker-credential-tpmtls is not on the PATH and" in message
    assert "docs/credential-helper.md" in message


def test_ek_certificate_that_does_not_parse_is_a_warning(cli, env, tmp_path):
    """A TPM of the test's own whose ECC EK certificate index holds bytes that are no certificate."""
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV
    from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

    import tpmtls
    from tpmtls.testing import TestTpm

    garbage = b"not a certificate"

    def write(ctx):  # type: ignore[no-untyped-def]
        attrs = TPMA_NV.PPWRITE | TPMA_NV.PPREAD | TPMA_NV.OWNERREAD | TPMA_NV.AUTHREAD | TPMA_NV.NO_DA | TPMA_NV.PLATFORMCREATE
        public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(nvIndex=0x01C0000A, nameAlg=TPM2_ALG.SHA256, attributes=attrs,
                                                         dataSize=len(garbage)))
        nv = ctx.esapi.nv_define_space(b"", public, auth_handle=ESYS_TR.RH_PLATFORM)
        ctx.esapi.nv_write(nv, garbage, 0, auth_handle=ESYS_TR.RH_PLATFORM)

    with TestTpm(tmp_path / "tpm") as own:
        with tpmtls.Pool(own.tcti) as pool:
            tpmtls.connect(pool=pool).pool.run("write a broken EK certificate", write)
        report = doctor(cli, {**env, **own.env}, code=0)
    (status, message), = findings(report, "ek")
    assert status == "warning" and message.startswith("the ECC P-256 EK certificate in NV does not parse (")

# ---- the device: the /dev/tpmrm0 stand-in with the modes and owners a machine may have ----

def _device_report(cli, env, tmp_path, **device_options) -> dict:
    from support.device import require_device
    from tpmtls.lab.tpmrm import DeviceTpm

    require_device()
    with DeviceTpm(tmp_path / "device", **device_options) as device:
        return doctor(cli, {**env, "TPMTLS_TCTI": device.tcti})


def test_device_of_the_tss_group_is_ok(cli, env, tmp_path):
    import grp

    tss = grp.getgrnam("tss").gr_gid
    report = _device_report(cli, env, tmp_path, mode=0o660, owner=(0, tss))
    (status, message), = findings(report, "device")
    assert status == "ok" and "root:tss: members of tss may use it" in message
    assert findings(report, "group")[0][0] == "info"  # root: the mode does not stop it
    assert findings(report, "tpm")[0][0] == "ok"


def test_device_only_its_owner_may_use_is_a_warning_and_says_how(cli, env, tmp_path):
    report = _device_report(cli, env, tmp_path, mode=0o600, owner=(65534, 65534))
    (status, message), = findings(report, "device")
    assert status == "warning" and "only nobody may use it" in message and 'GROUP="tss", MODE="0660"' in message
    # the stand-in applies its mode to root too: root meets it as a user outside tss would
    (status, message), = findings(report, "tpm")
    assert status == "failed" and "permission denied: add the user to the tss group" in message


def test_device_every_user_may_use_is_a_warning(cli, env, tmp_path):
    report = _device_report(cli, env, tmp_path, mode=0o666, owner=(0, 0))
    (status, message), = findings(report, "device")
    assert status == "warning" and "every user may use the TPM; give it to the tss group only" in message


def test_missing_device_fails(cli, env, tmp_path):
    report = doctor(cli, {**env, "TPMTLS_TCTI": f"device:{tmp_path}/tpmrm0"}, code=1)
    (status, message), = findings(report, "device")
    assert status == "failed" and "no such device: this machine has no TPM" in message



def _group_findings_with_service_user(tmp_path: Path, env: dict[str, str], in_tss: bool) -> list[tuple[str, str]]:
    """Doctor's `group` findings on a machine where `make install` made the service user tpmtls, in
    tss or not: the accounts are files of the test's own, mounted over /etc/passwd and /etc/group
    in a private mount namespace (the machine's stay as they are); a file of the tss group stands in
    for the device (who may open it is what is checked)."""
    import grp
    import subprocess
    import sys

    from support.commands import require

    require("unshare")
    tss = grp.getgrnam("tss")
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    passwd.write_text(Path("/etc/passwd").read_text() + "tpmtls:x:64999:64999::/nonexistent:/usr/sbin/nologin\n")
    members = ",".join([*tss.gr_mem, "tpmtls"] if in_tss else [m for m in tss.gr_mem if m != "tpmtls"])
    group.write_text("".join(f"tss:x:{tss.gr_gid}:{members}\n" if line.startswith("tss:") else line
                             for line in Path("/etc/group").read_text().splitlines(keepends=True))
                     + "tpmtls:x:64999:\n")
    device = tmp_path / "tpmrm-standin"
    device.touch(mode=0o660)
    os.chown(device, 0, tss.gr_gid)
    mounted = 'mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && shift 2 && exec "$@"'
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", mounted, "sh", str(passwd),
                           str(group), sys.executable, "-m", "tpmtls", "doctor", "--format", "json", "--tcti",
                           f"device:{device}"], capture_output=True, text=True, env=child_env(env), cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr  # the stand-in is no TPM
    return findings(validated(proc.stdout, "doctor"), "group")


def test_service_user_in_tss_is_ok(env, tmp_path):
    said = _group_findings_with_service_user(tmp_path, env, in_tss=True)
    assert said[1:] == [("ok", "the service user tpmtls is in tss")]


def test_service_user_outside_tss_fails_and_says_how(env, tmp_path):
    said = _group_findings_with_service_user(tmp_path, env, in_tss=False)
    assert said[1:] == [("failed", "the service user tpmtls is not in tss: the proxy units cannot use the TPM; "
                                   "usermod -aG tss tpmtls")]

def test_udev_rule_found_or_missing(tmp_path):
    from tpmtls.doctor.tpm import _udev_rule

    assert _udev_rule((tmp_path,)).status == "warning"
    (tmp_path / "60-tpm-udev.rules").write_text('KERNEL=="tpmrm[0-9]*", TAG+="systemd", MODE="0660", GROUP="tss"\n')
    found = _udev_rule((tmp_path,))
    assert (found.status, found.subject) == ("ok", str(tmp_path / "60-tpm-udev.rules"))


# ---- certs.d: both roots, as Docker reads them ----

def _cert(pki, public_key, cn: str, start: datetime.datetime, end: datetime.datetime) -> bytes:
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(pki.cert.subject).public_key(public_key).serial_number(x509.random_serial_number())
         .not_valid_before(start).not_valid_after(end)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    return b.sign(pki.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def certs_report(tmp_path_factory, tpm_client, pki, test_tpm):
    """One doctor run over roots holding every case, one directory each."""
    from support.commands import Cli

    tmp = tmp_path_factory.mktemp("doctor-certs")
    ours, docker = tmp / "tpmtls-certs.d", tmp / "docker-certs.d"
    cert, key = tpm_client["ecc-p256"]
    tpm_public = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()

    def host(root: Path, name: str, files: dict[str, bytes]) -> None:
        (root / name).mkdir(parents=True)
        for f, data in files.items():
            (root / name / f).write_bytes(data)

    ca = pki.ca_file.read_bytes()
    now = datetime.datetime.now(datetime.timezone.utc)  # the dates' origin, taken just before doctor runs
    host(ours, "good:5000", {"ca.crt": ca, "client.cert": cert.read_bytes(), "client.key": key.read_bytes()})
    host(ours, "expired:5000", {"client.cert": _cert(pki, tpm_public, "c", now - 30 * DAY, now - DAY),
                                "client.key": key.read_bytes()})
    host(ours, "renew-soon:5000", {"client.cert": _cert(pki, tpm_public, "c", now - 25 * DAY, now + 5 * DAY),
                                   "client.key": key.read_bytes()})
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    host(ours, "mismatch:5000", {"client.cert": _cert(pki, other, "c", now - DAY, now + 30 * DAY),
                                 "client.key": key.read_bytes()})
    host(ours, "no-key:5000", {"client.cert": cert.read_bytes()})
    host(ours, "bad-ca:5000", {"ca.crt": b"not a certificate\n"})
    host(ours, "future:5000", {"client.cert": _cert(pki, tpm_public, "c", now + 3 * DAY, now + 30 * DAY),
                               "client.key": key.read_bytes()})
    host(docker, "misplaced:5000", {"client.cert": cert.read_bytes(), "client.key": key.read_bytes()})
    (tmp / "config").mkdir()
    env = {"TPMTLS_CERTS_D": str(ours), "DOCKER_CERTS_D": str(docker), "DOCKER_CONFIG": str(tmp / "config"),
           "PATH": "/usr/bin:/bin"}
    proc = Cli(test_tpm.env, tmp)("doctor", "--format", "json", check=False, env=env)
    assert proc.returncode == 1
    return validated(proc.stdout, "doctor"), ours, docker


def _about(report_and_roots, root_index: int, name: str) -> list[tuple[str, str]]:
    report, *roots = report_and_roots
    where = str(roots[root_index] / name)
    return [(f["status"], f["message"]) for f in report["findings"] if f["check"] == "certs.d" and f["subject"] == where]


def test_certs_d_entry_ok(certs_report):
    (status, message), = _about(certs_report, 0, "good:5000")
    assert status == "ok"
    assert "client.cert + client.key (TPM key), issued by ca.crt, valid until" in message and "CAs: ca.crt" in message


def test_certs_d_expired_certificate_fails(certs_report):
    (status, message), = _about(certs_report, 0, "expired:5000")
    assert status == "failed" and "client.cert expired on" in message and "renew it" in message


def test_certs_d_certificate_near_its_end_is_a_warning(certs_report):
    (status, message), = _about(certs_report, 0, "renew-soon:5000")
    assert status == "warning" and "less than a third of its life" in message and "(17% of its life left)" in message


def test_certs_d_certificate_of_another_key_fails(certs_report):
    (status, message), = _about(certs_report, 0, "mismatch:5000")
    assert status == "failed" and "client.cert does not belong to client.key" in message


def test_certs_d_certificate_without_its_key_fails(certs_report):
    (status, message), = _about(certs_report, 0, "no-key:5000")
    assert status == "failed" and "client certificate without its key client.key" in message


def test_certs_d_unreadable_ca_fails(certs_report):
    (status, message), = _about(certs_report, 0, "bad-ca:5000")
    assert status == "failed" and "ca.crt: not a PEM certificate" in message


def test_certs_d_tpm_key_in_dockers_root_fails_and_says_where_to_move_it(certs_report):
    _, ours, docker = certs_report
    (status, message), = _about(certs_report, 1, "misplaced:5000")
    assert status == "failed" and "a TPM key in Docker's certs.d" in message and "'tls: failed to parse private key'" in message
    assert f"mkdir -p {ours / 'misplaced:5000'} && mv {docker / 'misplaced:5000' / 'client.cert'}" in message


def test_certificate_not_yet_valid_fails_and_so_does_the_clock(certs_report):
    report, *_ = certs_report
    (status, message), = _about(certs_report, 0, "future:5000")
    assert status == "failed" and "is not valid before" in message and "is the clock right?" in message
    (status, message), = findings(report, "clock")
    assert status == "failed" and "client.cert" in message and "set the time" in message


def test_clock_after_every_certificate_is_fine(cli, env):
    (status, message), = findings(doctor(cli, env, code=0), "clock")
    assert status in ("ok", "info") and "after every certificate's start" in message


# ---- Docker's credential helper: on the PATH, named in config.json ----

def _config(env: dict[str, str], doc: dict) -> None:
    (Path(env["DOCKER_CONFIG"]) / "config.json").write_text(json.dumps(doc))


def _helper_on_path(env: dict[str, str]) -> Path:
    import shutil
    import sys

    target = Path(env["PATH"].split(":")[0]) / "docker-credential-tpmtls"
    found = shutil.which("docker-credential-tpmtls", path=str(Path(sys.executable).parent))
    assert found, "the venv's docker-credential-tpmtls"
    os.symlink(found, target)
    return target


def test_credential_helper_configured_but_not_on_path_fails(cli, env):
    _config(env, {"credsStore": "tpmtls"})
    report = doctor(cli, env, code=1)
    (status, message), = findings(report, "credentials")
    assert status == "failed" and "is not on the PATH: docker login fails" in message and "/usr/local/bin" in message


def test_credential_helper_configured_and_on_path(cli, env):
    _config(env, {"credHelpers": {"registry.example:5000": "tpmtls"}})
    target = _helper_on_path(env)
    (status, message), = findings(doctor(cli, env, code=0), "credentials")
    assert status == "ok" and str(target) in message and "credHelpers for registry.example:5000" in message


def test_credential_helper_on_path_not_configured_says_how(cli, env):
    _helper_on_path(env)
    (status, message), = findings(doctor(cli, env, code=0), "credentials")
    assert status == "info" and '"credsStore": "tpmtls"' in message


def test_unreadable_docker_config_is_a_warning(cli, env):
    (Path(env["DOCKER_CONFIG"]) / "config.json").write_text("{not json")
    (status, message), = findings(doctor(cli, env, code=0), "credentials")
    assert status == "warning" and "cannot read Docker's config" in message


def test_a_docker_config_without_end_is_read_bounded(cli, env):
    (Path(env["DOCKER_CONFIG"]) / "config.json").symlink_to("/dev/zero")
    (status, message), = findings(doctor(cli, env, code=0), "credentials")
    assert status == "warning" and "cannot read Docker's config (larger than 16 MiB)" in message, message
