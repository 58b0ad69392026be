"""Other OCI clients in tests: kubelet's image pull through containerd's CRI API, and digests as each tool
reports them."""

from __future__ import annotations

import json


def _field(number: int, data: bytes) -> bytes:
    """A protobuf length-delimited field (wire type 2)."""
    size, out = len(data), bytearray([number << 3 | 2])
    while True:
        low, size = size & 0x7F, size >> 7
        out.append(low | (0x80 if size else 0))
        if not size:
            return bytes(out) + data


def _first_string(message: bytes) -> str:
    """Field 1 (a string) of a protobuf message."""
    assert message and message[0] == (1 << 3 | 2), message[:8]
    size, shift, i = 0, 0, 1
    while True:
        byte = message[i]
        size |= (byte & 0x7F) << shift
        shift, i = shift + 7, i + 1
        if not byte & 0x80:
            return message[i:i + size].decode()


class CriError(Exception):
    """The CRI PullImage call failed; the message is containerd's, as kubelet would log it."""


def cri_pull(socket: str, image: str, auth: tuple[str, str] | None = None, timeout: float = 300) -> str:
    """`runtime.v1.ImageService/PullImage` as kubelet calls it; the image id containerd returns.

    `auth` is (username, password), what kubelet takes from an imagePullSecret. The request is
    a few nested fields (PullImageRequest{image: ImageSpec{image}, auth: AuthConfig{username,
    password}}), encoded by hand: no generated stubs for one call.
    """
    import grpc  # a test dependency (pyproject's [test] extra): kubelet's CRI is gRPC

    with grpc.insecure_channel(f"unix://{socket}") as channel:
        pull = channel.unary_unary("/runtime.v1.ImageService/PullImage")
        try:
            request = _field(1, _field(1, image.encode()))
            if auth:
                request += _field(2, _field(1, auth[0].encode()) + _field(2, auth[1].encode()))
            return _first_string(pull(request, timeout=timeout))
        except grpc.RpcError as e:
            raise CriError(e.details()) from None


def podman_digest(tools, ref: str) -> str:
    """The manifest digest podman recorded when it pulled `ref`."""
    out = tools.podman("image", "inspect", "--format", "json", ref).stdout
    return json.loads(out)[0]["Digest"]
