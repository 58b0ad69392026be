"""TLS contexts whose private key is a TPM key: stdlib ssl, pyOpenSSL and requests.

Both OpenSSLs decode key files through the shim provider, so a context is made the
ordinary way (`load_cert_chain`, `use_privatekey_file`) with the key *file*; the
handshake's one private-key operation then runs in the TPM through the pool.
Verification is always on; there is no switch to turn it off. One private module
per entry point: `_stdlib`, `_pyopenssl`, `_requests` (+ its `_adapter`), `_inject`.
"""

from __future__ import annotations

from ._errors import KeyLoadError, TpmHandshakeError
from ._inject import extract_from_ssl, inject_into_ssl
from ._keyref import KeyRef
from ._pyopenssl import pyopenssl_context
from ._requests import requests_session
from ._stdlib import TpmSSLContext, ssl_context

__all__ = [
    "KeyLoadError",
    "KeyRef",
    "TpmHandshakeError",
    "TpmSSLContext",
    "extract_from_ssl",
    "inject_into_ssl",
    "pyopenssl_context",
    "requests_session",
    "ssl_context",
]
