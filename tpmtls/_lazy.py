"""Package attributes imported on first use (PEP 562), so a command pays only for what it uses."""

from __future__ import annotations

from typing import Any, Callable


def lazy_attributes(package: str, where: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: NAME is imported from the module `where[NAME]` names
    (relative to `package`) when first asked for, then kept in `namespace` (its globals)."""

    def getattr_(name: str) -> Any:
        if name in where:
            import importlib

            value = getattr(importlib.import_module(where[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return getattr_
