"""cryptography's own OpenSSL (4.x, behind pyOpenSSL): the shim goes in through OPENSSL_CONF.

Its provider functions are not exposed, so the only way in is a config file read once,
when cryptography is first imported (docs/facts-openssl.md, "Two OpenSSLs in one Python
process"). The variable is set just around that
import and put back, so no child process inherits it (a leaked provider config killed
swtpm).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def load(path: Path) -> None:
    """Import cryptography's bindings with a config that lists the shim (keeps the user's own config)."""
    previous = os.environ.get("OPENSSL_CONF")
    include = f".include {previous}\n" if previous and os.path.isfile(previous) else ""
    config = (
        f"{include}"
        "openssl_conf = tpmtls_init\n"
        "[tpmtls_init]\nproviders = tpmtls_providers\n"
        "[tpmtls_providers]\ndefault = tpmtls_default\ntpmtls = tpmtls_shim\n"
        "[tpmtls_default]\nactivate = 1\n"
        f"[tpmtls_shim]\nmodule = {path}\nactivate = 1\n"
    )
    with tempfile.TemporaryDirectory(prefix="tpmtls-ossl-") as tmp:
        conf = Path(tmp) / "openssl.cnf"
        conf.write_text(config)
        os.environ["OPENSSL_CONF"] = str(conf)
        try:
            import cryptography.hazmat.bindings._rust  # noqa: F401 - initialises its OpenSSL now
        finally:
            if previous is None:
                os.environ.pop("OPENSSL_CONF", None)
            else:
                os.environ["OPENSSL_CONF"] = previous
