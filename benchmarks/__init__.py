"""tpmtls benchmarks: `python -m benchmarks {handshakes,pool,push}` (see README "Performance")."""
