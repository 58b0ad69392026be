"""`python -m benchmarks proxy`: cold pulls of a multi-layer image by docker, containerd's ctr and
podman, each through `tpmtls proxy` (TPM key, mTLS registry) and straight from a plain-HTTP
loopback registry (that tool's ceiling: no TLS, no proxy), plus `skopeo copy` with a software
key, in one run, with the upstream TLS handshakes and TPM signatures each proxied pull cost."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .lab import Lab, environment


def _run(argv: list[str], env: dict[str, str], timeout: float = 900) -> float:
    started = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed: {proc.stderr.strip()[-400:]}")
    return time.monotonic() - started


class _PlainRegistry:
    """`docker-registry serve` on loopback without TLS: what dockerd pulls from fastest."""

    def __init__(self, work: Path, stack: ExitStack) -> None:
        from tpmtls.testing import free_port

        self.port = free_port()
        work.mkdir(parents=True)
        config = work / "config.yml"
        config.write_text("\n".join([
            "version: 0.1", "log:", "  level: warn", "  accesslog:", "    disabled: true",
            "storage:", "  filesystem:", f"    rootdirectory: {work / 'data'}",
            "http:", f"  addr: 127.0.0.1:{self.port}", ""]))
        log = open(work / "registry.log", "wb")
        stack.callback(log.close)
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        stack.callback(self.stop)
        _wait_port(self.port, self.proc, "docker-registry")

    def stop(self) -> None:
        _stop(self.proc)


class _Proxy:
    """`python -m tpmtls proxy` as its own process (its RSS and CPU are its own)."""

    def __init__(self, work: Path, env: dict[str, str], upstream: str, cert_dir: Path, stack: ExitStack) -> None:
        from tpmtls.testing import free_port

        self.port = free_port()
        self.log = work / "proxy.log"
        out = open(self.log, "wb")
        stack.callback(out.close)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tpmtls", "proxy", "--upstream", upstream, "--listen", f"127.0.0.1:{self.port}",
             "--cert-dir", str(cert_dir)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
        stack.callback(self.stop)
        _wait_port(self.port, self.proc, "tpmtls proxy")

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_tpmtls/status", timeout=10) as r:  # noqa: S310
            return dict(json.loads(r.read()))

    def stop(self) -> None:
        _stop(self.proc)


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen within 60 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class _Client:
    """One row: how to pull the image cold, and how to make the next pull cold again."""

    name: str
    tool: str
    route: str  # "plain" (the tool's ceiling), "proxy" (TPM key via tpmtls proxy) or "direct"
    pull: Callable[[], float]
    clean: Callable[[], object]
    seconds: list[float] = field(default_factory=list)


def _clients(work: Path, stack: ExitStack, env: dict[str, str], plain: str, upstream: str, proxy_at: str,
             software_certs: Path) -> list[_Client]:
    """docker, ctr and podman pulls, each from the plain registry and through the proxy, and skopeo direct.

    ctr and podman keep the registry's own name: containerd through hosts.toml, podman through a
    registries.conf.d drop-in, both written by tpmtls.docker.oci_clients as the commands write them.
    """
    from tpmtls.docker.oci_clients import containerd_hosts, registries_conf, write_config
    from tpmtls.lab import Dockerd
    from tpmtls.lab.containerd import Containerd
    from tpmtls.lab.containers import ContainersTools

    denv = {**env, **stack.enter_context(Dockerd(work / "dockerd")).env}
    hosts = work / "certs.d"
    hosts.mkdir()
    write_config(containerd_hosts(upstream, proxy_at, hosts))
    ctd = stack.enter_context(Containerd(hosts, work / "containerd"))
    tools = stack.enter_context(ContainersTools(work / "containers"))
    write_config(registries_conf(upstream, proxy_at, tools.dropin_dir / "90-tpmtls.conf"))
    policy = ["--signature-policy", str(tools.policy)]

    def timed(run: Callable[[], object]) -> Callable[[], float]:
        def pull() -> float:
            started = time.monotonic()
            run()
            return time.monotonic() - started
        return pull

    proxied = f"127.0.0.1:{proxy_at.rsplit(':', 1)[1]}/bench:1"
    dest = work / "skopeo-dir"
    return [
        _Client("docker pull, plain registry (ceiling)", "docker", "plain",
                partial(_run, ["docker", "pull", f"{plain}/bench:1"], denv),
                partial(_run, ["docker", "rmi", f"{plain}/bench:1"], denv)),
        _Client("docker pull via tpmtls proxy (TPM key)", "docker", "proxy",
                partial(_run, ["docker", "pull", proxied], denv), partial(_run, ["docker", "rmi", proxied], denv)),
        _Client("ctr pull, plain registry", "ctr", "plain",
                timed(partial(ctd.ctr, "image", "pull", "--snapshotter", "native", "--plain-http", f"{plain}/bench:1")),
                partial(ctd.ctr, "image", "rm", "--sync", f"{plain}/bench:1")),
        _Client("ctr pull by name, hosts.toml + tpmtls proxy", "ctr", "proxy",
                timed(partial(ctd.ctr, "image", "pull", "--snapshotter", "native", "--hosts-dir", str(hosts),
                              f"{upstream}/bench:1")),
                partial(ctd.ctr, "image", "rm", "--sync", f"{upstream}/bench:1")),
        _Client("podman pull, plain registry", "podman", "plain",
                timed(partial(tools.podman, "pull", "-q", *policy, "--tls-verify=false", f"{plain}/bench:1")),
                partial(tools.podman, "rmi", f"{plain}/bench:1")),
        _Client("podman pull by name, registries.conf.d + tpmtls proxy", "podman", "proxy",
                timed(partial(tools.podman, "pull", "-q", *policy, f"{upstream}/bench:1")),
                partial(tools.podman, "rmi", f"{upstream}/bench:1")),
        _Client("skopeo copy to dir: (software key)", "skopeo", "direct",
                partial(_run, ["skopeo", "copy", "--insecure-policy", "--src-cert-dir", str(software_certs),
                               f"docker://{upstream}/bench:1", f"dir:{dest}"], env),
                partial(shutil.rmtree, dest, ignore_errors=True)),
    ]


def proxy(args: Any) -> int:
    from tpmtls.lab import Registry
    from tpmtls.testing import TpmTiming

    from .content import random_image

    timing = TpmTiming.with_sign(args.tpm_latency) if args.tpm_latency else None
    with ExitStack() as stack:
        import tempfile

        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tpmtls-bench-")))
        lab = Lab(work, stack, timing)
        dirs = lab.cert_dirs()
        image, size = random_image(work / "image.tar", args.size_mb, args.layers)
        mb = size / 1e6
        env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
        mtls = stack.enter_context(Registry(lab.server_cert, lab.server_key, lab.ca.cert_path, work / "mtls"))
        plain = _PlainRegistry(work / "plain", stack)
        upstream = f"localhost:{mtls.port}"
        _run(["skopeo", "copy", "--insecure-policy", "--dest-cert-dir", str(dirs["software"]),
              f"docker-archive:{image}", f"docker://{upstream}/bench:1"], env)
        _run(["skopeo", "copy", "--insecure-policy", "--dest-tls-verify=false", f"docker-archive:{image}",
              f"docker://127.0.0.1:{plain.port}/bench:1"], env)
        prox = _Proxy(work, {**lab.worker_env()}, upstream, dirs["tpm"], stack)
        clients = _clients(work, stack, env, f"127.0.0.1:{plain.port}", upstream, f"127.0.0.1:{prox.port}",
                           dirs["software"])
        print(f"image: {mb:.0f} MB in {args.layers} random layers; {args.rounds} cold pulls each; "
              f"TPM: {'TPM2_Sign %g ms' % args.tpm_latency if timing else 'swtpm speed'}", flush=True)
        per_pull: list[dict[str, Any]] = []
        for _ in range(args.rounds):
            for client in clients:
                before = prox.status() if client.route == "proxy" else None
                client.seconds.append(client.pull())
                if before is not None:
                    after = prox.status()
                    per_pull.append({"tool": client.tool, **{k: after[k] - before[k] for k in (
                        "upstream_handshakes", "full_handshakes", "tpm_signatures", "requests")}})
                client.clean()  # the next pull is cold again
        final = prox.status()
    rows = _table(clients, mb)
    print()
    for i, p in enumerate(per_pull, 1):
        print(f"proxied pull {i} ({p['tool']}): {p['requests']} requests, {p['upstream_handshakes']} upstream "
              f"connections opened ({p['full_handshakes']} full handshakes), {p['tpm_signatures']} TPM signatures")
    print(f"proxy total: {final['requests']} requests, {final['upstream_handshakes']} upstream connections, "
          f"{final['tpm_signatures']} TPM signatures (incl. its start-up check)")
    for row in rows:
        if row["route"] == "proxy":
            print(f"{row['tool']} via proxy / {row['tool']} from the plain registry: {row['x_ceiling']:.2f} x the "
                  "throughput (target >= 0.95)")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": environment(), "mb": round(mb), "layers": args.layers,
                                               "tpm_sign_ms": args.tpm_latency, "results": rows,
                                               "per_pull": per_pull, "proxy_status": final}, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _table(clients: list[_Client], mb: float) -> list[dict[str, Any]]:
    """Rows with medians; `x_ceiling` against the same tool's pull from the plain registry (docker's for skopeo)."""
    medians = {(c.tool, c.route): statistics.median(c.seconds) for c in clients}
    rows = []
    print()
    print("| client | median s | MB/s | x its plain pull |")
    print("|---|---:|---:|---:|")
    for c in clients:
        median = medians[(c.tool, c.route)]
        ceiling = medians.get((c.tool, "plain"), medians[("docker", "plain")])
        row = {"client": c.name, "tool": c.tool, "route": c.route, "seconds": [round(v, 2) for v in c.seconds],
               "median_s": round(median, 2), "mb_per_s": round(mb / median, 1), "x_ceiling": round(ceiling / median, 2)}
        rows.append(row)
        print(f"| {c.name} | {median:.2f} | {row['mb_per_s']:.1f} | {row['x_ceiling']:.2f} |")
    return rows


def register(sub: Any) -> None:
    p = sub.add_parser("proxy", help="docker, ctr and podman pulls through tpmtls proxy vs a plain registry; skopeo")
    p.add_argument("--size-mb", type=int, default=200, help="image size (random, incompressible)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="cold pulls per client")
    p.add_argument("--tpm-latency", type=float, default=0, metavar="MS",
                   help="TPM2_Sign takes MS milliseconds (hardware-paced TPM); 0: swtpm speed")
    p.add_argument("--json", metavar="FILE")
    p.set_defaults(func=proxy)
