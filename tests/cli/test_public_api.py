"""The public surface: every error a public function raises is importable from tpmtls, signatures are typed."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import tpmtls
from tpmtls import errors


def test_every_error_class_is_exported():
    raised = {name for name, obj in vars(errors).items() if inspect.isclass(obj) and issubclass(obj, Exception)}
    assert raised <= set(tpmtls.__all__)
    for name in raised:
        assert issubclass(getattr(tpmtls, name), tpmtls.TpmtlsError)


def test_key_types_are_exported():
    assert issubclass(tpmtls.TpmRSAPrivateKey, tpmtls.TpmKey)
    assert issubclass(tpmtls.TpmECPrivateKey, tpmtls.TpmKey)


def test_push_and_pull_keep_their_typed_signatures():
    for fn in (tpmtls.push, tpmtls.pull):
        params = inspect.signature(fn).parameters
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), fn
        assert "cert_dir" in params and "tcti" in params


def test_docker_client_keeps_its_typed_signature():
    params = inspect.signature(tpmtls.docker_client).parameters
    assert list(params) == ["base_url", "cert_path", "tls_verify", "version", "timeout", "tcti", "password"]


def test_import_does_not_load_the_registry_client_or_docker_py():
    code = "import sys, tpmtls; print('tpmtls.registry.client' in sys.modules or 'docker' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.strip() == "False"


def test_every_exported_error_derives_from_tpmtls_error():
    errors_ = [name for name in tpmtls.__all__ if name.endswith("Error") or name in ("TpmBusy", "TpmLockout")]
    assert {"KeyLoadError", "TpmHandshakeError", "TpmSSLError", "CredentialsError", "OutputError"} <= set(errors_)
    for name in errors_:
        assert issubclass(getattr(tpmtls, name), tpmtls.TpmtlsError), name


@pytest.mark.parametrize("args", [["-c", "import tpmtls"], ["-m", "tpmtls.cli.push", "--help"],
                                  ["-m", "tpmtls.cli.pull", "--help"], ["-m", "tpmtls.cli.credential_helper", "version"]])
def test_start_up_loads_no_tpm_stack_before_it_is_needed(args):
    """tpm2-pytss, urllib3 and docker-py cost most of a command's start-up: `import tpmtls`, the
    push/pull help and the credential helper's version load none of them (docs/performance.md)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-500:]
    loaded = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not loaded & {"tpm2_pytss", "urllib3", "docker", "requests", "OpenSSL"}, loaded & {"tpm2_pytss", "urllib3"}
