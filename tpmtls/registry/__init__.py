"""OCI distribution over TPM-backed mTLS: push and pull like docker, with Docker's certs.d."""

from .pull import PullResult, pull
from .push import PushResult, push

__all__ = ["PullResult", "PushResult", "pull", "push"]
