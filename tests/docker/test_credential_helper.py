"""docker-credential-tpmtls: the credential-helper protocol (docker/docker-credential-helpers'
credentials.go, error.go) run as its own process, with secrets sealed to the test TPM."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import tpmtls
from support import ROOT
from tpmtls.tpm.seal import MAX_SEALED, seal, srk_name, unseal

NOT_FOUND = "credentials not found in native keychain"
SECRET = "s3cret-Pa55word-for-the-grep-test"
TOKEN = "eyJhbGciOiJFUzI1NiJ9." + "identity-token-longer-than-a-sealed-object-holds." * 4


class Helper:
    """`python -m tpmtls.cli.credential_helper ACTION` with the test TPM and a private store."""

    def __init__(self, env: dict[str, str], store: Path) -> None:
        self.env = {**os.environ, **env, "TPMTLS_CREDENTIALS_FILE": str(store)}
        self.env.pop("OPENSSL_CONF", None)
        self.env.pop("DOCKER_CONFIG", None)
        self.store = store
        self.outputs: list[str] = []

    def run(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "tpmtls.cli.credential_helper", *args], input=stdin,
                              capture_output=True, text=True, env={**self.env, **(env or {})}, timeout=120)
        assert proc.stderr == "", proc.stderr  # the protocol answers on stdout, errors included
        if args != ("get",):
            self.outputs.append(proc.stdout)
        return proc

    def ok(self, *args: str, stdin: str = "") -> str:
        proc = self.run(*args, stdin=stdin)
        assert proc.returncode == 0, proc.stdout
        return proc.stdout

    def fails(self, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> str:
        """Exit 1 and exactly one line on stdout (where docker reads helper errors)."""
        proc = self.run(*args, stdin=stdin, env=env)
        assert proc.returncode == 1, proc.stdout
        lines = proc.stdout.strip().splitlines()
        assert len(lines) == 1, proc.stdout
        return lines[0]

    def store_creds(self, url: str, user: str, secret: str) -> None:
        self.ok("store", stdin=json.dumps({"ServerURL": url, "Username": user, "Secret": secret}))

    def get(self, url: str) -> dict[str, str]:
        return json.loads(self.ok("get", stdin=url + "\n"))


@pytest.fixture
def helper(test_tpm, tmp_path: Path) -> Helper:
    return Helper(test_tpm.env, tmp_path / "creds" / "tpmtls-credentials.json")


def test_version_and_usage(helper: Helper) -> None:
    assert helper.ok("version") == f"docker-credential-tpmtls (tpmtls) {tpmtls.__version__}\n"
    assert helper.ok("--version") == helper.ok("version")
    assert helper.fails() == "Usage: docker-credential-tpmtls <store|get|erase|list|version>"
    assert helper.fails("bogus") == "docker-credential-tpmtls: unknown action: bogus"


def test_round_trip_store_get_list_erase(helper: Helper) -> None:
    assert json.loads(helper.ok("list")) == {}
    helper.store_creds("127.0.0.1:5000", "pusher", SECRET)
    helper.store_creds("https://index.docker.io/v1/", "<token>", TOKEN)
    assert helper.get("127.0.0.1:5000") == {"ServerURL": "127.0.0.1:5000", "Username": "pusher", "Secret": SECRET}
    # `<token>` means the secret is an identity token; longer than one sealed object holds
    assert len(TOKEN) > MAX_SEALED
    assert helper.get("https://index.docker.io/v1/") == {"ServerURL": "https://index.docker.io/v1/",
                                                         "Username": "<token>", "Secret": TOKEN}
    assert json.loads(helper.ok("list")) == {"127.0.0.1:5000": "pusher", "https://index.docker.io/v1/": "<token>"}
    # the same registry named as a URL (how some clients ask) finds the host:port entry
    assert helper.get("https://127.0.0.1:5000/v2/")["Secret"] == SECRET
    # store again replaces
    helper.store_creds("127.0.0.1:5000", "other", SECRET + "2")
    assert helper.get("127.0.0.1:5000")["Username"] == "other"
    assert helper.ok("erase", stdin="127.0.0.1:5000\n") == ""
    assert json.loads(helper.ok("list")) == {"https://index.docker.io/v1/": "<token>"}
    assert helper.fails("get", stdin="127.0.0.1:5000\n") == NOT_FOUND
    assert helper.fails("erase", stdin="127.0.0.1:5000\n") == NOT_FOUND


def test_protocol_errors_are_the_exact_texts(helper: Helper) -> None:
    assert helper.fails("get", stdin="nowhere.example:443\n") == NOT_FOUND
    assert helper.fails("get", stdin="\n") == "no credentials server URL"
    assert helper.fails("erase", stdin="") == "no credentials server URL"
    assert helper.fails("store", stdin='{"ServerURL": "", "Username": "u", "Secret": "s"}') == "no credentials server URL"
    assert helper.fails("store", stdin='{"ServerURL": "h:1", "Secret": "s"}') == "no credentials username"
    assert "not JSON" in helper.fails("store", stdin="h:1 u s")
    # Go's encoding/json matches field names case-insensitively; so do we
    helper.ok("store", stdin='{"serverurl": "h:1", "username": "u", "secret": "s"}')
    assert helper.get("h:1")["Username"] == "u"
    assert not helper.store.with_name(helper.store.name + ".tmp").exists()


def test_file_is_0600_atomic_and_holds_no_secret(helper: Helper) -> None:
    helper.store_creds("127.0.0.1:5000", "pusher", SECRET)
    helper.store_creds("registry.example:443", "<token>", TOKEN)
    mode = stat.S_IMODE(helper.store.stat().st_mode)
    assert mode == 0o600, oct(mode)
    raw = helper.store.read_bytes()
    for secret in (SECRET, TOKEN):
        for form in (secret.encode(), base64.b64encode(secret.encode()), base64.b64encode(f"pusher:{secret}".encode()),
                     secret.encode().hex().encode()):
            assert form not in raw
    # nothing left beside it (the lock is on the directory)
    assert sorted(p.name for p in helper.store.parent.iterdir()) == ["tpmtls-credentials.json"]
    # and no output but `get` ever carried it
    assert not any(SECRET in out or TOKEN in out for out in helper.outputs)


def test_copy_on_another_tpm_cannot_be_read(helper: Helper, fresh_tpm, tmp_path: Path) -> None:
    helper.store_creds("127.0.0.1:5000", "pusher", SECRET)
    copy = tmp_path / "elsewhere" / "tpmtls-credentials.json"
    copy.parent.mkdir()
    shutil.copy(helper.store, copy)
    other = Helper(fresh_tpm.env, copy)
    line = other.fails("get", stdin="127.0.0.1:5000\n")
    print(line)
    assert str(copy) in line and "another TPM" in line and "docker login 127.0.0.1:5000" in line
    assert SECRET not in line
    # even told that its SRK is the other TPM's, the TPM refuses the sealed object itself
    doc = json.loads(copy.read_text())
    mine = srk_name(tpmtls.connect(fresh_tpm.tcti))
    doc["entries"]["127.0.0.1:5000"]["sealed"]["srk"] = mine.hex()
    copy.write_text(json.dumps(doc))
    line = other.fails("get", stdin="127.0.0.1:5000\n")
    print(line)
    assert "cannot load the sealed object" in line and "integrity" in line and "another TPM" in line
    # the original still reads on its own TPM
    assert helper.get("127.0.0.1:5000")["Secret"] == SECRET


def test_entry_moved_to_another_server_fails_integrity(helper: Helper) -> None:
    helper.store_creds("a.example:443", "alice", SECRET)
    helper.store_creds("b.example:443", "bob", "bobs-password")
    doc = json.loads(helper.store.read_text())
    doc["entries"]["b.example:443"] = dict(doc["entries"]["a.example:443"], username="bob")
    helper.store.write_text(json.dumps(doc))
    line = helper.fails("get", stdin="b.example:443")
    assert "integrity check" in line and "b.example:443" in line


@pytest.mark.parametrize("content, words", [
    ("not json", "not a tpmtls credential store"),
    ('{"format": "tpmtls docker credentials", "version": 9, "entries": {}}', "version 9"),
    ('{"format": "tpmtls docker credentials", "version": 1, "entries": {"h:1": {"username": "u"}}}', "damaged"),
])
def test_bad_store_file_is_one_line(helper: Helper, content: str, words: str) -> None:
    helper.store.parent.mkdir(parents=True)
    helper.store.write_text(content)
    line = helper.fails("get", stdin="h:1")
    assert words in line and str(helper.store) in line


def test_tpm_unavailable_is_one_line(helper: Helper) -> None:
    helper.store_creds("h:1", "u", SECRET)
    line = helper.fails("get", stdin="h:1", env={"TPMTLS_TCTI": "swtpm:host=127.0.0.1,port=1"})
    assert "swtpm:host=127.0.0.1,port=1" in line and SECRET not in line
    # list needs no TPM: usernames are not secret
    assert json.loads(helper.run("list", env={"TPMTLS_TCTI": "swtpm:host=127.0.0.1,port=1"}).stdout) == {"h:1": "u"}


def test_concurrent_stores_keep_every_entry(helper: Helper) -> None:
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: helper.store_creds(f"host{i}:5000", f"user{i}", f"{SECRET}{i}"), range(6)))
    assert json.loads(helper.ok("list")) == {f"host{i}:5000": f"user{i}" for i in range(6)}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: helper.get(f"host{i}:5000"), range(6)))
    assert [a["Secret"] for a in answers] == [f"{SECRET}{i}" for i in range(6)]


def test_seal_limits_and_other_tpm_in_process(tpm, fresh_tpm) -> None:
    blob = seal(tpm, b"\x01" * MAX_SEALED)
    assert unseal(tpm, blob, "blob") == b"\x01" * MAX_SEALED
    with pytest.raises(tpmtls.UsageError, match="1 to 128 bytes"):
        seal(tpm, b"\x01" * (MAX_SEALED + 1))
    with pytest.raises(tpmtls.KeyFileError, match="blob: sealed to another TPM"):
        unseal(tpmtls.connect(fresh_tpm.tcti), blob, "blob")


class RecordingForwarder:
    """Between the swtpm TCTI and swtpm: data port and control port (port + 1) forwarded,
    every byte of the data channel (TPM commands and responses) recorded."""

    def __init__(self, upstream: int) -> None:
        import socket
        import threading

        from tpmtls.testing import free_port

        self.port = free_port(2)
        self.seen = bytearray()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listeners = [socket.create_server(("127.0.0.1", self.port + i)) for i in (0, 1)]
        for i, listener in enumerate(self._listeners):
            threading.Thread(target=self._accept, args=(listener, upstream + i, i == 0), daemon=True).start()

    def _accept(self, listener, upstream: int, record: bool) -> None:
        import socket
        import threading

        for _ in range(100):  # bounded: a test opens a handful of connections
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", upstream), timeout=30)
            self._socks += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst, record), daemon=True).start()

    def _pump(self, src, dst, record: bool) -> None:
        for _ in range(1_000_000):
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            if record:
                with self._lock:
                    self.seen += data
            try:
                dst.sendall(data)
            except OSError:
                break
        # swtpm serves one connection at a time: pass the close on, both ways
        for s in (src, dst):
            try:
                s.shutdown(2)
            except OSError:
                pass

    def close(self) -> None:
        for s in self._listeners + self._socks:
            s.close()


def test_sealed_key_crosses_the_tpm_bus_encrypted(tmp_path: Path) -> None:
    """Seal and unseal run in a session salted to the SRK with parameter encryption: the
    data never appears on the wire to the TPM, either way."""
    from support.commands import require

    require("swtpm")
    from tpmtls.testing import SwTpm

    marker = b"SEALED-MARKER-" + os.urandom(9).hex().encode()
    with SwTpm(tmp_path / "swtpm") as sw:
        fwd = RecordingForwarder(sw.port)
        pool = tpmtls.Pool(f"swtpm:host=127.0.0.1,port={fwd.port}", size=1)
        try:
            tpm = tpmtls.connect(pool=pool)
            blob = seal(tpm, marker)
            assert unseal(tpm, blob, "blob") == marker
            srk_x = pool.run("srk", lambda ctx: bytes(ctx.srk("ecc")[1].publicArea.unique.ecc.x))
        finally:
            pool.close()
            fwd.close()
    assert srk_x in fwd.seen  # the recorder sees the traffic (the SRK's public point, in clear)
    assert marker not in fwd.seen


def test_console_script_is_declared() -> None:
    """`pip install tpmtls` puts docker-credential-tpmtls on PATH, running the tested main()."""
    import re

    from tpmtls.cli import credential_helper

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^docker-credential-tpmtls = "tpmtls\.cli\.credential_helper:main"$', pyproject, re.M)
    assert callable(credential_helper.main)
