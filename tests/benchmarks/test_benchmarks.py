"""The benchmarks run and report what they promise (no timing assertions: numbers go in docs/performance.md)."""

from __future__ import annotations

import pytest

from support.bench import bench
from support.commands import require
from support.device import require_device


def test_handshakes_benchmark_runs_every_mode(tmp_path):
    require("openssl", "swtpm", "tpm2-abrmd")
    data = bench("handshakes", "--seconds", "0.5", "--threads", "1,2", "--alg", "ecc-p256", "--path",
                 "stdlib,pyopenssl", "--resume", tmp_path=tmp_path)
    modes = {r["mode"] for r in data["results"]}
    assert modes == {"software", "tpmtls", "open-per-sign", "tpm2-openssl", "software+resume", "tpmtls+resume"}
    for r in data["results"]:
        assert set(r) >= {"mode", "alg", "tls", "path", "threads", "handshakes_per_s", "p50_ms", "p99_ms", "errors"}
        if r["mode"] in ("software", "tpmtls", "open-per-sign"):
            assert r["errors"] == 0 and r["handshakes_per_s"] > 0, r
        if r["mode"] == "tpmtls":
            assert r["tpm_signatures"] == r["count"]  # one TPM signature per handshake
    assert data["raw_sign_per_s"]["ecc-p256"]["1"] > 0
    assert {"machine", "cpus", "system_openssl", "cryptography_openssl"} <= set(data["env"])


def test_handshakes_benchmark_on_both_tpm_paths(tmp_path):
    """`--tpm tabrmd,device`: tpmtls through tpm2-abrmd and through /dev/tpmrm0, TPM commands per signature counted."""
    require("openssl", "swtpm", "tpm2-abrmd")
    require_device()
    data = bench("handshakes", "--tpm", "tabrmd,device", "--modes", "tpmtls", "--seconds", "0.5", "--threads", "1",
                 "--alg", "ecc-p256", "--path", "stdlib", tmp_path=tmp_path)
    by = {r["mode"]: r for r in data["results"]}
    assert set(by) == {"tpmtls", "tpmtls@device"} and by["tpmtls@device"]["tpm"] == "device"
    for r in by.values():
        assert r["errors"] == 0 and r["tpm_signatures"] == r["count"] > 0
        # the floor through a resource manager: ContextLoad, Sign, ContextSave, FlushContext of the key
        assert r["tpm_commands_per_signature"] <= 4.4, r["tpm_commands"]


@pytest.mark.parametrize("tpm_path", ["tabrmd", "device"])
def test_pool_benchmark(tpm_path, tmp_path):
    if tpm_path == "device":
        require_device()
    data = bench("pool", "--tpm", tpm_path, "--sizes", "1,2", "--threads", "1,4", "--seconds", "0.3", tmp_path=tmp_path)
    assert len(data["results"]) == 4
    assert all(r["errors"] == 0 and r["signatures_per_s"] > 0 and r["tpm"] == tpm_path for r in data["results"])
    assert all(r["tpm_commands_per_signature"] <= 4.4 for r in data["results"]), data["results"]


def test_push_benchmark_random_archive(tmp_path):
    require("skopeo", "docker-registry")
    data = bench("push", "--content", "random", "--sources", "archive", "--size-mb", "4", "--layers", "2",
                 tmp_path=tmp_path)
    runs = {(r["tool"], r["run"]): r for r in data["results"]}
    assert set(runs) == {("tpmtls-push", "cold"), ("tpmtls-push", "warm"), ("skopeo", "cold"), ("skopeo", "warm")}
    assert all(r["ok"] and r["peak_rss_mb"] > 0 for r in runs.values()), runs
    assert data["compressor"].startswith("isal")


@pytest.mark.machine  # the benchmark starts dockerd
def test_push_benchmark_real_files_from_the_daemon(tmp_path):
    """Real (compressible) files, from a docker-archive and from dockerd, next to skopeo's docker-daemon:."""
    require("skopeo", "docker-registry", "dockerd", "docker")
    data = bench("push", "--content", "real", "--sources", "archive,daemon", "--real-layers", "1", tmp_path=tmp_path)
    runs = {(r["source"], r["tool"], r["run"]): r for r in data["results"]}
    assert {(s, t) for s, t, _ in runs} == {(s, t) for s in ("archive", "daemon") for t in ("tpmtls-push", "skopeo")}
    assert all(r["ok"] and r["content"] == "real" and r["mb"] > 5 for r in runs.values()), runs


@pytest.mark.parametrize("tpm_path", ["tabrmd", "device"])
def test_connections_benchmark_at_tpm_latency(tpm_path, tmp_path):
    """`connections --tpm-latency`: resumption keeps signatures at one per server; a chart is written."""
    require("openssl", "swtpm", "tpm2-abrmd")
    if tpm_path == "device":
        require_device()
    data = bench("connections", "--tpm", tpm_path, "--tpm-latency", "20", "--count", "6", "--threads", "4",
                 "--servers", "2", "--per-thread", "3", tmp_path=tmp_path)
    by = {r["mode"]: r for r in data["sequential"]}
    assert all(r["errors"] == 0 for r in by.values())
    assert by["software"]["tpm_signatures"] == 0
    assert by["tpmtls"]["tpm_signatures"] == 1  # one full handshake, then resumed
    assert by["tpmtls, resume=False"]["tpm_signatures"] == 6
    fan = data["fan_out"]
    assert fan["errors"] == 0 and fan["tpm_signatures"] <= fan["servers"] * fan["pool_contexts"]
    assert (tmp_path / "result.png").read_bytes().startswith(b"\x89PNG")
