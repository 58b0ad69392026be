"""tpmtls benchmarks: `python -m benchmarks {handshakes,pool,push}` (see docs/performance.md)."""
