"""`python -m benchmarks proxy` runs and reports what it promises (numbers go in docs/proxy.md)."""

from __future__ import annotations

import pytest

from support.bench import bench
from support.commands import require


@pytest.mark.machine  # the benchmark starts dockerd
def test_proxy_benchmark_reports_each_client_beside_its_plain_pull_and_signatures_per_pull(tmp_path):
    require("skopeo", "docker-registry", "dockerd", "docker", "containerd", "ctr", "podman")
    data = bench("proxy", "--size-mb", "4", "--layers", "2", "--rounds", "2", tmp_path=tmp_path)
    routes = [(r["tool"], r["route"]) for r in data["results"]]
    assert routes == [("docker", "plain"), ("docker", "proxy"), ("ctr", "plain"), ("ctr", "proxy"),
                      ("podman", "plain"), ("podman", "proxy"), ("skopeo", "direct")]
    assert "ceiling" in data["results"][0]["client"]
    assert all(r["median_s"] > 0 and len(r["seconds"]) == 2 and r["x_ceiling"] > 0 for r in data["results"])
    assert [p["tool"] for p in data["per_pull"]] == ["docker", "ctr", "podman"] * 2
    for pull in data["per_pull"]:
        assert pull["requests"] > 0 and pull["tpm_signatures"] <= pull["upstream_handshakes"]
    # resumption: after the start-up check's full handshake, pulls open connections without signing
    assert data["proxy_status"]["tpm_signatures"] <= data["proxy_status"]["full_handshakes"] <= 2
