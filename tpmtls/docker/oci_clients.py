"""Client configuration that sends containerd, podman, buildah and skopeo through `tpmtls proxy`.

Those tools cannot use a TPM key for a registry either, but each can be told to reach a
registry through another address, keeping the image names the user has:

- containerd (`ctr`, and the CRI plugin kubelet drives) reads `DIR/REG[:PORT]/hosts.toml`
  from its `config_path`; a `[host."http://ADDR:PORT"]` table with pull, resolve and push sends
  every request to the proxy. A file with only `server = "http://…"` and no `[host]` table is
  silently ignored by containerd 1.6 (it falls back to https), so the table is what matters.
- podman, buildah and skopeo (containers/image) read `registries.conf.d/*.conf` drop-ins. A
  `[[registry.mirror]]` on the proxy serves pulls by the registry's own name. containers/image
  applies mirrors and `location` rewrites to pulls only, never to pushes, so pushes name the
  proxy's address (`podman push REG/app:1 127.0.0.1:P/app:1`); a second entry allows plain HTTP
  to that loopback address. `insecure = true` is never set on the registry's own name: it would
  also let a push to the real registry fall back to plain HTTP or unverified TLS.

Both files are written by hand: a dozen lines of TOML whose every value is a validated host
name or loopback address (characters that never need escaping), so no TOML writer is needed;
the tools themselves parse what we write in the tests. Files carry a first-line marker, so
`remove_config` deletes only what tpmtls wrote.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .._files import check_writable, write_atomic
from ..errors import UsageError

#: containerd's usual `config_path` for the CRI plugin (and what `ctr --hosts-dir` is pointed at).
CONTAINERD_CERTS_D = Path("/etc/containerd/certs.d")
#: Where containers/image reads drop-ins from, after /etc/containers/registries.conf.
REGISTRIES_CONF_D = Path("/etc/containers/registries.conf.d")
#: The first line of every file written here; `remove_config` checks it.
MARKER = "# Written by tpmtls"

_COMPONENT = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
_REGISTRY_RE = re.compile(rf"^{_COMPONENT}(?:\.{_COMPONENT})*(?::([0-9]{{1,5}}))?$")


@dataclass(frozen=True)
class ClientConfig:
    """One configuration file: where it goes and what it holds."""

    path: Path
    text: str
    tool: str  # "containerd" or "containers-registries", for messages


def registry_name(text: str) -> str:
    """REG[:PORT] as it appears in image names (distribution's domain grammar; port 1..65535)."""
    m = _REGISTRY_RE.match(text)
    if not m or (m.group(1) is not None and not 0 < int(m.group(1)) < 65536):
        raise UsageError(f"{text!r}: write the registry as it appears in image names, REG[:PORT] "
                         "(e.g. registry.example:5000), without a scheme or path")
    return text


def proxy_address(text: str) -> tuple[str, int]:
    """ADDR:PORT of a running `tpmtls proxy`: a loopback IP literal, as the proxy only listens there."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        address, number = None, 0
    if not sep or address is None or not 0 < number < 65536:
        raise UsageError(f"--proxy {text!r}: write the proxy's listen address as 127.0.0.1:PORT (or [::1]:PORT)")
    if not address.is_loopback:
        raise UsageError(f"--proxy {text}: not a loopback address; tpmtls proxy only listens on 127.0.0.0/8 or ::1, "
                         "and plain HTTP to it is only safe there")
    return str(address), number


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def containerd_hosts(registry: str, proxy: str, directory: str | os.PathLike[str] = CONTAINERD_CERTS_D) -> ClientConfig:
    """`DIR/REG[:PORT]/hosts.toml` sending pulls, resolves and pushes for REG to the proxy."""
    name = registry_name(registry)
    via = _hostport(*proxy_address(proxy))
    text = "\n".join([
        f"{MARKER} (tpmtls certs containerd-hosts {name} --proxy {via}).",
        f"# containerd sends every request for {name} to tpmtls proxy on {via}, which forwards it",
        "# over mutual TLS with this machine's TPM key. Plain HTTP stays on loopback.",
        f'server = "https://{name}"',
        "",
        f'[host."http://{via}"]',
        '  capabilities = ["pull", "resolve", "push"]',
        "",
    ])
    return ClientConfig(Path(directory) / name / "hosts.toml", text, "containerd")


def registries_conf(registry: str, proxy: str, out: str | os.PathLike[str] | None = None) -> ClientConfig:
    """A registries.conf.d drop-in: pulls of REG through the proxy, plain HTTP only to the proxy."""
    name = registry_name(registry)
    address, port = proxy_address(proxy)
    if ":" in address:
        # containers/image 5.23 (podman 4.3) reads no IPv6 literal in a registries.conf location
        raise UsageError(f"--proxy {proxy}: podman, buildah and skopeo cannot name an IPv6 address in "
                         "registries.conf; let the proxy listen on 127.0.0.1:PORT")
    via = _hostport(address, port)
    text = "\n".join([
        f"{MARKER} (tpmtls certs registries-conf {name} --proxy {via}).",
        f"# Pulls of {name}/… go to tpmtls proxy on {via} (TPM key, mutual TLS upstream).",
        "# containers/image redirects pulls only: push to the proxy's address instead,",
        f"#   podman push {name}/team/app:1 {via}/team/app:1",
        "[[registry]]",
        f'prefix = "{name}"',
        f'location = "{name}"',
        "",
        "[[registry.mirror]]",
        f'location = "{via}"',
        "insecure = true",
        "",
        "# plain HTTP to the proxy itself (loopback only), for pushes and pulls by its address",
        "[[registry]]",
        f'location = "{via}"',
        "insecure = true",
        "",
    ])
    path = Path(out) if out else REGISTRIES_CONF_D / f"90-tpmtls-{name.replace(':', '-')}.conf"
    return ClientConfig(path, text, "containers-registries")


def written_by_tpmtls(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts with our marker line."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().startswith(MARKER)
    except OSError:
        return False


def write_config(config: ClientConfig, *, force: bool = False) -> str:
    """Write atomically; an existing file is replaced only with `force` (an identical one is left as is).

    Returns "written", "replaced" or "unchanged". For containerd the REG[:PORT] directory is
    created inside DIR, but DIR itself must exist (it is what containerd's `config_path` names).
    """
    path = config.path
    root = path.parent.parent if config.tool == "containerd" else path.parent
    if not root.is_dir():
        hint = " (and set config_path to it in containerd's config.toml)" if config.tool == "containerd" else ""
        raise UsageError(f"{root}: no such directory; create it first{hint}")
    if path.is_file() and path.read_text(errors="replace") == config.text:
        return "unchanged"
    existed = path.exists()
    if existed and not force:
        whose = "an earlier tpmtls configuration" if written_by_tpmtls(path) else "not written by tpmtls"
        raise UsageError(f"{path}: already exists ({whose}); replace it with --force, or --remove it first")
    if config.tool == "containerd" and not path.parent.is_dir():
        try:
            path.parent.mkdir(mode=0o755)
        except OSError as e:
            raise UsageError(f"{path.parent}: cannot create: {e.strerror or e}") from None
    check_writable(path, overwrite=True)
    write_atomic(path, config.text.encode(), 0o644)
    return "replaced" if existed else "written"


def remove_config(config: ClientConfig, *, force: bool = False) -> str:
    """Delete a file tpmtls wrote (one without our marker only with `force`); "removed" or "absent".

    containerd's now empty REG[:PORT] directory goes too; nothing else is touched.
    """
    path = config.path
    if not path.exists():
        return "absent"
    if path.is_dir():
        raise UsageError(f"{path}: is a directory; name the file")
    if not written_by_tpmtls(path) and not force:
        raise UsageError(f"{path}: not written by tpmtls (no '{MARKER}' first line); remove it yourself, "
                         "or pass --force")
    try:
        path.unlink()
        if config.tool == "containerd" and not any(path.parent.iterdir()):
            path.parent.rmdir()
    except OSError as e:
        raise UsageError(f"{path}: cannot remove: {e.strerror or e}") from None
    return "removed"


__all__ = ["CONTAINERD_CERTS_D", "REGISTRIES_CONF_D", "ClientConfig", "containerd_hosts", "proxy_address",
           "registries_conf", "registry_name", "remove_config", "write_config", "written_by_tpmtls"]
