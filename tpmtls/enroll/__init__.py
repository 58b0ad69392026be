"""Enrollment: how a machine gets a certificate for its TPM key without hand-copying keys (DESIGN §10)."""
