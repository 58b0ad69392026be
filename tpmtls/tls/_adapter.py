"""The HTTPS adapter of `requests_session()`: one module-level class taking the context.

A class made per call would close over the context in a reference cycle that only the
interpreter's last garbage collection frees (requests-toolbelt's SSLAdapter is the model).
It also keeps requests from adding trust anchors to our context: requests replaces
`verify` with $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE or certifi's bundle, and urllib3
loads that file into the connection's context on every new connection.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from requests.adapters import HTTPAdapter
from requests.exceptions import SSLError

from ..errors import HandshakeError, UsageError
from ._errors import TpmHandshakeError
from .diagnosis import causes

if TYPE_CHECKING:
    from requests.models import PreparedRequest, Response
    from urllib3 import PoolManager


class TpmAdapter(HTTPAdapter):
    """An HTTPS adapter whose every connection uses one given `ssl.SSLContext`, and only
    its trust anchors: per-request `verify=` paths and `cert=` are not applied to it."""

    def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
        self.context = context  # before super().__init__, which builds the pool manager
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self.context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, *args: Any, **kwargs: Any) -> "PoolManager":
        kwargs["ssl_context"] = self.context
        return super().proxy_manager_for(*args, **kwargs)

    def send(self, request: "PreparedRequest", stream: bool = False, timeout: Any = None,
             verify: bool | str = True, cert: Any = None, proxies: dict[str, str] | None = None) -> "Response":
        if verify is False:
            raise UsageError("this session always verifies the server (against the CAs it was made with); "
                             "verify=False is not supported")
        if cert is not None:
            raise UsageError("this session presents the client certificate it was made with; cert= is not supported")
        # verify=True and no cert: requests adds no CA file or client key to the connection
        try:
            return super().send(request, stream=stream, timeout=timeout, verify=True, cert=None, proxies=proxies)
        except SSLError as e:
            tpm = _tpm_failure(e)
            if tpm is None:
                raise
            raise TpmSSLError(f"{request.url}: {tpm}", request=request) from e

    def cert_verify(self, conn: Any, url: str, verify: bool | str, cert: Any) -> None:
        # requests' version points the connection at a CA file (certifi by default),
        # which urllib3 then loads into our context; verification is the context's job.
        if url.lower().startswith("https"):
            conn.cert_reqs = "CERT_REQUIRED"
            conn.ca_certs = conn.ca_cert_dir = None


class TpmSSLError(SSLError, HandshakeError):
    """requests' `SSLError` for a handshake the TPM could not sign; the text names its reason."""


def _tpm_failure(error: BaseException) -> TpmHandshakeError | None:
    """The `TpmHandshakeError` inside requests' and urllib3's wrappers (args, causes), if any."""
    return next((e for e in causes(error) if isinstance(e, TpmHandshakeError)), None)
