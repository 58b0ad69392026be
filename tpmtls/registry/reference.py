"""Image references by distribution's grammar (distribution/reference, regexp.go).

Checked whole before any network call, so a bad tag or name fails in a line instead of
after every blob was uploaded. HOST[:PORT] must be present (we never guess docker.io).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import RegistryError

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?"
TAG = r"[\w][\w.-]{0,127}"
DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_DOMAIN_RE = re.compile(rf"^{DOMAIN}$")
_PATH_RE = re.compile(rf"^{PATH_COMPONENT}(?:/{PATH_COMPONENT})*$")
_TAG_RE = re.compile(rf"^{TAG}$")
_DIGEST_RE = re.compile(rf"^{DIGEST}$")
NAME_TOTAL_LENGTH_MAX = 255


@dataclass(frozen=True)
class Reference:
    """`host[:port]/repo[:tag|@digest]`."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        tail = f"@{self.digest}" if self.digest else f":{self.ref}"
        return f"{self.registry}/{self.repository}{tail}"


def _show(text: str) -> str:
    """The reference as quoted in an error, cut short if it is long."""
    return repr(text if len(text) <= 80 else text[:60] + "…" + text[-10:])


def valid_hostport(text: str) -> bool:
    """HOST[:PORT] as distribution's domain grammar has it, with a port in 1..65535."""
    if not _DOMAIN_RE.match(text):
        return False
    port = text.rpartition("]")[2] if text.startswith("[") else text
    if ":" in port:
        number = int(port.rpartition(":")[2])
        return 0 < number < 65536
    return True


def parse_reference(text: str) -> Reference:
    """Parse HOST[:PORT]/REPO[:TAG][@DIGEST] by distribution's grammar; one-line errors."""
    if "://" in text:
        raise RegistryError(f"{_show(text)}: a reference has no URL scheme; write HOST[:PORT]/REPO[:TAG]")
    if text != text.strip() or not text:
        raise RegistryError(f"{_show(text)}: write the reference as HOST[:PORT]/REPO[:TAG]")
    rest, at, digest = text.partition("@")
    if at and not _DIGEST_RE.match(digest):
        raise RegistryError(f"{_show(text)}: {digest!r} is not a digest (ALGORITHM:HEX, e.g. sha256:…)")
    if at and not digest.startswith("sha256:"):
        raise RegistryError(f"{_show(text)}: only sha256 digests are supported")
    if at and len(digest) != 71:
        raise RegistryError(f"{_show(text)}: a sha256 digest has 64 hex digits")
    registry, sep, path = rest.partition("/")
    if not sep or not path or not ("." in registry or ":" in registry or registry == "localhost"
                                   or registry.startswith("[")):
        raise RegistryError(f"{_show(text)}: write the destination as HOST[:PORT]/REPO[:TAG] (the registry host comes first)")
    if not valid_hostport(registry):
        raise RegistryError(f"{_show(text)}: {registry!r} is not a valid registry HOST[:PORT]")
    name, colon, tag = path, "", ""
    last = path.rfind(":")
    if last != -1 and "/" not in path[last:]:
        name, colon, tag = path[:last], ":", path[last + 1:]
    if colon and not tag:
        raise RegistryError(f"{_show(text)}: the tag after ':' is empty (leave out ':' for 'latest')")
    if colon and not _TAG_RE.match(tag):
        why = "longer than 128 characters" if len(tag) > 128 else "not a valid tag ([A-Za-z0-9_] then [A-Za-z0-9_.-])"
        raise RegistryError(f"{_show(text)}: tag {tag!r} is {why}" if len(tag) <= 128 else f"{_show(text)}: the tag is {why}")
    if not _PATH_RE.match(name):
        raise RegistryError(f"{_show(text)}: repository {name!r} is not valid (lowercase letters, digits and single "
                            "separators . _ __ - between them, components joined by '/')")
    if len(registry) + 1 + len(name) > NAME_TOTAL_LENGTH_MAX:
        raise RegistryError(f"{_show(text)}: the repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters")
    return Reference(registry, name, tag or (None if at else "latest"), digest or None)


__all__ = ["Reference", "parse_reference", "valid_hostport"]
