"""What the suite shares: real peers, the processes it starts, and how it runs commands.

Importable as `support` (pytest's `pythonpath` puts tests/ on the path); tests never
import each other or conftest.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The checkout: README, helpers/, pyproject.toml."""
