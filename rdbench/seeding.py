"""Seeds derived from named parts, stable across processes and machines (unlike ``hash``)."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``repr(parts)``: e.g. ``derive_seed(run_seed, "data", chunk)``."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
