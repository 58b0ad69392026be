"""OCI distribution over TPM-backed mTLS: push and pull like docker, with Docker's certs.d."""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .pull import PullResult, pull
    from .push import PushResult, push

# On first use (PEP 562): tpmtls-push needs none of pull's modules, tpmtls-pull none of push's.
_LAZY = {"PullResult": ".pull", "pull": ".pull", "PushResult": ".push", "push": ".push"}


__getattr__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = ["PullResult", "PushResult", "pull", "push"]
