"""On-the-fly layer gzip: valid, deterministic (resumes regenerate the same bytes), content-aware."""

from __future__ import annotations

import gzip
import hashlib
import os

import pytest

from tpmtls.registry.sources import FileRegion, GzipSource


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
        assert again.level == 6 and len(first) < len(data) / 20
    else:
        assert again.level == 0 and len(first) < len(data) * 1.01  # stored, not searched
