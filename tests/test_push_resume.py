"""A dropped connection mid-layer: the push resumes where the registry's copy ends."""

from __future__ import annotations

import json
import resource
import socket
import subprocess
import sys
import threading

from tpmtls.registry.push import BlobCache
from tpmtls.testing import build_docker_archive

import tpmtls

from peers import clean_env
from registry_env import env_for, skopeo_layers, skopeo_raw

LAYER = 24_000_000  # random, so gzip cannot shrink it: ~24 MB on the wire


class CuttingProxy:
    """Loopback TCP proxy counting client→registry bytes. Once a connection has carried
    more than `cut_after` bytes it is cut, once: `inside` a request (in the middle of the
    upload data) or `after` the registry's next response (between two requests)."""

    def __init__(self, upstream_port: int, cut_after: int, where: str) -> None:
        self.upstream, self.cut_after, self.where = upstream_port, cut_after, where
        self.sent = 0
        self.cuts = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self.listener.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=30)
            client.settimeout(30)
            state = {"carried": 0, "armed": False}
            threading.Thread(target=self._pump, args=(client, upstream, True, state), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False, state), daemon=True).start()

    def _cut_now(self, state: dict, upward: bool) -> bool:
        with self.lock:
            if self.cuts:
                return False
            if upward and state["carried"] > self.cut_after:
                if self.where == "inside":
                    self.cuts += 1
                    return True
                state["armed"] = True
            if not upward and state["armed"]:
                self.cuts += 1
                return True
        return False

    def _pump(self, src: socket.socket, dst: socket.socket, upward: bool, state: dict) -> None:
        try:
            while not self.stop.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if upward:
                    with self.lock:
                        self.sent += len(data)
                        state["carried"] += len(data)
                    if self._cut_now(state, True):
                        break
                    dst.sendall(data)
                else:
                    dst.sendall(data)
                    if self._cut_now(state, False):
                        break
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self.thread.join(5)


def push_through(where: str, registry, tpm_certs, soft_certs, test_tpm, tmp_path) -> tuple[int, int]:
    image = build_docker_archive(tmp_path / "img.tar", [{"big.bin": LAYER}])
    proxy = CuttingProxy(registry.port, cut_after=LAYER // 2, where=where)
    try:
        result = tpmtls.push(f"docker-archive:{image}", f"localhost:{proxy.port}/cut-{where}:1", cert_dir=tpm_certs,
                             tcti=test_tpm.tcti, cache=BlobCache(tmp_path / "c.json"))
    finally:
        proxy.close()
    assert proxy.cuts == 1
    ref = f"localhost:{registry.port}/cut-{where}:1"
    raw, digest = skopeo_raw(ref, soft_certs)
    assert result.digest == digest
    layer = json.loads(raw)["layers"][0]
    assert skopeo_layers(ref, soft_certs) == [layer["digest"]]  # complete and verified by the registry
    print(f"cut {where}: {proxy.sent / 1e6:.1f} MB sent for a {layer['size'] / 1e6:.1f} MB layer")
    return proxy.sent, layer["size"]


def test_cut_between_requests_resumes(registry, tpm_certs, soft_certs, test_tpm, tmp_path):
    sent, size = push_through("after", registry, tpm_certs, soft_certs, test_tpm, tmp_path)
    assert sent < 1.5 * size  # resumed on the same upload, not restarted


def test_cut_inside_a_request_still_completes(registry, tpm_certs, soft_certs, test_tpm, tmp_path):
    """distribution 2.8 cancels an upload whose size passed its signed offset (see
    RegistryClient._resync): the push completes on a fresh upload, costing what was sent."""
    sent, size = push_through("inside", registry, tpm_certs, soft_certs, test_tpm, tmp_path)
    assert sent < 2.1 * size


def test_200mb_layer_memory_stays_flat(registry, tpm_certs, test_tpm, tmp_path):
    """Peak RSS growth of a 200 MB push stays under 64 MB (measured in a child process)."""
    image = build_docker_archive(tmp_path / "big.tar", [{"big.bin": 200_000_000}])
    script = f"""
import resource, tpmtls
from tpmtls.registry.push import BlobCache
from tpmtls.registry.sources import open_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = tpmtls.push("docker-archive:{image}", "localhost:{registry.port}/big:1", cert_dir="{tpm_certs}",
                cache=BlobCache(__import__("pathlib").Path("{tmp_path}/c.json")))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, r.bytes_sent)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**clean_env(), **env_for(test_tpm, tmp_path)})
    assert proc.returncode == 0, proc.stderr
    before_kb, after_kb, sent = map(int, proc.stdout.split())
    print(f"RSS before {before_kb / 1024:.1f} MB, peak {after_kb / 1024:.1f} MB, sent {sent / 1e6:.1f} MB")
    assert sent > 200_000_000
    assert (after_kb - before_kb) / 1024 < 64
    assert resource  # the parent's own RSS is not what is measured
