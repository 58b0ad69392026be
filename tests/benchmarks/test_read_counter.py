"""The push benchmark's strace reader places reads at their file offsets (no strace needed: a recorded log)."""

from __future__ import annotations

from benchmarks._reads import parse

TRACE = """\
100 openat(AT_FDCWD, "/w/img.tar", O_RDONLY|O_CLOEXEC) = 5
100 read(5, ""..., 512) = 512
100 lseek(5, 4096, SEEK_SET) = 4096
100 read(5,  <unfinished ...>
101 openat(AT_FDCWD, "/w/other", O_RDONLY) = 6
100 <... read resumed>""..., 1000) = 1000
101 pread64(5, ""..., 100, 9000) = 100
101 read(6, ""..., 4096) = 4096
100 close(5) = 0
100 read(5, ""..., 4096) = 4096
100 connect(7, {sa_family=AF_UNIX, sun_path="/run/d/docker.sock"}, 110) = 0
100 sendto(7, "GET /v1.41/images/bench:1/get HTTP/1.1\\r\\n"..., 120, 0, NULL, 0) = 120
100 write(7, "GET /v1.41/images/get?names=bench HTTP/1.1"..., 80) = 80
100 recvfrom(7, ""..., 8192, 0, NULL, NULL) = 8192
"""


def test_reads_are_placed_at_their_offsets_and_sockets_counted():
    # layer data at [4500, 5000) and [9050, 9200): the read at 4096+1000 covers 500 of the first,
    # the pread at 9000+100 covers 50 of the second; fd 5 after close and fd 6 are not the image
    reads = parse(TRACE, "/w/img.tar", [(4500, 5000), (9050, 9200)], "/run/d/docker.sock")
    assert reads.image_bytes == 512 + 1000 + 100
    assert reads.layer_bytes == 500 + 50
    assert reads.socket_bytes == 8192
    assert reads.save_requests == 2
