"""Certificates and requests for TPM keys (CSR now; the file CA comes with enrollment)."""

from .csr import build_csr, parse_san, parse_subject

__all__ = ["build_csr", "parse_san", "parse_subject"]
