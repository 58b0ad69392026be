"""The end of every command's --help: examples, the environment variables it reads, exit statuses.

Kept apart from the commands' modules so every help page says these things the same way;
`tests/cli/test_help.py` runs each example through the real parser.
"""

from __future__ import annotations

import argparse

# What each variable does, in a few words (docs/environment.md has the whole story).
ENVIRONMENT = {
    "TPMTLS_TCTI": "the TPM to use (else $TPM2TOOLS_TCTI, then device:/dev/tpmrm0); --tcti wins",
    "TPMTLS_TPM_TIMEOUT": "seconds a TPM command may take (60)",
    "TPMTLS_CERTS_D": "tpmtls's certs.d root (/etc/tpmtls/certs.d)",
    "DOCKER_CERTS_D": "Docker's certs.d root, read second (/etc/docker/certs.d)",
    "DOCKER_CONFIG": "Docker's configuration directory, for registry credentials (~/.docker)",
    "DOCKER_HOST": "the daemon, when --upstream is not given",
    "DOCKER_CERT_PATH": "ca.pem, cert.pem, key.pem, when --cert-path is not given (~/.docker)",
    "XDG_CACHE_HOME": "where the blob cache lives (~/.cache/tpmtls/blobs.json)",
    "TPMTLS_ENROLL_DEADLINE": "seconds one pairing connection may take (30)",
    "LISTEN_FDS": "with LISTEN_PID: the socket systemd passes (--listen fd://)",
    "NOTIFY_SOCKET": "systemd's readiness socket: READY=1 once the upstream was checked",
    "JOURNAL_STREAM": "set by systemd: log lines get journald priorities and no time",
    "TPMTLS_DEBUG": "set: an internal error shows its traceback",
}
_TPM = ("TPMTLS_TCTI", "TPMTLS_TPM_TIMEOUT")
_CERTS_D = ("TPMTLS_CERTS_D", "DOCKER_CERTS_D")
_SERVICE = ("LISTEN_FDS", "NOTIFY_SOCKET", "JOURNAL_STREAM")

EXIT_STATUS = {
    0: "done",
    1: "failed: one line on stderr says what and what to do",
    2: "bad usage: one line on stderr",
    70: "internal error, a bug (TPMTLS_DEBUG=1 shows the traceback)",
    130: "interrupted (Ctrl-C)",
    143: "terminated (SIGTERM): cleaned up as after Ctrl-C",
}

# command path → (examples, environment variables read)
COMMANDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "tpmtls": (("tpmtls doctor", "tpmtls key create --out client.key", "tpmtls --tcti tabrmd:bus_type=session doctor"),
               (*_TPM,)),
    "doctor": (("tpmtls doctor", "tpmtls doctor -q", "tpmtls doctor --format json"),
               (*_TPM, *_CERTS_D, "DOCKER_CONFIG")),
    "key": (("tpmtls key create --out client.key", "tpmtls key show client.key"), _TPM),
    "ca": (("tpmtls ca init ./ca --name 'Example registry CA'",
            "tpmtls ca issue ./ca --csr client.csr --client --out client.crt"), _TPM),
    "certs": (("tpmtls certs install registry.example:5000 --cert client.crt --key client.key --ca ca.crt",), _TPM),
    "key create": (("tpmtls key create --out client.key", "tpmtls key create --alg rsa2048 --out client.key "
                    "--password-file pw.txt"), _TPM),
    "key import": (("tpmtls key import server.pem --out server.key",), _TPM),
    "key show": (("tpmtls key show client.key", "tpmtls key show client.key --pubout",
                  "tpmtls key show handle:0x81000010 --format json"), _TPM),
    "key persist": (("tpmtls key persist client.key 0x81000010 --out client.handle",), _TPM),
    "key wrap": (("tpmtls key wrap server.pem --ek ek.pem --out server.blob",), ()),
    "key import-wrapped": (("tpmtls key import-wrapped server.blob --out server.key",), _TPM),
    "key ek": (("tpmtls key ek --out ek.pem", "tpmtls key ek --type ecc --out ek.pem --format json"), _TPM),
    "csr": (("tpmtls csr --key client.key --subject CN=client --out client.csr",
             "tpmtls csr --key server.key --subject CN=registry.example --san DNS:registry.example --out server.csr"),
            _TPM),
    "connect": (("tpmtls connect registry.example:443 --cert client.crt --key client.key --cafile ca.crt",
                 "tpmtls connect 127.0.0.1:8443 --servername registry.example --cert client.crt --key client.key "
                 "--cafile ca.crt --tls1.3 --format json"), _TPM),
    "ca init": (("tpmtls ca init ./ca --name 'Example registry CA'", "tpmtls ca init ./ca --name 'TPM CA' --tpm"),
                _TPM),
    "ca issue": (("tpmtls ca issue ./ca --csr client.csr --client --out client.crt",
                  "tpmtls ca issue ./ca --csr server.csr --server --san DNS:registry.example --out server.crt "
                  "--format json"), _TPM),
    "ca revoke": (("tpmtls ca revoke ./ca --cert client.crt --reason keyCompromise",
                   "tpmtls ca revoke ./ca --serial 4f1c2a"), _TPM),
    "ca crl": (("tpmtls ca crl ./ca --out ca.crl --force",
                "tpmtls ca crl ./ca --out /etc/nginx/docker-ca.crl --hours 168 --daemon"), _TPM),
    "certs install": (("tpmtls certs install registry.example:5000 --cert client.crt --key client.key --ca ca.crt",
                       "tpmtls certs install registry.example:5000 --cert client.crt --key client.key --ca ca.crt "
                       "--group tpmtls"), ("TPMTLS_CERTS_D", *_TPM)),
    "certs daemon-config": (("tpmtls certs daemon-config --cert server.crt --key server.key --ca ca.crt",), ()),
    "certs env": (("tpmtls certs env docker1.example:2376 --cert-path ~/.docker/docker1 --cert client.crt "
                   "--key client.key --ca ca.pem",), _TPM),
    "certs containerd-hosts": (("tpmtls certs containerd-hosts registry.example:5000 --proxy 127.0.0.1:5000",
                                "tpmtls certs containerd-hosts registry.example:5000 --proxy 127.0.0.1:5000 --print"),
                               ()),
    "certs registries-conf": (("tpmtls certs registries-conf registry.example:5000 --proxy 127.0.0.1:5000",
                               "tpmtls certs registries-conf registry.example:5000 --proxy 127.0.0.1:5000 --remove"),
                              ()),
    "certs nginx-front": (("tpmtls certs nginx-front --cert nginx.crt --key nginx.key --ca ca.crt --out nginx.conf",),
                          ()),
    "proxy": (("tpmtls proxy --upstream registry.example:5000",
               "tpmtls proxy --upstream registry.example:5000 --listen 127.0.0.2:5000 "
               "--resolve registry.example:5000:203.0.113.7",
               "tpmtls proxy --upstream registry.example:5000 --listen fd://"),
              (*_TPM, *_CERTS_D, *_SERVICE)),
    "daemon-proxy": (("tpmtls daemon-proxy --upstream tcp://docker1.example:2376 --cert-path ~/.docker/docker1",
                      "tpmtls daemon-proxy --upstream tcp://docker1.example:2376 --listen fd://"),
                     (*_TPM, "DOCKER_HOST", "DOCKER_CERT_PATH", *_SERVICE)),
    "enroll": (("tpmtls enroll docker1.example:2376 --store ~/.tpmtls --expect-fingerprint SHA256",
                "tpmtls enroll --acme https://ca.example/acme/directory --id ek --key-out client.key "
                "--cert-out client.crt --install registry.example:5000",
                "tpmtls enroll --renew --cert-out client.crt --if-due"),
               (*_TPM, "TPMTLS_CERTS_D")),
    "enroll policy": (("tpmtls enroll policy --out policy.json",), _TPM),
    "enroll-agent": (("tpmtls enroll-agent --ca /etc/tpmtls/enroll/ca.crt --state /var/lib/tpmtls/enroll-agent "
                      "--listen 0.0.0.0:2376",),
                     ("TPMTLS_ENROLL_DEADLINE", "LISTEN_FDS", "JOURNAL_STREAM")),
    "enroll-server": (("tpmtls enroll-server --ca ./ca --ek-roots ek-roots.pem --policy policy.json "
                       "--listen 127.0.0.1:8443",), ("JOURNAL_STREAM",)),
    "quickstart": (("tpmtls quickstart", "tpmtls quickstart --workdir /tmp/qs"), ()),
    "completion": ((), ()),
    "tpmtls-push": (("tpmtls-push docker-archive:app.tar registry.example:5000/team/app:1",
                     "tpmtls-push app:latest registry.example:5000/team/app:1 -q --digestfile app.digest",
                     "tpmtls-push oci:./layout:v1 registry.example:5000/team/app:v1 --format json"),
                    (*_TPM, *_CERTS_D, "DOCKER_CONFIG", "DOCKER_HOST", "XDG_CACHE_HOME")),
    "tpmtls-pull": (("tpmtls-pull registry.example:5000/team/app:1 oci:./app",
                     "tpmtls-pull registry.example:5000/team/app:1 docker-daemon: --digestfile app.digest"),
                    (*_TPM, *_CERTS_D, "DOCKER_CONFIG", "DOCKER_HOST")),
}


def _section(title: str, rows: list[str]) -> str:
    return f"{title}:\n" + "\n".join(f"  {row}" for row in rows) if rows else ""


def epilog(command: str, before: str | None = None) -> str:
    """The help's last sections for `command` ("key create", "tpmtls-push" …)."""
    examples, variables = COMMANDS[command]
    width = max((len(v) for v in (*variables, "TPMTLS_DEBUG")), default=0)
    parts = [before or "", _section("examples", list(examples)),
             _section("environment", [f"{v:<{width}}  {ENVIRONMENT[v]}" for v in (*variables, "TPMTLS_DEBUG")]),
             _section("exit status", [f"{code:<3}  {text}" for code, text in EXIT_STATUS.items()])]
    return "\n\n".join(p for p in parts if p)


def finish(parser: argparse.ArgumentParser, command: str = "tpmtls") -> None:
    """Give `parser` and every subcommand under it their epilog."""
    subactions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    parser.epilog = epilog(command, parser.epilog)
    for action in subactions:
        for name, sub in action._name_parser_map.items():
            finish(sub, name if command == "tpmtls" else f"{command} {name}")


__all__ = ["COMMANDS", "ENVIRONMENT", "finish"]
