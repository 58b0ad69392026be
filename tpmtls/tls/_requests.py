"""`requests_session()`: a `requests.Session` presenting a TPM-backed client certificate.

requests is imported when a session is made, not with tpmtls (see `_adapter`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._keyref import KeyRef
from ._stdlib import ssl_context

if TYPE_CHECKING:
    import requests


def requests_session(
    cert: str | os.PathLike[str] | None = None,
    key: KeyRef | None = None,
    cafile: str | os.PathLike[str] | None = None,
    *,
    password: bytes | str | None = None,
    tcti: str | None = None,
    resume: bool = True,
) -> "requests.Session":
    """A `requests.Session` presenting the TPM-backed client certificate on HTTPS.

    It trusts only `cafile` (the system CAs if None), whatever $REQUESTS_CA_BUNDLE or
    $CURL_CA_BUNDLE say; per-request `verify=`/`cert=` are not honoured (False or a
    certificate is refused). Proxy settings from the environment still apply. New
    connections resume the TLS session of earlier ones (`resume=False` turns it off), so
    the TPM signs once per server and session lifetime, not per connection.
    """
    import requests

    from ._adapter import TpmAdapter

    context = ssl_context(cert, key, cafile, password=password, tcti=tcti, resume=resume)
    session = requests.Session()
    session.mount("https://", TpmAdapter(context))
    return session
