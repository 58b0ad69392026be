"""`python -m benchmarks.gzip_candidates`: the gzip compressors considered for layers, on real files.

Compresses the realistic image's layers (benchmarks/content.py) as one stream with each
candidate that is importable (zlib; isal's isal_zlib and igzip_threaded; zlib-ng's
zlib_ng and gzip_ng_threaded; pgzip) and prints CPU seconds, MB/s of CPU, the ratio, and
whether the output is the same bytes on every run and thread count (a resumed upload must
regenerate the same bytes). CPU time, not wall time: the machine is shared. Candidates
that are not dependencies are installed to a scratch directory for this, e.g.
`pip install --target /tmp/gz isal zlib-ng pgzip` and `PYTHONPATH=/tmp/gz`.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator

from .content import real_image


class _Sink:
    def __init__(self) -> None:
        self.n, self.h = 0, hashlib.sha256()

    def write(self, b: bytes) -> int:
        self.n += len(b)
        self.h.update(b)
        return len(b)

    def flush(self) -> None:
        pass


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(1 << 20), b"")


def _stream(mod: Any, level: int) -> Callable[[Path], tuple[int, str]]:
    def run(path: Path) -> tuple[int, str]:
        z, s = mod.compressobj(level, zlib.DEFLATED, 31), _Sink()
        for c in _chunks(path):
            s.write(z.compress(c))
        s.write(z.flush())
        return s.n, s.h.hexdigest()
    return run


def _threaded(opener: Callable[[_Sink], Any]) -> Callable[[Path], tuple[int, str]]:
    def run(path: Path) -> tuple[int, str]:
        s = _Sink()
        with opener(s) as g:
            for c in _chunks(path):
                g.write(c)
        return s.n, s.h.hexdigest()
    return run


def candidates() -> list[tuple[str, Callable[[Path], tuple[int, str]]]]:
    out: list[tuple[str, Callable[[Path], tuple[int, str]]]] = [("zlib 6", _stream(zlib, 6)), ("zlib 1", _stream(zlib, 1))]
    try:
        from isal import igzip_threaded, isal_zlib

        out += [(f"isal_zlib {lv}", _stream(isal_zlib, lv)) for lv in (1, 2, 3)]
        out += [(f"igzip_threaded 2 t={t}", _threaded(lambda s, t=t: igzip_threaded.open(s, "wb", compresslevel=2,
                                                                                        threads=t))) for t in (1, 2)]
    except ImportError:
        print("isal: not installed", file=sys.stderr)
    try:
        from zlib_ng import gzip_ng_threaded, zlib_ng

        out += [(f"zlib_ng {lv}", _stream(zlib_ng, lv)) for lv in (1, 6)]
        out += [(f"gzip_ng_threaded 6 t={t}", _threaded(lambda s, t=t: gzip_ng_threaded.open(s, "wb", compresslevel=6,
                                                                                           threads=t))) for t in (1, 2)]
    except ImportError:
        print("zlib-ng: not installed", file=sys.stderr)
    try:
        import pgzip

        out += [(f"pgzip 6 t={t}", _threaded(lambda s, t=t: pgzip.PgzipFile(fileobj=s, mode="wb", compresslevel=6,
                                                                          thread=t, mtime=0))) for t in (1, 2)]
    except ImportError:
        print("pgzip: not installed", file=sys.stderr)
    return out


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="tpmtls-gz-") as tmp:
        image, size = real_image(Path(tmp) / "real.tar")
        print(f"input: {size / 1e6:.0f} MB of real files (benchmarks/content.py), one stream\n")
        print("| compressor | CPU s | MB/s per CPU s | ratio | same bytes on a second run |")
        print("|---|---:|---:|---:|---|")
        for name, fn in candidates():
            c0 = time.process_time()
            n, digest = fn(image)
            cpu = time.process_time() - c0
            _, again = fn(image)
            print(f"| {name} | {cpu:.2f} | {size / 1e6 / cpu:.0f} | {n / size:.3f} | {'yes' if again == digest else 'NO'} "
                  f"({digest[:12]}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
