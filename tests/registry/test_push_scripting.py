"""tpmtls-push and tpmtls-pull in scripts: --format json (docs/schemas/push.schema.json, pull.schema.json)
alone on stdout, -q prints nothing, --digestfile as skopeo writes it, --version."""

from __future__ import annotations

import json

from support.registry import env_for, run_cli, skopeo_raw
from support.schemas import validated


def test_push_json_is_all_stdout_says(registry, tpm_certs, soft_certs, small_image, test_tpm, tmp_path):
    dest = f"localhost:{registry.port}/scripted:1"
    proc = run_cli("push", f"docker-archive:{small_image}", dest, "--cert-dir", str(tpm_certs), "--format", "json",
                   env=env_for(test_tpm, tmp_path))
    assert proc.returncode == 0, proc.stderr
    result = validated(proc.stdout, "push")
    raw, digest = skopeo_raw(dest, soft_certs)
    assert (result["reference"], result["tag"], result["digest"], result["size"]) == (dest, "1", digest, len(raw))
    assert result["uploaded"] + result["mounted"] + result["existing"] == 4  # config + 3 layers


def test_push_quiet_with_digestfile(registry, tpm_certs, soft_certs, small_image, test_tpm, tmp_path):
    dest = f"localhost:{registry.port}/quiet:2"
    digestfile = tmp_path / "digest"
    proc = run_cli("push", "-q", f"docker-archive:{small_image}", dest, "--cert-dir", str(tpm_certs),
                   "--digestfile", str(digestfile), env=env_for(test_tpm, tmp_path))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert digestfile.read_text() == skopeo_raw(dest, soft_certs)[1]  # no newline, like skopeo's


def test_push_digestfile_in_a_missing_directory_fails_before_sending(registry, tpm_certs, small_image, test_tpm, tmp_path):
    proc = run_cli("push", f"docker-archive:{small_image}", f"localhost:{registry.port}/never:1",
                   "--cert-dir", str(tpm_certs), "--digestfile", str(tmp_path / "no" / "digest"),
                   env=env_for(test_tpm, tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"tpmtls-push: {tmp_path / 'no' / 'digest'}: directory "
                                                f"{tmp_path / 'no'} does not exist"]
    assert proc.stdout == ""


def test_pull_json_and_digestfile(registry, tpm_certs, small_image, test_tpm, tmp_path):
    dest = f"localhost:{registry.port}/pulled:3"
    pushed = run_cli("push", "-q", f"docker-archive:{small_image}", dest, "--cert-dir", str(tpm_certs),
                     "--digestfile", str(tmp_path / "pushed"), env=env_for(test_tpm, tmp_path))
    assert pushed.returncode == 0, pushed.stderr
    proc = run_cli("pull", dest, f"oci:{tmp_path / 'out'}", "--cert-dir", str(tpm_certs), "--format", "json",
                   "--digestfile", str(tmp_path / "pulled"), env=env_for(test_tpm, tmp_path))
    assert proc.returncode == 0, proc.stderr
    result = validated(proc.stdout, "pull")
    digest = (tmp_path / "pushed").read_text()
    assert result == {"reference": dest, "digest": digest, "destination": f"oci:{tmp_path / 'out'}"}
    assert (tmp_path / "pulled").read_text() == digest
    assert json.loads((tmp_path / "out" / "index.json").read_text())["manifests"][0]["digest"] == digest


def test_version(test_tpm, tmp_path):
    from tpmtls._version import __version__

    for command in ("push", "pull"):
        proc = run_cli(command, "--version", env=env_for(test_tpm, tmp_path))
        assert (proc.returncode, proc.stdout) == (0, f"tpmtls-{command} {__version__}\n")
