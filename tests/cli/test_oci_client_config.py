"""`tpmtls certs containerd-hosts` and `tpmtls certs registries-conf`: what they write, where, and when
they refuse. (The real tools read these files in tests/registry/test_oci_clients.py.)"""

from __future__ import annotations

import pytest

PROXY = "127.0.0.1:5000"


def test_containerd_hosts_writes_the_host_table_and_removes_it_again(cli, tmp_path):
    certs_d = tmp_path / "certs.d"
    (certs_d / "other.example").mkdir(parents=True)
    (certs_d / "other.example" / "hosts.toml").write_text('server = "https://other.example"\n')
    written = cli("certs", "containerd-hosts", "registry.example:5000", "--proxy", PROXY, "--dir", str(certs_d))
    path = certs_d / "registry.example:5000" / "hosts.toml"
    text = path.read_text()
    assert text.startswith("# Written by tpmtls")
    assert 'server = "https://registry.example:5000"' in text
    assert '[host."http://127.0.0.1:5000"]\n  capabilities = ["pull", "resolve", "push"]' in text
    assert str(path) in written.stderr and "config_path" in written.stderr
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    cli("certs", "containerd-hosts", "registry.example:5000", "--proxy", PROXY, "--dir", str(certs_d), "--remove")
    assert not (certs_d / "registry.example:5000").exists()  # the directory it made goes too
    assert (certs_d / "other.example" / "hosts.toml").read_text() == 'server = "https://other.example"\n'


def test_registries_conf_mirror_for_pulls_and_insecure_only_on_loopback(cli, tmp_path):
    out = tmp_path / "90-tpmtls.conf"
    cli("certs", "registries-conf", "registry.example:5000", "--proxy", PROXY, "--out", str(out))
    text = out.read_text()
    assert text.startswith("# Written by tpmtls")
    tables = [t.strip() for t in text.split("[[")[1:]]
    assert tables[0].startswith('registry]]\nprefix = "registry.example:5000"\nlocation = "registry.example:5000"')
    assert "insecure" not in tables[0]  # never on the registry's own name
    assert tables[1].startswith('registry.mirror]]\nlocation = "127.0.0.1:5000"\ninsecure = true\n')
    assert tables[2] == 'registry]]\nlocation = "127.0.0.1:5000"\ninsecure = true'


def test_print_writes_nothing_and_names_the_default_place(cli, tmp_path):
    shown = cli("certs", "registries-conf", "registry.example", "--proxy", PROXY, "--print")
    assert shown.stdout.startswith("# Written by tpmtls") and 'prefix = "registry.example"' in shown.stdout
    assert "/etc/containers/registries.conf.d/90-tpmtls-registry.example.conf" in shown.stderr
    shown = cli("certs", "containerd-hosts", "registry.example:5000", "--proxy", "[::1]:5000", "--print")
    assert '[host."http://[::1]:5000"]' in shown.stdout
    assert "/etc/containerd/certs.d/registry.example:5000/hosts.toml" in shown.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_existing_file_is_replaced_only_with_force(cli, tmp_path):
    out = tmp_path / "mine.conf"
    out.write_text('[[registry]]\nlocation = "registry.example:5000"\n')
    args = ("certs", "registries-conf", "registry.example:5000", "--proxy", PROXY, "--out", str(out))
    line = cli.fails(*args)
    assert str(out) in line and "--force" in line and "not written by tpmtls" in line
    assert out.read_text() == '[[registry]]\nlocation = "registry.example:5000"\n'
    cli(*args, "--force")
    assert out.read_text().startswith("# Written by tpmtls")
    assert not list(tmp_path.glob("*.bak"))  # configuration, not key material: no backup
    again = cli(*args)  # the same content again: nothing to do, no --force needed
    assert "unchanged" in again.stderr
    line = cli.fails("certs", "registries-conf", "registry.example:5000", "--proxy", "127.0.0.1:5001", "--out", str(out))
    assert "earlier tpmtls configuration" in line


def test_remove_leaves_files_tpmtls_did_not_write(cli, tmp_path):
    out = tmp_path / "site.conf"
    out.write_text("# the site's own\n")
    args = ("certs", "registries-conf", "registry.example:5000", "--proxy", PROXY, "--out", str(out), "--remove")
    line = cli.fails(*args)
    assert str(out) in line and "not written by tpmtls" in line
    assert out.exists()
    cli(*args, "--force")
    assert not out.exists()
    absent = cli(*args)
    assert "nothing to remove" in absent.stderr


@pytest.mark.parametrize("args, words", [
    (["containerd-hosts", "https://registry.example:5000", "--proxy", PROXY], "REG[:PORT]"),
    (["containerd-hosts", "registry.example:5000/team", "--proxy", PROXY], "REG[:PORT]"),
    (["containerd-hosts", "registry.example:99999", "--proxy", PROXY], "REG[:PORT]"),
    (["containerd-hosts", "registry.example", "--proxy", "0.0.0.0:5000"], "not a loopback address"),
    (["containerd-hosts", "registry.example", "--proxy", "10.1.2.3:5000"], "not a loopback address"),
    (["containerd-hosts", "registry.example", "--proxy", "localhost:5000"], "127.0.0.1:PORT"),
    (["containerd-hosts", "registry.example", "--proxy", "127.0.0.1"], "127.0.0.1:PORT"),
    (["containerd-hosts", "registry.example", "--proxy", PROXY, "--dir", "no-such-dir"], "no such directory"),
    (["registries-conf", "registry.example", "--proxy", "[::1]:5000"], "IPv6"),
    (["registries-conf", "registry.example", "--proxy", PROXY, "--out", "no-such-dir/x.conf"], "no such directory"),
    (["registries-conf", "registry.example", "--proxy", PROXY, "--print", "--remove"], "not allowed with"),
])
def test_bad_input_is_one_line(args, words, cli):
    line = cli.fails("certs", *args)
    assert words in line, line
