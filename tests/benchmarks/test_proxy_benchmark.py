"""`python -m benchmarks proxy` runs and reports what it promises (numbers go in docs/proxy.md)."""

from __future__ import annotations

from support.bench import bench
from support.commands import require


def test_proxy_benchmark_reports_three_clients_and_signatures_per_pull(tmp_path):
    require("skopeo", "docker-registry", "dockerd", "docker")
    data = bench("proxy", "--size-mb", "4", "--layers", "2", "--rounds", "2", tmp_path=tmp_path)
    clients = [r["client"] for r in data["results"]]
    assert len(clients) == 3 and "ceiling" in clients[0] and "proxy" in clients[1] and "skopeo" in clients[2]
    assert all(r["median_s"] > 0 and len(r["seconds"]) == 2 for r in data["results"])
    assert len(data["per_pull"]) == 2
    for pull in data["per_pull"]:
        assert pull["requests"] > 0 and pull["tpm_signatures"] <= pull["upstream_handshakes"]
    # resumption: after the start-up check's full handshake, pulls open connections without signing
    assert data["proxy_status"]["tpm_signatures"] <= data["proxy_status"]["full_handshakes"] <= 2
