"""The `tpmtls` command map: every command and subcommand listed in --help, each handled by
its own top-level command's module, and `enroll`'s first word (a host, or `policy`)."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from tpmtls.cli import build_parser

COMMANDS = {
    "doctor": [], "key": ["create", "import", "show", "persist", "wrap", "import-wrapped", "ek"], "csr": [],
    "connect": [], "ca": ["init", "issue", "revoke", "crl"],
    "certs": ["install", "daemon-config", "env", "nginx-front", "containerd-hosts", "registries-conf"],
    "proxy": [], "daemon-proxy": [], "enroll": ["policy"], "enroll-agent": [], "enroll-server": [], "quickstart": [],
    "completion": [],
}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0]._name_parser_map) if actions else {}


def help_of(parser: argparse.ArgumentParser) -> str:
    return parser.format_help()


def test_help_lists_every_command_and_subcommand():
    top = build_parser()
    commands = subparsers(top)
    assert list(commands) == list(COMMANDS)
    text = help_of(top)
    for name in COMMANDS:
        assert f"\n    {name}" in text, name
    for name, subs in COMMANDS.items():
        assert list(subparsers(commands[name])) == subs, name
        sub_help = help_of(commands[name])
        for sub in subs:
            assert f"\n    {sub}" in sub_help, (name, sub)


def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = subparsers(parser)
    if parser.get_default("func") is not None:
        yield path, parser.get_default("func")
    for name, sub in subs.items():
        yield from leaves(sub, (*path, name))


def test_each_command_is_handled_by_its_own_module():
    """No registration across files: `key wrap` runs in cli/key.py, `certs env` in cli/certs.py …"""
    found = list(leaves(build_parser()))
    assert len(found) == 1 + sum(len(s) for s in COMMANDS.values()) + len([s for s in COMMANDS.values() if not s])
    for path, func in found:
        assert func.__module__ == "tpmtls.cli." + path[0].replace("-", "_"), (path, func.__module__)


def parse(*argv: str) -> argparse.Namespace | str:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(list(argv))
    except SystemExit as e:
        assert e.code == 2
        return err.getvalue().strip()


@pytest.mark.parametrize("argv, func, host, store", [
    (["enroll", "registry.example:2376", "--store", "S"], "run", "registry.example:2376", "S"),
    (["enroll", "--store", "S", "docker1"], "run", "docker1", "S"),
    (["enroll", "[::1]:2376", "--store=S", "--expect-fingerprint", "ab"], "run", "[::1]:2376", "S"),
    (["enroll", "policy:2376", "--store", "S"], "run", "policy:2376", "S"),  # a daemon called "policy"
    (["enroll", "--acme", "https://ca.example/dir"], "run", None, None),
    (["enroll", "policy", "--out", "p.json"], "run_policy", None, None),
    (["enroll", "policy", "--pcrs", "sha256:0", "--out", "p.json", "--force"], "run_policy", None, None),
])
def test_enroll_first_word_is_a_host_or_policy(argv, func, host, store):
    args = parse(*argv)
    assert isinstance(args, argparse.Namespace), args
    assert (args.func.__name__, args.host, args.store) == (func, host, store)


def test_options_of_enroll_before_policy_are_kept():
    args = parse("enroll", "--force", "--tcti", "swtpm:port=1", "policy", "--out", "p.json")
    assert isinstance(args, argparse.Namespace)
    assert (args.func.__name__, args.force, args.tcti) == ("run_policy", True, "swtpm:port=1")


@pytest.mark.parametrize("argv, words", [
    (["enroll", "docker1", "extra", "--store", "S"], "unrecognized arguments: extra"),
    (["enroll", "docker1", "--store", "S", "--bogus"], "unrecognized arguments: --bogus"),
    (["enroll", "policy"], "the following arguments are required: --out"),
    (["enroll", "docker1", "policy", "--out", "p.json"], "unrecognized arguments: policy"),
])
def test_enroll_usage_errors(argv, words):
    message = parse(*argv)
    assert isinstance(message, str) and words in message and "\n" not in message


def test_enroll_policy_with_a_store_names_the_escape(cli):
    line = cli.fails("enroll", "policy", "--store", "S", "--out", "p.json")
    assert "tpmtls enroll policy:2376 --store DIR" in line
    assert cli.fails("enroll", "--store", "S", "policy", "--out", "p.json") == line


@pytest.mark.parametrize("line, handler", [
    ("doctor", "doctor.run"),
    ("--tcti swtpm:port=2321 key create --alg ecc-p384 --out k.key --password-file pw", "key.create"),
    ("key import soft.pem --out k.key", "key.import_"),
    ("key show k.key --pubout", "key.show"),
    ("key persist k.key 0x81000010", "key.persist"),
    ("key wrap soft.pem --ek EKCERT.pem --ek-roots makers.pem --out blob", "key.wrap"),
    ("key wrap soft.pem --ek EK.pem --ek-unverified --out blob", "key.wrap"),
    ("key import-wrapped blob --out k.key", "key.import_blob"),
    ("key ek --out EK.pem", "key.ek"),
    ("csr --key k.key --subject CN=client --san DNS:x --out c.csr", "csr.run"),
    ("connect h:443 --cert c --key k --cafile ca --tls1.2 --servername n", "connect.run"),
    ("ca init DIR --name NAME", "ca.init"),
    ("ca issue DIR --csr c.csr --server --san DNS:h,IP:127.0.0.1 --out c.crt", "ca.issue"),
    ("certs install registry:5000 --cert c --key k --ca ca --root /etc/tpmtls/certs.d", "certs.run_install"),
    ("certs daemon-config --cert c --key k --ca ca --host tcp://0.0.0.0:2376", "certs.run_daemon_config"),
    ("certs env h:2376 --cert-path DIR", "certs.run_env"),
    ("certs nginx-front --cert c --key k --ca ca", "certs.run_nginx_front"),
    ("certs nginx-front --cert c --key k --ca ca --crl ca.crl", "certs.run_nginx_front"),
    ("ca revoke DIR --serial 1f --reason keyCompromise", "ca.revoke"),
    ("ca revoke DIR --cert client.crt", "ca.revoke"),
    ("ca crl DIR --out ca.crl", "ca.crl"),
    ("ca crl DIR --out ca.crl --hours 24 --daemon --force", "ca.crl"),
    ("proxy --upstream registry:5000 --listen 127.0.0.1:5001 --cert-dir D --resolve registry:5000:10.0.0.1",
     "proxy.run"),
    ("daemon-proxy --upstream tcp://h:2376 --listen unix:///run/tpmtls/docker.sock --cert-path D",
     "daemon_proxy.run"),
    ("enroll-agent --ca ca --state DIR", "enroll_agent.run"),
    ("enroll h:2376 --store DIR --expect-fingerprint ab", "enroll.run"),
    ("enroll h:2376 --store DIR --trust-on-first-use", "enroll.run"),
    ("enroll --renew --cert-out client.cert --if-due", "enroll.run"),
    ("enroll --renew --store DIR --daemon", "enroll.run"),
    ("enroll --acme https://ca.example/acme/directory", "enroll.run"),
    ("enroll policy --out policy.json", "enroll.run_policy"),
    ("enroll-server --ca DIR --ek-roots roots.pem --policy policy.json", "enroll_server.run"),
    ("quickstart", "quickstart.run"),
    ("completion bash", "completion.run"),
    ("doctor --format json", "doctor.run"),
    ("proxy --upstream registry:5000 --listen fd://", "proxy.run"),
    ("certs install registry:5000 --cert c --key k --ca ca --group tpmtls", "certs.run_install"),
])
def test_documented_spellings_parse_to_their_handler(line, handler):
    args = parse(*line.split())
    assert isinstance(args, argparse.Namespace), args
    assert f"{args.func.__module__.rsplit('.', 1)[1]}.{args.func.__name__}" == handler
