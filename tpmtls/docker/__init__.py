"""The Docker daemon side: docker-py with a TPM key, `daemon.json` TLS blocks, the
daemon-proxy for the stock docker CLI and the NGINX front of `docker.sock`.

`tpmtls.docker.client.docker_client` is the public entry point (exported as
`tpmtls.docker_client`); the other modules serve the `tpmtls certs …` and
`tpmtls daemon-proxy` commands.
"""

from ..errors import TpmtlsError


class DaemonError(TpmtlsError):
    """The Docker daemon cannot be reached or did not answer as a Docker daemon."""


__all__ = ["DaemonError"]
