"""A direct TPM (no resource manager) has about three object slots: keys take turns in them."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

import tpmtls
from support.commands import require
from tpmtls.testing import SwTpm


def test_four_keys_on_a_direct_swtpm_all_sign_alternating(tmp_path):
    require("swtpm")
    with SwTpm(tmp_path / "sw") as sw:
        pool = tpmtls.Pool(sw.tcti)
        try:
            tpm = tpmtls.connect(pool=pool)
            paths = [tmp_path / f"k{i}.key" for i in range(4)]
            for p in paths:
                tpm.create_key("ecc-p256", p)
            keys = [tpm.load_key(p) for p in paths]  # the third load used to fail (rc 0x902)
            for round_ in range(3):
                for i, key in enumerate(keys):
                    data = f"round {round_} key {i}".encode()
                    sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
                    key.public_key().verify(sig, data, ec.ECDSA(hashes.SHA256()))
            assert pool.stats().errors == 0
        finally:
            pool.close()
