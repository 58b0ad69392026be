"""Enrollment: how a machine gets a certificate for its TPM key without hand-copying keys
(docs/pairing.md, docs/key-transfer.md, docs/enrollment.md)."""
