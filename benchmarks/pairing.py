"""`python -m benchmarks.pairing [--runs N]`: how long pairing and the dockerd hand-off take.

Each run: `tpmtls enroll-agent` under `systemd-socket-activate` on a fresh loopback port
(fresh state, real dockerd with private roots), `ensure_server_enrolled` from the
activating connection to the agent's 201, then the time until dockerd answers `/_ping`
on a connection that was made while the agent still held the socket (the hand-off).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tpmtls
from tpmtls.enroll.pairing_client import ensure_server_enrolled
from tpmtls.enroll.store import CertificateStore
from tpmtls.pki.ca import FileCA
from tpmtls.testing import TestTpm, free_port


def _agent(work: Path, store: CertificateStore, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    state, run_dir = work / "state", Path(tempfile.mkdtemp(prefix="tpb-", dir="/tmp"))  # short: unix sockets
    (work / "run").symlink_to(run_dir)  # found and removed by main() after the run
    state.mkdir(mode=0o700)
    (work / "empty.json").write_text("{}\n")
    extra = [f"--config-file={work / 'empty.json'}", "--iptables=false", "--ip6tables=false", "--bridge=none",
             "--storage-driver=vfs", f"--data-root={work / 'data'}", f"--exec-root={run_dir / 'exec'}",
             f"--pidfile={run_dir / 'docker.pid'}"]
    argv = ["systemd-socket-activate", "-l", f"127.0.0.1:{port}", "-E", "PYTHONPATH", "-E", "PATH",
            sys.executable, "-m", "tpmtls", "enroll-agent", "--ca", str(store.ca_dir / "ca.crt"), "--state", str(state),
            *[f"--dockerd-arg={a}" for a in extra]]
    log = open(work / "agent.log", "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    for _ in range(400):  # up to 20 s for the socket
        if b"Listening on" in (work / "agent.log").read_bytes():
            return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"systemd-socket-activate did not listen: {work / 'agent.log'}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pairing")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    import os

    enroll_ms, handoff_ms = [], []
    with TestTpm() as tpm:
        root = Path(tempfile.mkdtemp(prefix="tpmtls-pairing-bench-"))
        try:
            store = CertificateStore(root / "store")
            store.root.mkdir()
            FileCA.init(store.ca_dir, "pairing benchmark CA")
            store.ensure_client(tpm.tcti)
            env = {**os.environ, **tpm.env}
            env.pop("OPENSSL_CONF", None)
            for i in range(args.runs):
                work = root / f"run{i}"
                work.mkdir()
                port = free_port()
                proc = _agent(work, store, port, env)
                try:
                    waiting: list[socket.socket] = []
                    t0 = time.monotonic()
                    done = ensure_server_enrolled(
                        store, f"127.0.0.1:{port}", trust_on_first_use=True, tcti=tpm.tcti,
                        on_first_use=lambda _fp, w=waiting, p=port: w.append(
                            socket.create_connection(("127.0.0.1", p), 60)))
                    t1 = time.monotonic()
                    ctx = tpmtls.ssl_context(done.cert_path / "cert.pem", done.cert_path / "key.pem",
                                             done.cert_path / "ca.pem", tcti=tpm.tcti)
                    with ctx.wrap_socket(waiting[0], server_hostname="127.0.0.1") as tls:
                        tls.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                        reply = tls.recv(4096)
                    t2 = time.monotonic()
                    if b" 200 " not in reply:
                        raise RuntimeError(f"dockerd answered {reply[:100]!r}")
                    enroll_ms.append((t1 - t0) * 1000)
                    handoff_ms.append((t2 - t1) * 1000)
                finally:
                    _stop(proc)
                    shutil.rmtree((work / "run").resolve(), ignore_errors=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    for label, values in (("enroll: activating connection → 201", enroll_ms),
                          ("hand-off: 201 → dockerd answers the waiting client", handoff_ms)):
        print(f"{label}: median {statistics.median(values):.0f} ms, min {min(values):.0f}, max {max(values):.0f} "
              f"({len(values)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
