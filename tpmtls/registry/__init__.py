"""OCI distribution over TPM-backed mTLS: push and pull like docker, with Docker's certs.d."""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .pull import PullResult, pull
    from .push import PushResult, push

# On first use (PEP 562): tpmtls-push needs none of pull's modules, tpmtls-pull none of push's.
_LAZY = {"PullResult": ".pull", "pull": ".pull", "PushResult": ".push", "push": ".push"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["PullResult", "PushResult", "pull", "push"]
