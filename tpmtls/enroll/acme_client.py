"""ACME client for device-attest-01 (format `tpm`), on certbot's `acme` library.

`enroll()`: AK certificate from the Attestation CA, a fresh TLS key in the TPM (or the
same key again with `renew`), TPM2_Certify of it by the AK over SHA-256(keyAuthorization),
the CBOR attObj as the challenge answer, finalize with a CSR the key signs, and the
certificate chain written next to the key file (atomically, only after success).
"""

from __future__ import annotations

import datetime
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import josepy as jose
import requests
from acme import challenges, messages
from acme import client as acme_client
from acme import errors as acme_errors
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .._files import check_writable, write_atomic
from ..errors import TpmtlsError
from ..pki.csr import build_csr
from ..tpm import attest
from ..tpm.device import Tpm
from ..tpm.keys import AnyTpmKey
from .acme_attobj import encode_att_obj
from .attest_errors import ACME_ERROR_PREFIX, EnrollError
from .attestation import AkCredential, obtain_ak_certificate, pcr_quote, tls_problem

PERMANENT_IDENTIFIER = messages.IdentifierType("permanent-identifier")
DEADLINE = 90.0


@challenges.ChallengeResponse.register
class DeviceAttest01Response(challenges.ChallengeResponse):
    """draft-ietf-acme-device-attest: the answer is {"attObj": base64url(CBOR attestation object)}."""

    typ = "device-attest-01"
    att_obj: str = jose.field("attObj")


@challenges.Challenge.register
class DeviceAttest01(challenges.KeyAuthorizationChallenge):
    """The device-attest-01 challenge: its keyAuthorization is token.thumbprint, like http-01's."""

    typ = "device-attest-01"
    response_cls = challenges.KeyAuthorizationChallengeResponse

    def validation(self, account_key: jose.JWK, **unused: Any) -> str:
        return self.key_authorization(account_key)


@dataclass
class EnrollOptions:
    """What `tpmtls enroll --acme` takes; `identifier` 'ek' means the EK's urn:ek:sha256 identifier."""

    directory_url: str
    identifier: str = "ek"
    cafile: str | None = None
    attestation_ca: str | None = None
    key_out: Path = Path("client.key")
    cert_out: Path = Path("client.cert")
    install: str | None = None
    renew: bool = False
    alg: str = "ecc-p256"
    ek: str = "rsa"
    overwrite: bool = False
    certs_root: Path | None = None


@dataclass
class EnrollResult:
    """Where the key and certificate went, and where the time went (TPM vs everything else)."""

    key: AnyTpmKey
    certificate: x509.Certificate
    key_path: Path
    cert_path: Path
    identifier: str
    installed: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _problem(e: Exception, url: str) -> EnrollError:
    """An ACME error or transport failure as one line naming the server and its reason."""
    if isinstance(e, messages.Error):
        kind = (e.typ or "").removeprefix(ACME_ERROR_PREFIX)
        return EnrollError(f"{url}: refused ({kind}): {e.detail}")
    if isinstance(e, acme_errors.ValidationError):
        details = [str(ch.error.detail) for a in e.failed_authzrs for ch in a.body.challenges if ch.error]
        return EnrollError(f"{url}: challenge failed: {'; '.join(details) or 'no reason given'}")
    if isinstance(e, requests.exceptions.SSLError):
        return tls_problem(url, e)
    if isinstance(e, requests.exceptions.RequestException):
        return EnrollError(f"{url}: cannot reach the ACME server ({type(e).__name__})")
    return EnrollError(f"{url}: ACME exchange failed: {e}")


class Enroller:
    """One enrollment; each step is a method so a fleet tool (or a test playing a rogue client) can vary one."""

    def __init__(self, tpm: Tpm, options: EnrollOptions) -> None:
        self.tpm = tpm
        self.o = options
        self.timings: dict[str, float] = {"tpm": 0.0}
        self.verify: str | bool = options.cafile if options.cafile else True

    def _tpm(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings["tpm"] += time.perf_counter() - start

    # -- steps ---------------------------------------------------------------------
    def attestation_url(self) -> str:
        if self.o.attestation_ca:
            return self.o.attestation_ca.rstrip("/")
        parts = urlsplit(self.o.directory_url)
        return f"{parts.scheme}://{parts.netloc}"

    def ak_credential(self) -> AkCredential:
        session = requests.Session()
        session.verify = self.verify  # type: ignore[assignment]
        start = time.perf_counter()
        try:
            return obtain_ak_certificate(self.tpm, self.attestation_url(), session, ek_kind=self.o.ek,
                                         call=self._tpm)
        finally:
            self.timings["attestation"] = time.perf_counter() - start
            session.close()

    def tls_key(self) -> AnyTpmKey:
        """A new key born in the TPM, or with `renew` the existing key file (re-attested, not replaced)."""
        if self.o.renew:
            return self._tpm(self.tpm.load_key, self.o.key_out)
        return self._tpm(self.tpm.create_key, self.o.alg)

    def attested_key(self, key: AnyTpmKey) -> AnyTpmKey:
        """The key the AK certifies (the TLS key; a rogue client would certify another)."""
        return key

    def att_obj(self, cred: AkCredential, key: AnyTpmKey, key_authorization: str) -> bytes:
        """TPM2_Certify of the key and, when the Attestation CA names PCRs, a quote of them, both over
        SHA-256(keyAuthorization): the server checks the PCR policy for this very certificate."""
        certified = self.attested_key(key)
        nonce = hashlib.sha256(key_authorization.encode()).digest()
        cert_info, sig = self._tpm(attest.certify, self.tpm, cred.ak.blob, certified, nonce)
        quote = None
        if cred.pcrs:
            quoted, quote_sig, values = pcr_quote(self.tpm, cred.ak, nonce, cred.pcrs, self._tpm)
            quote = {"quoted": quoted, "sig": quote_sig, "pcrs": values}
        return encode_att_obj(cred.chain, certified.tpm_public.publicArea.marshal(), cert_info, sig, quote)

    def csr(self, key: AnyTpmKey, identifier: str) -> x509.CertificateSigningRequest:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identifier)])
        return self._tpm(build_csr, key, name)

    # -- the whole run ---------------------------------------------------------------
    def run(self) -> EnrollResult:
        o = self.o
        total = time.perf_counter()
        if o.renew:
            if not o.key_out.is_file():
                raise EnrollError(f"{o.key_out}: no key to renew; enroll once without --renew")
        else:
            check_writable(o.key_out, o.overwrite)
        check_writable(o.cert_out, o.overwrite or o.renew)
        renewing = self.tls_key() if o.renew else None
        if renewing is not None:
            self._check_renewal(renewing)  # before any attestation: a mismatch is a local mistake
        cred = self.ak_credential()
        identifier = cred.identifier if o.identifier == "ek" else o.identifier
        if not identifier:
            raise EnrollError(f"{self.attestation_url()}: the AK certificate names no identifier; pass --id")
        key = renewing if renewing is not None else self.tls_key()
        start = time.perf_counter()
        chain_pem = self._acme(cred, key, identifier)
        self.timings["acme"] = time.perf_counter() - start
        try:
            certs = x509.load_pem_x509_certificates(chain_pem.encode())
        except ValueError:
            raise EnrollError(f"{o.directory_url}: the issued certificate is not PEM") from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if certs[0].public_key().public_bytes(serialization.Encoding.DER, spki) != key.public_key().public_bytes(
                serialization.Encoding.DER, spki):
            raise EnrollError(f"{o.directory_url}: the issued certificate is for another key")
        if not o.renew:
            write_atomic(o.key_out, key.to_pem(), 0o600)
        write_atomic(o.cert_out, chain_pem.encode(), 0o644)
        installed = self._install(key, chain_pem) if o.install else None
        self.timings["total"] = time.perf_counter() - total
        return EnrollResult(key, certs[0], o.key_out, o.cert_out, identifier, installed, self.timings)

    def _acme(self, cred: AkCredential, key: AnyTpmKey, identifier: str) -> str:
        url = self.o.directory_url
        account = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        net = acme_client.ClientNetwork(account, alg=jose.ES256, verify_ssl=self.verify,  # type: ignore[arg-type]
                                        user_agent="tpmtls-enroll", timeout=30)
        try:
            directory = acme_client.ClientV2.get_directory(url, net)
            acme = acme_client.ClientV2(directory, net)
            net.account = acme.new_account(messages.NewRegistration.from_data(terms_of_service_agreed=True))
            order = messages.NewOrder(identifiers=[messages.Identifier(typ=PERMANENT_IDENTIFIER, value=identifier)])
            resp = acme._post(directory["newOrder"], order)
            body = messages.Order.from_json(resp.json())
            authzs = [acme._authzr_from_response(acme._post_as_get(u), uri=u) for u in body.authorizations]
            orderr = messages.OrderResource(body=body, uri=resp.headers.get("Location"), authorizations=authzs)
            for authzr in authzs:
                challb = next((c for c in authzr.body.challenges if isinstance(c.chall, DeviceAttest01)), None)
                if challb is None:
                    raise EnrollError(f"{url}: the server offers no device-attest-01 challenge")
                key_auth = challb.chall.key_authorization(account)
                att = self.att_obj(cred, key, key_auth)
                acme.answer_challenge(challb, DeviceAttest01Response(att_obj=jose.b64encode(att).decode()))
            deadline = datetime.datetime.now() + datetime.timedelta(seconds=DEADLINE)
            orderr = acme.poll_authorizations(orderr, deadline)
            csr_pem = self.csr(key, identifier).public_bytes(serialization.Encoding.PEM)
            orderr = acme.begin_finalization(orderr.update(csr_pem=csr_pem))
            if orderr.body.status == messages.STATUS_VALID and orderr.body.certificate:
                return str(acme._post_as_get(orderr.body.certificate).text)
            return str(acme.poll_finalization(orderr, deadline).fullchain_pem)
        except EnrollError:
            raise
        except Exception as e:  # noqa: BLE001 - acme raises its own errors, requests' and josepy's
            raise _problem(e, url) from None
        finally:
            net.session.close()

    def _check_renewal(self, key: AnyTpmKey) -> None:
        """With --renew, an existing --cert-out must be this key's: never swap a certificate for another key's."""
        path = self.o.cert_out
        if not path.exists():
            return
        try:
            cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
            same = cert.public_key() == key.public_key()
        except (OSError, ValueError):
            raise EnrollError(f"{path}: not a PEM certificate; pass the certificate of {self.o.key_out}") from None
        if not same:
            raise EnrollError(f"{path} is not the certificate of {self.o.key_out}; renew each key with its own")

    def _install(self, key: AnyTpmKey, chain_pem: str) -> Path:
        """tpmtls's certs.d for HOST[:PORT] (Docker's file names): client.key (the TPM key file) and
        client.cert. Not Docker's own certs.d: stock dockerd fails every pull from a host whose
        client.key it cannot parse (docs/formats.md, "certs.d")."""
        from ..docker.files import CLIENT_CERT, CLIENT_KEY, check_hostport, write_cert_dir

        host = self.o.install or ""
        try:
            check_hostport(host)
        except TpmtlsError:
            raise EnrollError(f"--install {host!r}: give a registry as HOST or HOST:PORT") from None
        return write_cert_dir(host, {CLIENT_KEY: (key.to_pem(), 0o600), CLIENT_CERT: (chain_pem.encode(), 0o644)},
                              self.o.certs_root)


def enroll(tpm: Tpm, options: EnrollOptions) -> EnrollResult:
    """Enroll this TPM against an ACME server with device-attest-01 and write key + certificate."""
    return Enroller(tpm, options).run()


__all__ = ["DeviceAttest01", "DeviceAttest01Response", "EnrollOptions", "EnrollResult", "Enroller", "enroll"]
