"""`tpmtls quickstart`: the main job end to end on the embedded default.

A software TPM behind tpm2-abrmd, a CA, a client key created inside the TPM with its
certificate, a local docker-registry that requires client certificates, a small image
built here, and the push a forked dockerd was once needed for, to
`server.domain.com:PORT/alpine` (with --resolve);
then the same push with a key the CA never signed, and with no client certificate,
must be refused; the image is pulled back and its digest checked. Everything started
is stopped. Exit 0 only if every step held.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, TextIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ._files import write_atomic
from .docker.files import install
from .errors import RegistryError, TpmtlsError
from .pki.ca import FileCA
from .pki.csr import build_csr
from .registry.progress import Progress
from .registry.pull import pull
from .registry.push import BlobCache, push
from .tpm import connect

STEPS = 9
HOST = "server.domain.com"


class _Steps:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.n = 0

    def run(self, title: str, fn: Callable[[], str]) -> None:
        self.n += 1
        print(f"[{self.n}/{STEPS}] {title}", file=self.out, flush=True)
        try:
            detail = fn()
        except TpmtlsError as e:
            print(f"[{self.n}/{STEPS}] FAILED: {e}", file=sys.stderr, flush=True)
            raise
        for line in detail.splitlines():
            print(f"      {line}", file=self.out, flush=True)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def run(workdir: Path | None = None, out: TextIO = sys.stdout) -> int:
    """Run every step; returns the exit code (0 only if every step held)."""
    from .lab import Registry, TestTpm, build_docker_archive

    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="tpmtls-quickstart-")) if own else Path(workdir)  # type: ignore[arg-type]
    work.mkdir(parents=True, exist_ok=True)
    steps = _Steps(out)
    print("tpmtls quickstart: push to an mTLS registry with a key that lives in a TPM", file=out, flush=True)
    state: dict[str, object] = {}
    try:
        with ExitStack() as stack:
            def tpm_up() -> str:
                t = stack.enter_context(TestTpm(work / "tpm"))
                state["tpm"] = t
                return f"swtpm + tpm2-abrmd on a private D-Bus: TCTI {t.tcti}"

            def ca_up() -> str:
                ca = FileCA.init(work / "ca", "tpmtls quickstart CA")
                state["ca"] = ca
                return f"CA 'tpmtls quickstart CA': {ca.cert_path}"

            def client_key() -> str:
                tpm = connect(state["tpm"].tcti)  # type: ignore[attr-defined]
                key = tpm.create_key("ecc-p256", work / "client.key")
                csr = build_csr(key, "CN=quickstart-client")
                cert = state["ca"].issue(csr)  # type: ignore[attr-defined]
                (work / "client.cert").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
                state["key"] = key
                return (f"ECC P-256 key created inside the TPM; {work / 'client.key'} holds it wrapped by the TPM\n"
                        "(the private key never exists in clear); CSR signed in the TPM; certificate CN=quickstart-client")

            def registry_up() -> str:
                ca = state["ca"]
                server_key = ec.generate_private_key(ec.SECP256R1())
                write_atomic(work / "registry.key", _pem_key(server_key), 0o600)
                cert = ca.issue(build_csr(server_key, f"CN={HOST}"), server=True,  # type: ignore[attr-defined]
                                sans=[f"DNS:{HOST},DNS:localhost,IP:127.0.0.1"])
                (work / "registry.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
                reg = stack.enter_context(Registry(work / "registry.crt", work / "registry.key",
                                                   ca.cert_path, work / "registry"))  # type: ignore[attr-defined]
                state["port"] = reg.port
                return f"docker-registry on 127.0.0.1:{reg.port}, TLS requiring client certificates from the CA"

            def certs_d() -> str:
                d = install(f"{HOST}:{state['port']}", str(work / "client.cert"), str(work / "client.key"),
                            str(state["ca"].cert_path), work / "certs.d")  # type: ignore[attr-defined]
                return (f"tpmtls certs install: {d}/ca.crt, client.cert, client.key (TSS2 PRIVATE KEY: the key is in "
                        "the TPM;\ntpmtls's certs.d, so stock docker's /etc/docker/certs.d stays usable)")

            def image() -> str:
                path = build_docker_archive(work / "alpine.tar", [
                    {"etc/motd": b"pushed with a TPM-resident key by tpmtls\n"},
                    {"hello": b"#!/bin/sh\necho hello from tpmtls\n"},
                ], repo_tag="alpine:latest")
                state["image"] = path
                return f"{path} (docker save format, 2 layers, built here: no network pulls)"

            def push_it() -> str:
                dest = f"{HOST}:{state['port']}/alpine"
                result = push(f"docker-archive:{state['image']}", dest, certs_root=work / "certs.d",
                              resolve={f"{HOST}:{state['port']}": "127.0.0.1"},
                              tcti=state["tpm"].tcti, progress=Progress(None),  # type: ignore[attr-defined]
                              cache=BlobCache(work / "cache.json"))
                state["digest"] = result.digest
                return (f"tpmtls-push docker-archive:{state['image']} {dest} --resolve {HOST}:{state['port']}:127.0.0.1\n"
                        f"{result.line()}")

            def refusals() -> str:
                lines: list[str] = []
                stranger = FileCA.init(work / "stranger-ca", "a CA the registry does not trust")
                soft = ec.generate_private_key(ec.SECP256R1())
                for label, cert_and_key in (
                    ("a software key the CA never signed", (stranger.issue(build_csr(soft, "CN=stranger")), soft)),
                    ("no client certificate", None),
                ):
                    d = work / f"refused-{len(lines)}"
                    d.mkdir()
                    shutil.copy(state["ca"].cert_path, d / "ca.crt")  # type: ignore[attr-defined]
                    if cert_and_key:
                        (d / "client.cert").write_bytes(cert_and_key[0].public_bytes(serialization.Encoding.PEM))
                        write_atomic(d / "client.key", _pem_key(cert_and_key[1]), 0o600)
                    try:
                        push(f"docker-archive:{state['image']}", f"{HOST}:{state['port']}/alpine", cert_dir=d,
                             resolve={f"{HOST}:{state['port']}": "127.0.0.1"}, progress=Progress(None),
                             cache=BlobCache(work / "cache-refused.json"))
                    except RegistryError as e:
                        if "refused our client certificate" not in str(e) and "none is configured" not in str(e):
                            raise
                        lines.append(f"{label}: refused: {e}")
                        continue
                    raise RegistryError(f"the registry accepted a push with {label}: it must not")
                return "\n".join(lines)

            def pull_back() -> str:
                result = pull(f"{HOST}:{state['port']}/alpine", f"oci:{work / 'pulled'}", certs_root=work / "certs.d",
                              resolve={f"{HOST}:{state['port']}": "127.0.0.1"},
                              tcti=state["tpm"].tcti, progress=Progress(None))  # type: ignore[attr-defined]
                if result.digest != state["digest"]:
                    raise RegistryError(f"pulled {result.digest}, pushed {state['digest']}")
                return f"tpmtls-pull to oci:{work / 'pulled'}: digest {result.digest} matches the push"

            steps.run("start a software TPM", tpm_up)
            steps.run("create a CA (the registry owner's)", ca_up)
            steps.run("create the client key in the TPM and get its certificate", client_key)
            steps.run(f"start a registry that requires client certificates, as {HOST}", registry_up)
            steps.run("install the client certificate (tpmtls's certs.d, Docker's names)", certs_d)
            steps.run("build a small image", image)
            steps.run("push it with the TPM key (Docker's names and certs.d; no forked dockerd)", push_it)
            steps.run("check the registry refuses everyone else", refusals)
            steps.run("pull it back and compare digests", pull_back)
        print("everything started was stopped; quickstart passed", file=out, flush=True)
        return 0
    except TpmtlsError:
        print("tpmtls quickstart: FAILED (everything started was stopped)", file=sys.stderr, flush=True)
        return 1
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
