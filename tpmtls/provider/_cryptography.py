"""cryptography's own OpenSSL (4.x, behind pyOpenSSL): the shim goes in through OPENSSL_CONF.

Its provider functions are not exposed, so the only way in is a config file read once,
when cryptography is first imported (docs/facts-openssl.md, "Two OpenSSLs in one Python
process"). The variable is set just around that
import and put back, so no child process inherits it (a leaked provider config killed
swtpm).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def load(path: Path) -> None:
    """Import cryptography's bindings with a config that lists the shim (keeps the user's own config)."""
    previous = os.environ.get("OPENSSL_CONF")
    with _config_file(config_text(path, previous)) as conf:
        os.environ["OPENSSL_CONF"] = conf
        try:
            import cryptography.hazmat.bindings._rust  # noqa: F401 - initialises its OpenSSL now
        finally:
            if previous is None:
                os.environ.pop("OPENSSL_CONF", None)
            else:
                os.environ["OPENSSL_CONF"] = previous


def config_text(shim: Path, previous: str | None) -> str:
    """The config cryptography's OpenSSL reads: the user's `previous` one, with the shim added.

    OpenSSL reads one initialisation section (`openssl_conf` in the default section) and one
    providers list from it, so the shim joins the user's list where there is one; a section
    reopened after `.include` gets the keys added, and a key set again is the later one.
    """
    shim_section = f"[tpmtls_shim]\nmodule = {shim}\nactivate = 1\n"
    ours = ("[tpmtls_providers]\ndefault = tpmtls_default\ntpmtls = tpmtls_shim\n"
            "[tpmtls_default]\nactivate = 1\n" + shim_section)
    if not previous or not os.path.isfile(previous):
        return "openssl_conf = tpmtls_init\n[tpmtls_init]\nproviders = tpmtls_providers\n" + ours
    init, providers = _init_sections(Path(previous))
    include = f".include {previous}\n"
    if init is None:  # the user's file initialises nothing (or by a name only OpenSSL can expand)
        return include + "[default]\nopenssl_conf = tpmtls_init\n[tpmtls_init]\nproviders = tpmtls_providers\n" + ours
    if providers is None:  # their initialisation loads no providers: ours are added to it
        return include + f"[{init}]\nproviders = tpmtls_providers\n" + ours
    return include + f"[{providers}]\ntpmtls = tpmtls_shim\n" + shim_section


def _init_sections(config: Path) -> tuple[str | None, str | None]:
    """(initialisation section, its providers section) named in an OpenSSL config file; None
    where the file does not name one plainly (unreadable, a `$variable`, set in an include)."""
    try:
        text = config.read_text(errors="replace")
    except OSError:
        return None, None
    sections: dict[str, dict[str, str]] = {}
    current = "default"
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
        elif "=" in line and not line.startswith("."):
            key, value = (part.strip() for part in line.split("=", 1))
            sections.setdefault(current, {})[key] = value

    def plain(value: str | None) -> str | None:  # a section of this file, named without a variable
        return value if value and "$" not in value and value in sections else None

    init = plain(sections.get("default", {}).get("openssl_conf"))
    if init is None:
        return None, None
    return init, plain(sections[init].get("providers"))


@contextmanager
def _config_file(text: str) -> Iterator[str]:
    """A path OpenSSL can read `text` from while the block runs: an anonymous memory file
    (Linux memfd, nothing on disk, gone with its descriptor), else a private temp directory."""
    if hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd"):
        fd = os.memfd_create("tpmtls-openssl.cnf", os.MFD_CLOEXEC)
        try:
            os.write(fd, text.encode())
            yield f"/proc/{os.getpid()}/fd/{fd}"
        finally:
            os.close(fd)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tpmtls-ossl-") as tmp:
        conf = Path(tmp) / "openssl.cnf"
        conf.write_text(text)
        yield str(conf)
