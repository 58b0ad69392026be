"""An RSA key made to carry the ROCA fingerprint: primes p = k*M + (65537^a mod M), M a primorial.

This is how the vulnerable Infineon generator built its primes (Nemec et al., CCS 2017); a
test needs one to see weak EKs refused. Miller-Rabin here is for making test keys only.
"""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.asymmetric import rsa


def _primes(count: int) -> list[int]:
    out, n = [], 2
    while len(out) < count:
        if all(n % p for p in out if p * p <= n):
            out.append(n)
        n += 1
    return out


def _probably_prime(n: int, rng: random.Random, rounds: int = 40) -> bool:
    if n < 4:
        return n in (2, 3)
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for _ in range(rounds):
        x = pow(rng.randrange(2, n - 1), d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def roca_prime(bits: int, rng: random.Random) -> int:
    """A `bits`-bit prime of the ROCA form with the primorial of the first 126 primes (RSA-2048's M)."""
    m = 1
    for p in _primes(126):
        m *= p
    for _ in range(200000):
        k = rng.getrandbits(bits - m.bit_length())
        p = k * m + pow(65537, rng.getrandbits(64), m)
        if p.bit_length() == bits and _probably_prime(p, rng):
            return p
    raise RuntimeError("no ROCA-form prime found (bounded search)")


def roca_rsa_key(seed: int = 2017) -> rsa.RSAPrivateKey:
    rng = random.Random(seed)
    e = 65537
    while True:
        p, q = roca_prime(1024, rng), roca_prime(1024, rng)
        n = p * q
        if p != q and n.bit_length() == 2048 and (p - 1) % e and (q - 1) % e:
            break
    d = pow(e, -1, (p - 1) * (q - 1))
    nums = rsa.RSAPrivateNumbers(p, q, d, rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q),
                                 rsa.RSAPublicNumbers(e, n))
    return nums.private_key()
