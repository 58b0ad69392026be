"""The Docker daemon side: docker-py with a TPM key, `daemon.json` TLS blocks, the
daemon-proxy for the stock docker CLI and the NGINX front of `docker.sock`.

`tpmtls.docker.client.docker_client` is the public entry point (exported as
`tpmtls.docker_client`); the other modules serve the `tpmtls certs …` and
`tpmtls daemon-proxy` commands; `credentials` is the TPM-sealed store behind
`docker-credential-tpmtls`.
"""

from ..errors import DaemonError

__all__ = ["DaemonError"]
