"""The naive signer, for the benchmarks' baseline: a TPM context opened and closed around every operation.

connect, SRK, load, sign, close -- what a signer without a pool does. The benchmarks
compare tpmtls's pool with it ("open-per-sign") in the same run; the product never
uses it.
"""

from __future__ import annotations

from ..tpm.context import TpmContext
from ..tpm.pool import Pool


class OpenPerSignPool(Pool):
    """A `Pool` whose contexts are closed (their objects flushed) after each operation."""

    def _returning(self, ctx: TpmContext) -> None:
        ctx.close(flush=True)
