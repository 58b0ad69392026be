"""The /dev/tpmrm0 stand-in's needs: skip only where FUSE is genuinely absent."""

from __future__ import annotations

import pytest

from .commands import require


def require_device() -> None:
    """Skip only where FUSE is genuinely absent (`make setup` installs fuse3 and mfusepy)."""
    require("swtpm")
    from tpmtls.lab.tpmrm import fuse_available

    why = fuse_available()
    if why:
        pytest.skip(why)
