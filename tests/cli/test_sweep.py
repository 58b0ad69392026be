"""Every command, every kind of bad input, the faults a user's machine has — each case run as its
own process, as a user runs it — ends the same way: a non-zero exit, exactly one line naming what
and what to do (the credential helper: on stdout, its protocol), no traceback, no internal error
(exit 70), nothing half-written, in bounded time.

Commands are found in the entry points' argparse parsers (tests/support/sweep.py), so one added
later is swept too: with a template below its arguments are made bad one at a time; without one,
its options get bad values by what their names say. Cases name the files of the shared world
symbolically ({tpm_key} …): they are listed when the suite is collected, and run concurrently
in a bounded thread pool before the first test of this module, each in a directory of its own.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from support.commands import require
from support.daemon import busybox_archive
from support.peers import CuttingProxy
from support.sweep import Case, Command, Interrupt, Result, commands, entry_points, ids, run_case, short_id
from tpmtls.testing import free_port

#: Cases run at once: most are a Python start-up and a short wait on a peer or the TPM.
WORKERS = 6
#: Signals sent to a push mid-transfer: Ctrl-C, systemd's stop, and the one no clean-up follows.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)
Prepare = Callable[[Path, dict], None]


# ---- bad values, by kind (world files named {like_this}, resolved when a case runs) ---------------

@dataclass
class Bad:
    label: str
    value: str | bytes
    prepare: Prepare | None = None
    culprit: str | None = None
    mount: str | None = None


def _write(name: str, data: bytes) -> Prepare:
    def make(d: Path, world: dict) -> None:
        (d / name).write_bytes(data)
    return make


def _half_of(name: str, symbol: str) -> Prepare:
    def make(d: Path, world: dict) -> None:
        data = Path(world[symbol]).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])
    return make


def _mkdir(name: str, *files: str) -> Prepare:
    def make(d: Path, world: dict) -> None:
        (d / name).mkdir()
        for f in files:
            (d / name / f).write_text("precious\n")
    return make


def _garbage(n: int) -> bytes:
    return bytes((i * 7919 + 13) % 256 for i in range(n))


def bad_input(good: str, other: str) -> list[Bad]:
    """An input file: missing, a directory, empty, garbage, truncated, another kind of PEM, unbounded."""
    return [
        Bad("missing", "missing.pem", culprit="missing.pem"),
        Bad("directory", "adir", _mkdir("adir"), culprit="adir"),
        Bad("empty", "empty.pem", _write("empty.pem", b""), culprit="empty.pem"),
        Bad("garbage", "garbage.bin", _write("garbage.bin", _garbage(3000)), culprit="garbage.bin"),
        Bad("truncated", "half.pem", _half_of("half.pem", good.strip("{}")), culprit="half.pem"),
        Bad("wrong-label", other),
        Bad("non-utf8-name", b"bad-\xff.pem", _write(os.fsdecode(b"bad-\xff.pem"), _garbage(100))),
        Bad("unbounded", "/dev/zero", culprit="/dev/zero"),
    ]


def bad_output(name: str = "out.pem") -> list[Bad]:
    """An output file: existing, a directory, in a missing directory, on a read-only or full disk."""
    return [
        Bad("existing", "exists.pem", _write("exists.pem", b"precious\n"), culprit="exists.pem"),
        Bad("directory", "adir", _mkdir("adir"), culprit="adir"),
        Bad("no-parent", f"nodir/{name}", culprit="nodir"),
        Bad("read-only", f"box/{name}", mount="ro", culprit="box"),
        Bad("full-disk", f"box/{name}", mount="full", culprit="box"),
    ]


def bad_outdir(*used_by: str) -> list[Bad]:
    """An output directory: a file, on a read-only or full disk, already holding `used_by` files."""
    out = [Bad("a-file", "afile", _write("afile", b"x"), culprit="afile"),
           Bad("read-only", "box/out", mount="ro", culprit="box"),
           Bad("full-disk", "box/out", mount="full", culprit="box")]
    if used_by:
        out.append(Bad("used", "used", _mkdir("used", *used_by), culprit="used"))
    return out


def bad_password_file(for_key: bool = False) -> list[Bad]:
    """A password file: missing, a directory, unbounded; for a key that has one: empty (the empty
    password, tried and wrong) and wrong."""
    out = [Bad("missing", "nopw.txt", culprit="nopw.txt"), Bad("directory", "adir", _mkdir("adir"), culprit="adir"),
           Bad("unbounded", "/dev/zero", culprit="/dev/zero")]
    if for_key:
        out += [Bad("empty", "empty.txt", _write("empty.txt", b""), culprit="wrong password"),
                Bad("wrong", "wrong.txt", _write("wrong.txt", b"not the password\n"), culprit="wrong password")]
    return out


def bad_tcti() -> list[Bad]:
    return [Bad("unknown", "nosuchtcti:x", culprit="nosuchtcti"),
            Bad("port-text", "swtpm:host=127.0.0.1,port=abc", culprit="swtpm"),
            Bad("dead-swtpm", "swtpm:host=127.0.0.1,port={dead_port}", culprit="{dead_port}"),
            Bad("no-device", "device:/nonexistent/tpmrm0", culprit="/nonexistent/tpmrm0"),
            Bad("not-a-tpm", "device:/dev/null", culprit="/dev/null"),
            Bad("no-abrmd", "tabrmd:bus_name=com.example.nobody,bus_type=session", culprit="tabrmd"),
            Bad("huge", "swtpm:host=" + "h" * 100_000), Bad("non-utf8", b"swtpm:host=\xff")]


#: The odd TCTIs every TPM command is given (key create gets them all): unknown, malformed, nobody there.
TCTI_KINDS = ("unknown", "port-text", "dead-swtpm", "no-abrmd")


def bad_hostport(refused: bool = False) -> list[Bad]:
    out = [Bad("empty", ""), Bad("port-too-big", "host.example:99999", culprit="99999"),
           Bad("port-text", "host.example:http", culprit="host.example:http"), Bad("slash", "a/b:1", culprit="a/b"),
           Bad("dots", "..:5000", culprit=".."), Bad("bracket", "[::1:5000", culprit="[::1")]
    if refused:
        out.append(Bad("refused", "{dead}", culprit="{dead}"))
    return out


def bad_number() -> list[Bad]:
    return [Bad("zero", "0"), Bad("negative", "-1"), Bad("text", "abc", culprit="abc"), Bad("nan", "nan"),
            Bad("inf", "inf"), Bad("overflow", "1e400")]


def bad_name() -> list[Bad]:
    return [Bad("empty", ""), Bad("newline", "a\nb"), Bad("huge", "n" * 100_000), Bad("non-utf8", b"\xff\xfe")]


def bad_url() -> list[Bad]:
    return [Bad("empty", ""), Bad("ftp", "ftp://acme.example/dir", culprit="ftp://"),
            Bad("plain-http", "http://{dead}/directory", culprit="http://"),
            Bad("refused", "https://{dead}/directory", culprit="{dead}"), Bad("not-a-url", "not a url")]


def bad_listen(unix: bool = False, loopback: bool = True) -> list[Bad]:
    """Where to listen: everywhere (a loopback proxy), a port alone, one in use, out of range, not ours."""
    out = [Bad("in-use", "{busy}", culprit="{busy_port}"), Bad("port-too-big", "127.0.0.1:99999", culprit="99999"),
           Bad("elsewhere", "192.0.2.1:2376", culprit="192.0.2.1")]
    if loopback:  # a proxy acting with this machine's TPM identity: loopback and an address, always
        out += [Bad("everywhere", "0.0.0.0:2376", culprit="0.0.0.0"), Bad("port-only", "2376", culprit="2376")]
    if unix:
        out += [Bad("unix-in-file", "unix://afile/d.sock", _write("afile", b"x"), culprit="afile"),
                Bad("unix-read-only", "unix://box/d.sock", mount="ro", culprit="box")]
    return out


def bad_reference() -> list[Bad]:
    return [Bad("empty", ""), Bad("upper", "{registry}/UPPER/case:1", culprit="UPPER"),
            Bad("bad-digest", "{registry}/sweep/x@sha256:nothex", culprit="sha256:nothex"),
            Bad("port-too-big", "host.example:99999/x:1", culprit="99999"),
            Bad("refused", "{dead}/sweep/x:1", culprit="{dead}"), Bad("no-repo", "{registry}")]


def bad_cert_dir() -> list[Bad]:
    return [Bad("missing", "nocerts", culprit="nocerts"), Bad("a-file", "afile", _write("afile", b"x"), culprit="afile"),
            Bad("empty", "emptydir", _mkdir("emptydir"), culprit="emptydir")]


# ---- templates: a valid command line per command, its slots made bad one at a time ----------------

@dataclass
class Slot:
    good: str
    bads: list[Bad]


@dataclass
class Template:
    argv: list[str | Slot]
    tpm: bool = False  # the command reaches the TPM: a bad TCTI must make it fail
    env: dict[str, str] = field(default_factory=dict)
    prepare: Prepare | None = None  # what its good values need in the case's directory


def templates() -> dict[str, Template]:
    S = Slot  # noqa: N806 - short, like the command lines it sits in
    key, crt, ca = "{tpm_key}", "{client_crt}", "{ca_crt}"
    srv_crt, srv_key, soft = "{server_crt}", "{server_key}", "{soft_key}"
    return {
        "tpmtls doctor": Template([], tpm=True),
        "tpmtls key create": Template(["--alg", "ecc-p256", "--out", S("new.key", bad_output("new.key")),
                                       "--password-file", S("{pw_file}", bad_password_file())], tpm=True),
        "tpmtls key import": Template([S(soft, bad_input(soft, crt)), "--out", S("imp.key", bad_output("imp.key"))],
                                      tpm=True),
        "tpmtls key show": Template([S(key, bad_input(key, crt))]),
        "tpmtls key persist": Template([S(key, bad_input(key, crt)), S("0x81000099", [
            Bad("text", "banana", culprit="banana"), Bad("transient", "0x80000001", culprit="0x80000001"),
            Bad("too-long", "0x8100000001", culprit="0x8100000001"), Bad("empty", "")])], tpm=True),
        "tpmtls key wrap": Template([S(soft, bad_input(soft, crt)), "--ek", S("{ek_pem}", bad_input("{ek_pem}", key)),
                                     "--ek-unverified", "--out", S("w.blob", bad_output("w.blob"))]),
        "tpmtls key import-wrapped": Template([S("{blob}", bad_input("{blob}", key)), "--out",
                                               S("unwrapped.key", bad_output("unwrapped.key"))], tpm=True),
        "tpmtls key ek": Template(["--out", S("ek.pem", bad_output("ek.pem"))], tpm=True),
        "tpmtls csr": Template(["--key", S(key, bad_input(key, crt)), "--subject", S("CN=x", bad_name() + [
            Bad("not-a-dn", "banana", culprit="banana")]), "--out", S("x.csr", bad_output("x.csr")), "--san",
            S("DNS:x.example", [Bad("no-type", "x.example", culprit="x.example"),
                                Bad("bad-ip", "IP:999.1.1.1", culprit="999.1.1.1")])], tpm=True),
        "tpmtls csr --password-file": Template(["--key", "{pw_key}", "--subject", "CN=x", "--out", "x.csr",
                                                "--password-file", S("{pw_file}", bad_password_file(for_key=True))],
                                               tpm=True),
        "tpmtls connect": Template([S("{s_server}", bad_hostport(refused=True)), "--cert", S(crt, bad_input(crt, key)),
                                    "--key", S(key, bad_input(key, crt)), "--cafile", S(ca, bad_input(ca, key)),
                                    "--timeout", S("10", bad_number())], tpm=True),
        "tpmtls ca init": Template([S("newca", bad_outdir("ca.key", "ca.crt")), "--name", S("sweep", bad_name())]),
        "tpmtls ca issue": Template([S("{ca_dir}", bad_cert_dir()), "--csr", S("{csr}", bad_input("{csr}", crt)),
                                     "--client", "--out", S("issued.crt", bad_output("issued.crt"))]),
        "tpmtls certs install": Template([S("registry.example:5000", bad_hostport()), "--cert", S(crt, bad_input(
            crt, key)), "--key", S(key, bad_input(key, crt)), "--ca", S(ca, bad_input(ca, key)), "--root", S("root", [
                Bad("a-file", "afile", _write("afile", b"x"), culprit="afile"),
                Bad("read-only", "box/root", mount="ro", culprit="box"),
                Bad("full-disk", "box/root", mount="full", culprit="box"),
                Bad("dockers-certs.d", "{here}/docker-certs.d", culprit="docker-certs.d")])]),
        "tpmtls certs daemon-config": Template([
            "--cert", S(srv_crt, bad_input(srv_crt, key)), "--key", S(srv_key, bad_input(srv_key, crt)),
            "--ca", S(ca, bad_input(ca, key)), "--out", S(".", bad_outdir("daemon.json")),
            "--host", S("tcp://127.0.0.1:2376", [Bad("not-a-url", "banana", culprit="banana"),
                                                 Bad("port-too-big", "tcp://127.0.0.1:99999", culprit="99999")])]),
        "tpmtls certs env": Template([S("docker.example:2376", bad_hostport()), "--cert-path",
                                      S("{cert_path}", bad_cert_dir())], tpm=True),
        "tpmtls certs env --cert": Template(["docker.example:2376", "--cert-path", S("laid-out", bad_outdir(
                                                 "key.pem", "cert.pem", "ca.pem")),
                                             "--cert", S(crt, bad_input(crt, key)), "--key", S(key, bad_input(key, crt)),
                                             "--ca", S(ca, bad_input(ca, key))], tpm=True),
        "tpmtls certs nginx-front": Template([
            "--cert", S(srv_crt, bad_input(srv_crt, key)), "--key", S(srv_key, bad_input(srv_key, crt)),
            "--ca", S(ca, bad_input(ca, key)), "--out", S("nginx.conf", bad_output("nginx.conf")),
            "--user", S("root", [Bad("directive", "root; load_module /tmp/x.so", culprit="--user"),
                                 Bad("newline", "root\nworker_processes 64", culprit="--user")]),
            "--socket", S("/var/run/docker.sock", [Bad("relative", "docker.sock", culprit="docker.sock"),
                                                   Bad("directive", "/x.sock; } server { listen 80",
                                                       culprit="--socket")])]),
        "tpmtls daemon-proxy": Template([
            "--upstream", S("tcp://{dead}", [Bad("refused", "tcp://{dead}", culprit="{dead}"),
                                             Bad("unix", "unix:///var/run/docker.sock", culprit="unix://"),
                                             Bad("not-a-url", "banana:x:y", culprit="banana")]),
            "--listen", S("unix://{here}/proxy.sock", bad_listen(unix=True)),
            "--cert-path", S("{cert_path}", bad_cert_dir())], tpm=True),
        "tpmtls proxy": Template([
            "--upstream", S("{registry}", bad_hostport() + [Bad("url", "http://x.example/v2", culprit="http://")]),
            "--listen", S("127.0.0.1:0", bad_listen()), "--cert-dir", S("{certs_dir}", bad_cert_dir()),
            "--resolve", S("{registry}:127.0.0.1", [Bad("short", "x.example:1", culprit="x.example:1")]),
            "--password-file", S("{no_pw_file}", bad_password_file())], tpm=True),
        "tpmtls enroll-agent": Template([
            "--ca", S(ca, bad_input(ca, key)), "--state", S("state", bad_outdir()),
            "--listen", S("127.0.0.1:0", bad_listen(loopback=False)),
            "--dockerd", S("/bin/true", [Bad("missing", "/nonexistent/dockerd", culprit="/nonexistent/dockerd")])],
            tpm=True, prepare=_mkdir("state")),
        # the agent's place is a TLS server that refuses the store's client certificate: every bad value
        # below fails before that (the store is made only once the host answers)
        "tpmtls enroll": Template([S("{s_server}", bad_hostport(refused=True)), "--store", S("store", bad_outdir()),
                                   "--trust-on-first-use"], tpm=True),
        "tpmtls enroll --acme": Template([
            # (a full disk under --key-out needs a whole enrollment: tests/enroll/test_enroll_acme.py)
            "--acme", S("https://{dead}/directory", bad_url()[:-2]),
            "--key-out", S("client.key", bad_output("client.key")[:-1]),
            "--install", S("registry.example:5000", [Bad("dots", "../x", culprit="../x"),
                                                     Bad("slash", "a/b", culprit="a/b")])], tpm=True),
        "tpmtls enroll policy": Template([
            "--out", S("policy.json", bad_output("policy.json")),
            "--pcrs", S("sha256:0,1", [Bad("bank", "md5:0", culprit="md5"), Bad("index", "sha256:99", culprit="99"),
                                       Bad("text", "banana", culprit="banana")])], tpm=True),
        "tpmtls enroll-server": Template([
            "--ca", S("{ca_dir}", bad_cert_dir()), "--ek-roots", S(ca, bad_input(ca, key)),
            "--policy", S("{policy}", bad_input("{policy}", key)),
            "--listen", S("127.0.0.1:0", bad_listen(loopback=False))]),
        "tpmtls quickstart": Template(["--workdir", S("qs", bad_outdir("notes.txt"))], tpm=True),
        "tpmtls-push": Template([
            S("docker-archive:{image}", [
                Bad("missing", "docker-archive:missing.tar", culprit="missing.tar"),
                Bad("garbage", "docker-archive:garbage.tar", _write("garbage.tar", _garbage(5000)), culprit="garbage.tar"),
                Bad("empty", "docker-archive:empty.tar", _write("empty.tar", b""), culprit="empty.tar"),
                Bad("oci-missing", "oci:nolayout", culprit="nolayout"),
                Bad("unknown-transport", "ftp:x", culprit="ftp:x"),
                Bad("no-daemon", "no-such-image:1", culprit="no-such-image")]),
            S("{registry}/sweep/push:1", bad_reference()), "--cert-dir", S("{certs_dir}", bad_cert_dir()),
            "--jobs", S("2", bad_number()), "--password-file", S("{no_pw_file}", bad_password_file())], tpm=True,
            env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"}),
        "tpmtls-pull": Template([
            S("{registry}/sweep/never-pushed:1", bad_reference()),
            S("oci:pulled", [Bad("unknown-transport", "ftp:x", culprit="ftp:x"),
                             Bad("oci-in-file", "oci:afile", _write("afile", b"x"), culprit="afile"),
                             Bad("read-only", "oci:box/pulled", mount="ro", culprit="box")]),
            "--cert-dir", S("{certs_dir}", bad_cert_dir()), "--jobs", S("2", bad_number()),
            "--password-file", S("{no_pw_file}", bad_password_file())], tpm=True),
    }


def _both(first: Prepare | None, second: Prepare | None) -> Prepare | None:
    if first is None or second is None:
        return first or second

    def make(d: Path, world: dict) -> None:
        first(d, world)
        second(d, world)
    return make


def _case(name: str, label: str, entry: str, argv: list, t: Template, bad: Bad) -> Case:
    return Case(short_id(f"{name} {label}"), entry, list(argv), env=dict(t.env), mount=bad.mount,
                prepare=_both(t.prepare, bad.prepare), culprit=bad.culprit)


def cases_from_template(name: str, command: Command, t: Template) -> list[Case]:
    """Each slot made bad with each of its values, the rest left good; bad TCTIs where the TPM is used."""
    words = list(command.words)
    good = [a.good if isinstance(a, Slot) else a for a in t.argv]
    out: list[Case] = []
    for i, arg in enumerate(t.argv):
        if not isinstance(arg, Slot):
            continue
        before = t.argv[i - 1] if i else None
        flag = before if isinstance(before, str) and before.startswith("--") else f"arg{i}"
        for bad in arg.bads:
            out.append(_case(name, f"{flag}={bad.label}", command.entry, [*words, *good[:i], bad.value, *good[i + 1:]],
                             t, bad))
    if t.tpm and command.option("tcti") is not None:
        # every odd TCTI once (key create), the kinds that differ in how they fail everywhere
        for bad in bad_tcti() if name == "tpmtls key create" else [b for b in bad_tcti() if b.label in TCTI_KINDS]:
            out.append(_case(name, f"--tcti={bad.label}", command.entry, [*words, *good, "--tcti", bad.value], t, bad))
    out.append(_case(name, "--no-such-option", command.entry, [*words, *good, "--no-such-option"], t,
                     Bad("unknown-option", "", culprit="--no-such-option")))
    return out


#: What an option's name says its value is, for commands without a template.
_BY_NAME: list[tuple[tuple[str, ...], Callable[[], list[Bad]]]] = [
    (("tcti",), bad_tcti),
    (("password_file", "pem_password_file"), bad_password_file),
    (("listen",), bad_listen),
    (("out", "key_out", "cert_out", "output"), bad_output),
    (("dir", "state", "store", "root", "workdir", "cert_path", "cert_dir", "certs_root", "db"), bad_outdir),
    (("jobs", "timeout", "port", "days", "hours", "seconds"), bad_number),
    (("acme", "url", "attestation_ca", "public_url"), bad_url),
    (("hostport", "host", "target", "upstream", "install", "registry", "proxy"), bad_hostport),
]


def cases_from_parser(command: Command) -> list[Case]:
    """A command without a template: each option with a value gets bad values by its name (files
    and garbage otherwise); the other required arguments are given something plausible."""
    out: list[Case] = []
    valued = [a for a in command.actions if a.nargs != 0 and not a.choices]
    required = [a for a in valued if a.required or not a.option_strings]
    for action in valued:
        kinds = next((k() for names, k in _BY_NAME if action.dest in names), None)
        if kinds is None:
            kinds = bad_input("{tpm_key}", "{client_crt}") + bad_name()
        for bad in kinds:
            argv: list[str | bytes] = list(command.words)
            for other in required:
                if other is not action:
                    argv += [*other.option_strings[:1], "{tpm_key}"]
            argv += [*action.option_strings[-1:], bad.value]
            out.append(Case(short_id(f"{command.name} (from its parser) {action.dest}={bad.label}"), command.entry, argv,
                            mount=bad.mount, prepare=bad.prepare))
    return out


def credential_helper_cases() -> list[Case]:
    """Docker's credential-helper protocol: errors on stdout, exit 1."""
    store = b'{"ServerURL": "https://r.example", "Username": "u", "Secret": "s"}'
    dead = {"TPMTLS_TCTI": "swtpm:host=127.0.0.1,port={dead_port}"}
    items: list[tuple[str, list[str], bytes, dict[str, str], str | None, Prepare | None]] = [
        ("no-action", [], b"", {}, None, None), ("unknown-action", ["banana"], b"", {}, None, None),
        ("store-garbage", ["store"], b"{not json", {}, None, None),
        ("store-non-utf8", ["store"], b"\xff\xfe", {}, None, None),
        ("store-no-url", ["store"], b'{"Username": "u", "Secret": "s"}', {}, None, None),
        ("store-not-an-object", ["store"], b"[1, 2]", {}, None, None),
        ("store-huge", ["store"], b"[" * 200_000, {}, None, None),
        ("get-unknown", ["get"], b"https://never.example", {}, None, None), ("get-empty", ["get"], b"", {}, None, None),
        ("erase-unknown", ["erase"], b"https://never.example", {}, None, None),
        ("store-dead-tpm", ["store"], store, dead, None, None),
        ("store-read-only", ["store"], store, {"TPMTLS_CREDENTIALS_FILE": "box/creds.json"}, "ro", None),
        ("store-full-disk", ["store"], store, {"TPMTLS_CREDENTIALS_FILE": "box/creds.json"}, "full", None),
        ("list-store-is-a-directory", ["list"], b"", {"TPMTLS_CREDENTIALS_FILE": "adir"}, None, _mkdir("adir")),
        ("get-store-garbage", ["get"], b"https://r.example", {"TPMTLS_CREDENTIALS_FILE": "garbage.json"}, None,
         _write("garbage.json", _garbage(500))),
    ]
    return [Case(short_id(f"docker-credential-tpmtls {label}"), "docker-credential-tpmtls", argv,
                 env={"TPMTLS_CREDENTIALS_FILE": "creds.json", **env}, stdin=stdin, mount=mount, prepare=prepare)
            for label, argv, stdin, env, mount, prepare in items]


def fault_cases() -> list[Case]:
    """What a machine does to a command: a frozen TPM, a skewed clock, a signal in the middle of a push."""
    frozen = {"TPMTLS_TCTI": "{frozen_tcti}", "DBUS_SESSION_BUS_ADDRESS": "{frozen_bus}", "TPMTLS_TPM_TIMEOUT": "3"}
    connect = ["connect", "{s_server}", "--cert", "{client_crt}", "--key", "{tpm_key}", "--cafile", "{ca_crt}"]
    push = ["docker-archive:{image}", "{registry}/sweep/fault:1", "--cert-dir", "{certs_dir}"]
    out = [Case(f"fault frozen-tpm {label}", entry, argv, env=frozen, culprit="TPM") for label, entry, argv in [
        ("key-create", "tpmtls", ["key", "create", "--out", "k.key"]),
        ("csr", "tpmtls", ["csr", "--key", "{tpm_key}", "--subject", "CN=x", "--out", "x.csr"]),
        ("key-ek", "tpmtls", ["key", "ek", "--out", "ek.pem"]), ("doctor", "tpmtls", ["doctor"]),
        ("connect", "tpmtls", connect), ("push", "tpmtls-push", push)]]
    locked = {"TPMTLS_TCTI": "{locked_tcti}", "DBUS_SESSION_BUS_ADDRESS": "{locked_bus}"}
    for label, pw in (("right", "{pw_file}"), ("wrong", "{wrong_pw_file}")):
        out.append(Case(f"fault locked-tpm {label}-password", "tpmtls", ["csr", "--key", "{locked_key}", "--subject",
                        "CN=x", "--out", "x.csr", "--password-file", pw], env=locked, culprit="lockout"))
    # connect diagnoses the handshake ("not yet valid"); push checks our certificate's dates before it
    # connects ("… is not valid before DATE; renew it")
    for shift, what, ours in (("+800d", "expired", "expired"), ("-800d", "not yet valid", "not valid before")):
        out.append(Case(f"fault clock{shift} connect", "tpmtls", connect, wrap=["faketime", "-f", shift], culprit=what))
        out.append(Case(f"fault clock{shift} push", "tpmtls-push", push, wrap=["faketime", "-f", shift], culprit=ours))
    for signum in SIGNALS:  # each through a slow link of its own, so each lands mid-way through its push
        name = signal.Signals(signum).name
        out.append(Case(f"fault {name} mid-push", "tpmtls-push",
                        ["docker-archive:{slow_image}", f"127.0.0.1:{{slow_port_{name.lower()}}}/sweep/slow:1", "--cert-dir",
                         "{certs_dir}", "--resolve", f"127.0.0.1:{{slow_port_{name.lower()}}}:127.0.0.1"],
                        interrupt=Interrupt(signum, lambda name=name: SLOW[name].carried_enough.is_set()),
                        culprit={signal.SIGINT: "interrupted", signal.SIGTERM: "terminated"}.get(signum)))
    return out


def all_cases() -> list[Case]:
    table = templates()
    out: list[Case] = []
    for entry in entry_points():
        if entry == "docker-credential-tpmtls":
            out += credential_helper_cases()
            continue
        for command in commands(entry):
            named = [n for n in table if n == command.name or n.startswith(command.name + " --")]
            for n in named:
                out += cases_from_template(n, command, table[n])
            if not named:
                out += cases_from_parser(command)
    return out + fault_cases()


CASES = all_cases()
CASE_IDS = list(ids(CASES))
BY_ID = dict(zip(CASE_IDS, CASES, strict=True))


# ---- the world every case reads (never writes), and the machine faults ----------------------------

def _cli(*args: str, env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "tpmtls", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    assert proc.returncode == 0, f"tpmtls {' '.join(args)}: {proc.stderr}"


@pytest.fixture(scope="module")
def world(tmp_path_factory, test_tpm, tpm, pki, registry, tpm_certs, s_server):
    """The good files and peers the cases refer to as {name}."""
    require("unshare", "faketime", "openssl", "tpm2_dictionarylockout")
    d = tmp_path_factory.mktemp("world")
    env = dict(test_tpm.env)
    key = tpm.create_key("ecc-p256", d / "tpm.key")
    tpm.create_key("ecc-p256", d / "pw.key", password=b"sweep-secret")
    (d / "pw.txt").write_text("sweep-secret\n")
    (d / "no-pw.txt").write_bytes(b"")  # the certs.d key's password: the empty one
    soft_crt, soft_key = pki.software_client("sweep-soft")
    client_crt = pki.issue(key.public_key(), "sweep-client", "sweep-client.crt")
    _cli("csr", "--key", str(d / "tpm.key"), "--subject", "CN=sweep", "--out", str(d / "req.csr"), env=env)
    _cli("ca", "init", str(d / "ca"), "--name", "sweep CA", env=env)
    _cli("key", "ek", "--out", str(d / "ek.pem"), env=env)
    _cli("key", "wrap", str(soft_key), "--ek", str(d / "ek.pem"), "--ek-unverified", "--out", str(d / "wrapped.blob"),
         env=env)  # the sweep's own TPM: its EK public key read from it just now
    _cli("enroll", "policy", "--out", str(d / "policy.json"), env=env)
    cert_path = d / "cert-path"
    cert_path.mkdir()
    for src, name in ((pki.ca_file, "ca.pem"), (client_crt, "cert.pem"), (d / "tpm.key", "key.pem")):
        shutil.copy(src, cert_path / name)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    dead = free_port()
    values = {
        "tpm_key": d / "tpm.key", "pw_key": d / "pw.key", "pw_file": d / "pw.txt", "no_pw_file": d / "no-pw.txt",
        "client_crt": client_crt,
        "ca_crt": pki.ca_file, "server_crt": pki.server_cert, "server_key": pki.server_key, "soft_crt": soft_crt,
        "soft_key": soft_key, "csr": d / "req.csr", "ca_dir": d / "ca", "ek_pem": d / "ek.pem",
        "blob": d / "wrapped.blob", "policy": d / "policy.json", "cert_path": cert_path, "certs_dir": tpm_certs,
        "image": busybox_archive(d / "image.tar"), "registry": f"localhost:{registry.port}",
        "s_server": f"127.0.0.1:{s_server.port}", "dead": f"127.0.0.1:{dead}", "dead_port": dead,
        "busy": f"127.0.0.1:{busy.getsockname()[1]}", "busy_port": busy.getsockname()[1],
    }
    yield {**{k: str(v) for k, v in values.items()}, **env}  # upper case: the TPM's environment
    busy.close()


SLOW: dict[str, CuttingProxy] = {}  # a slow link to the registry per signal (support.peers)


def _big_archive(path: Path) -> Path:
    """A docker-archive whose one layer is 8 MB of incompressible bytes."""
    data = os.urandom(8 << 20)
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("blob")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]}}).encode()
    manifest = json.dumps([{"Config": "config.json", "RepoTags": ["slow:1"], "Layers": [f"{diff_id}/layer.tar"]}])
    with tarfile.open(path, "w") as tar:
        for name, blob in (("config.json", config), ("manifest.json", manifest.encode()),
                           (f"{diff_id}/layer.tar", layer_bytes)):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _locked_out(tpm, pw_file: Path) -> Path:
    """A password key on `tpm`, which is then put in lockout: one failed try allowed, an hour to recover."""
    key = pw_file.parent / "locked.key"
    _cli("key", "create", "--out", str(key), "--password-file", str(pw_file), env=tpm.env)
    (key.parent / "wrong.txt").write_text("not the password\n")
    subprocess.run(["tpm2_dictionarylockout", "--setup-parameters", "--max-tries=1", "--recovery-time=3600",
                    "--lockout-recovery-time=3600"], env={**os.environ, **tpm.env, "TPM2TOOLS_TCTI": tpm.tcti},
                   check=True, capture_output=True, timeout=60)
    for _ in range(2):  # the wrong password until the TPM says lockout
        wrong = subprocess.run([sys.executable, "-m", "tpmtls", "csr", "--key", str(key), "--subject", "CN=x", "--out",
                                str(key.parent / "x.csr"), "--password-file", str(key.parent / "wrong.txt")],
                               env={**os.environ, **tpm.env}, capture_output=True, text=True, timeout=120)
        if "lockout" in wrong.stderr:
            return key
    raise AssertionError(f"the TPM is not in lockout: {wrong.stderr}")


@pytest.fixture(scope="module")
def faults(world, tmp_path_factory, registry):
    """A TPM of its own, frozen (SIGSTOP) while the cases run; one in dictionary-attack lockout;
    the slow links; all gone afterwards."""
    from tpmtls.testing import TestTpm

    with TestTpm(tmp_path_factory.mktemp("frozen-tpm")) as frozen, \
            TestTpm(tmp_path_factory.mktemp("locked-tpm")) as locked:
        locked_key = _locked_out(locked, Path(world["pw_file"]))
        # ≤ 64 KiB per 50 ms up: an 8 MB layer takes seconds, a signal after 300 kB lands mid-way
        SLOW.update({signal.Signals(n).name: CuttingProxy(registry.port, throttle=0.05, signal_after=300_000)
                     for n in SIGNALS})
        values = {**world, "frozen_tcti": frozen.tcti, "frozen_bus": frozen.env.get("DBUS_SESSION_BUS_ADDRESS", ""),
                  **{f"slow_port_{name.lower()}": str(link.port) for name, link in SLOW.items()},
                  "locked_tcti": locked.tcti, "locked_bus": locked.env.get("DBUS_SESSION_BUS_ADDRESS", ""),
                  "locked_key": str(locked_key), "wrong_pw_file": str(locked_key.parent / "wrong.txt"),
                  "slow_image": str(_big_archive(tmp_path_factory.mktemp("slow") / "big.tar"))}
        pid = frozen.swtpm.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            yield values
        finally:
            os.kill(pid, signal.SIGCONT)
            for link in SLOW.values():
                link.close()


@pytest.fixture(scope="module")
def results(request, faults, tmp_path_factory) -> dict[str, Result]:
    """Every selected case, WORKERS at a time, each in its own directory."""
    wanted = [item.callspec.params["case_id"] for item in request.session.items
              if item.module is request.module and hasattr(item, "callspec") and "case_id" in item.callspec.params]
    root = tmp_path_factory.mktemp("cases")
    with ThreadPoolExecutor(WORKERS) as pool:
        done = pool.map(lambda n: (CASE_IDS[n], run_case(BY_ID[CASE_IDS[n]], root / f"c{n}", faults)),
                        [CASE_IDS.index(i) for i in wanted])
        out = dict(done)
    shutil.rmtree(root, ignore_errors=True)
    return out


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_every_failure_is_one_clean_line(case_id, results):
    result = results[case_id]
    assert not result.problems(), (f"{result.problems()}: rc={result.returncode} in {result.seconds:.1f} s\n"
                                   f"stderr: {result.stderr[-1500:]}\nstdout: {result.stdout[-500:]}")


def test_the_sweep_covers_every_command_with_hundreds_of_cases():
    swept = {c.id.split(" --")[0].split(" arg")[0] for c in CASES}
    for entry in entry_points():
        for command in commands(entry):
            assert any(s.startswith(command.name) for s in swept), f"{command.name} is not swept"
    bad_inputs = [c for c in CASES if not c.id.startswith("fault ")]
    assert len(bad_inputs) >= 400 and len(CASES) - len(bad_inputs) >= 10, (len(bad_inputs), len(CASES))
