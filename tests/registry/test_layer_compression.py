"""On-the-fly layer gzip: valid, deterministic (resumes regenerate the same bytes), content-aware."""

from __future__ import annotations

import gzip
import hashlib
import os

import pytest

from tpmtls.registry.sources import GZIP_LEVEL, FileRegion, GzipSource


@pytest.mark.parametrize("kind", ["text", "random"])
def test_gzip_source(kind, tmp_path):
    data = (b"layer of an image, quite repetitive. " * 200_000) if kind == "text" else os.urandom(3_000_000)
    path = tmp_path / "layer.tar"
    path.write_bytes(data)
    first = b"".join(GzipSource(FileRegion(path, 0, len(data))).chunks())
    again = GzipSource(FileRegion(path, 0, len(data)))
    second = b"".join(again.chunks())
    assert gzip.decompress(first) == data
    assert hashlib.sha256(first).digest() == hashlib.sha256(second).digest()  # deterministic
    if kind == "text":
        assert again.level == GZIP_LEVEL and len(first) < len(data) / 20
    else:
        assert again.level == 0 and len(first) < len(data) * 1.01  # stored, not searched


def test_isal_is_the_compressor_and_stable_across_runs(tmp_path):
    """The chosen compressor (docs/performance.md, "Layer compression") and its determinism on a real-ish file mix."""
    import sys
    from pathlib import Path

    from tpmtls.registry.sources import COMPRESSOR

    assert COMPRESSOR.startswith("isal ")
    data = b"".join(p.read_bytes() for p in sorted(Path(sys.modules["os"].__file__).parent.glob("*.py"))[:200])
    path = tmp_path / "real.tar"
    path.write_bytes(data)
    outs = {hashlib.sha256(b"".join(GzipSource(FileRegion(path, 0, len(data))).chunks())).hexdigest() for _ in range(3)}
    assert len(outs) == 1
    packed = b"".join(GzipSource(FileRegion(path, 0, len(data))).chunks())
    assert gzip.decompress(packed) == data and len(packed) < len(data) / 2.5
