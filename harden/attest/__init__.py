"""Signing keys, in-toto Statement v1 attestations in DSSE envelopes, and their predicates.

- :mod:`harden.attest.keys`: key generation (ECDSA P-256, Ed25519), signers by key URI scheme,
  public keys with a stable keyid.
- :mod:`harden.attest.dsse`: DSSE v1 envelopes: PAE, sign, bounded verify.
- :mod:`harden.attest.statements`: building canonical statements (SLSA provenance v1, in-toto
  test-result v0.1, harden compliance v1, harden revocation v1) and parsing them back.
- :mod:`harden.attest.predicates`: the pydantic models of what we read back.

The submodules are not imported here, so ``import harden.attest`` stays cheap.
"""
