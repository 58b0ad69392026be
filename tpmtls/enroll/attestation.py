"""Client of an Attestation CA: from EK certificate to AK certificate (smallstep's /attest + /secret).

`obtain_ak_certificate` reads the EK and its certificate, creates an AK, sends both;
the CA answers a credential encrypted to the EK for the AK's name, which only this TPM
can open (ActivateCredential); the opened secret and a PCR quote over the CA's nonce
buy the AK certificate chain.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Callable

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..tls.diagnosis import Cause, diagnose
from ..tpm import attest
from ..tpm.device import Tpm
from .attest_errors import ACME_ERROR_PREFIX, EnrollError

TIMEOUT = 30.0
TpmCall = Callable[..., Any]


def _direct(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


@dataclass(frozen=True)
class AkCredential:
    """An AK (loadable in this TPM) with the certificate chain the Attestation CA issued for it."""

    ak: attest.Ak
    chain: list[bytes]  # DER: AK certificate first
    identifier: str  # the permanent identifier the AK certificate carries
    pcrs: dict[str, list[int]] | None = None  # the PCR selection the CA quotes; the ACME challenge quotes it again

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.chain[0])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(body: dict[str, Any], key: str, url: str) -> bytes:
    try:
        return base64.b64decode(body[key], validate=True)
    except (KeyError, TypeError, ValueError):
        raise EnrollError(f"{url}: answer has no usable {key!r}; is this an Attestation CA?") from None


def post_json(session: requests.Session, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST JSON; a problem document or transport failure becomes one EnrollError line."""
    try:
        # verify= per call: an environment REQUESTS_CA_BUNDLE would override session.verify (psf/requests#3829)
        resp = session.post(url, json=body, timeout=TIMEOUT, verify=session.verify)
    except requests.exceptions.SSLError as e:
        raise tls_problem(url, e) from None
    except requests.exceptions.RequestException as e:
        raise EnrollError(f"{url}: cannot reach the Attestation CA ({diagnose(e).reason})") from None
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    if resp.status_code >= 400:
        if isinstance(doc, dict) and "detail" in doc:
            kind = str(doc.get("type", "")).removeprefix(ACME_ERROR_PREFIX)
            raise EnrollError(f"{url}: refused ({kind}): {doc['detail']}")
        raise EnrollError(f"{url}: HTTP {resp.status_code}")
    if not isinstance(doc, dict):
        raise EnrollError(f"{url}: answer is not a JSON object; is this an Attestation CA?")
    return doc


def tls_problem(url: str, e: BaseException) -> EnrollError:
    """A failed TLS exchange with an enrollment server, in one line (tls/diagnosis.py decides why)."""
    found = diagnose(e)
    if found.cause is Cause.UNTRUSTED:
        return EnrollError(f"{url}: TLS verification failed ({found.reason}); pass the server's CA with --cafile")
    if found.cause is Cause.NAME_MISMATCH:
        return EnrollError(f"{url}: TLS verification failed: the server's certificate is for another name "
                           f"({found.reason})")
    if found.cause is Cause.EXPIRED and not found.ours:
        return EnrollError(f"{url}: TLS verification failed: the server's certificate is out of its dates "
                           f"({found.reason})")
    if found.cause is Cause.NOT_TLS:
        return EnrollError(f"{url}: does not speak TLS ({found.reason}): check the URL's port")
    return EnrollError(f"{url}: TLS failed ({found.reason})")


def attest_request(tpm: Tpm, ek: attest.Ek, ak: attest.Ak) -> dict[str, Any]:
    """The `POST /attest` body (smallstep's attestationRequest)."""
    info = tpm.info()
    ek_der = serialization.load_pem_public_key(ek.public.to_pem()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "tpmInfo": {"version": 2, "manufacturer": info.manufacturer, "model": info.vendor,
                    "firmwareVersion": info.firmware},
        "ek": _b64(ek_der),
        "ekCerts": [_b64(ek.certificate)],
        "params": {"public": _b64(ak.public), "useTCSDActivationFormat": False, "createData": _b64(ak.create_data),
                   "createAttestation": _b64(ak.create_attestation), "createSignature": _b64(ak.create_signature)},
    }


def pcr_selection(answer: dict[str, Any], url: str) -> dict[str, list[int]] | None:
    """The PCR selection an Attestation CA asks to be quoted (`pcrs`), or None if it asks for none."""
    selection = answer.get("pcrs")
    if not selection:
        return None
    try:
        sel = {str(bank): [int(p) for p in pcrs] for bank, pcrs in selection.items()}
        if any(bank not in attest.PCR_BANKS or any(not 0 <= p <= 23 for p in pcrs) for bank, pcrs in sel.items()):
            raise ValueError
    except (AttributeError, TypeError, ValueError):
        raise EnrollError(f"{url}: answer names no usable PCR selection") from None
    return sel


def pcr_quote(tpm: Tpm, ak: attest.Ak, nonce: bytes, selection: dict[str, list[int]],
              call: TpmCall = _direct) -> tuple[bytes, bytes, dict[str, dict[str, str]]]:
    """TPM2_Quote by the AK over `nonce`, and the PCR values it covers: (quoted, signature, {bank: {"N": hex}})."""
    quoted, signature = call(attest.quote, tpm, ak.blob, nonce, selection)
    values = call(attest.read_pcrs, tpm, selection)
    return quoted, signature, {bank: {str(p): v.hex() for p, v in vals.items()} for bank, vals in values.items()}


def secret_request(tpm: Tpm, ak: attest.Ak, answer: dict[str, Any], url: str, ek_kind: str,
                   call: TpmCall = _direct) -> dict[str, Any]:
    """Activate the credential in the TPM and quote the PCRs the CA asks for over its nonce.

    `call` runs each TPM operation (the enrollment client passes one that times them).
    """
    secret = call(attest.activate_credential, tpm, ak.blob, ek_kind, _unb64(answer, "credential", url),
                  _unb64(answer, "secret", url))
    body: dict[str, Any] = {"secret": _b64(secret)}
    sel = pcr_selection(answer, url)
    if sel:
        quoted, signature, pcrs = pcr_quote(tpm, ak, _unb64(answer, "nonce", url), sel, call)
        body["quote"] = {"quoted": _b64(quoted), "signature": _b64(signature), "pcrs": pcrs}
    return body


def obtain_ak_certificate(tpm: Tpm, base_url: str, session: requests.Session, *, ek_kind: str = "rsa",
                          call: TpmCall = _direct) -> AkCredential:
    """Run the whole exchange against the Attestation CA at `base_url` (…/attest, …/secret)."""
    base = base_url.rstrip("/")
    ek = call(attest.read_ek, tpm, ek_kind)
    ak = call(attest.create_ak, tpm)
    answer = post_json(session, base + "/attest", call(attest_request, tpm, ek, ak))
    reply = post_json(session, base + "/secret", secret_request(tpm, ak, answer, base + "/attest", ek_kind, call))
    return credential_from_reply(ak, reply, base, pcr_selection(answer, base + "/attest"))


def credential_from_reply(ak: attest.Ak, reply: dict[str, Any], base: str,
                          pcrs: dict[str, list[int]] | None) -> AkCredential:
    """The AK credential from a `/secret` answer."""
    chain = reply.get("chain")
    if not isinstance(chain, list) or not chain:
        raise EnrollError(f"{base}/secret: answer has no certificate chain")
    try:
        ders = [base64.b64decode(c, validate=True) for c in chain]
        x509.load_der_x509_certificate(ders[0])
    except (TypeError, ValueError):
        raise EnrollError(f"{base}/secret: the certificate chain is not base64 DER") from None
    ident = reply.get("permanentIdentifier")
    return AkCredential(ak, ders, ident if isinstance(ident, str) else "", pcrs)


__all__ = ["AkCredential", "attest_request", "credential_from_reply", "obtain_ak_certificate", "pcr_quote", "pcr_selection",
           "post_json", "secret_request", "tls_problem"]
