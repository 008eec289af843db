"""DSSE v1 envelopes (secure-systems-lab/dsse v1.0.2) carrying in-toto statements.

``SIGNATURE = Sign(PAE(UTF8(payloadType), payload))``. Verification is bounded in size, never
trusts the envelope's ``keyid`` (every trusted key is tried against every signature), and hands
back the exact payload bytes that were verified, parsed once; nothing re-serialises them.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from securesystemslib.dsse import Envelope

from harden.attest.keys import PublicKey, Signer
from harden.attest.statements import Statement, loads_strict, parse
from harden.errors import AttestationError

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "MAX_SIGNATURES",
    "PAYLOAD_TYPE",
    "VerifiedStatement",
    "pae",
    "read_bounded",
    "sign",
    "verify",
]

PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_ENVELOPE_BYTES = 1024 * 1024
MAX_SIGNATURES = 16

_URL_TO_STD = str.maketrans("-_", "+/")
_IN_TOTO_TYPE = re.compile(r"application/vnd\.in-toto(\.[A-Za-z0-9._-]+)?\+json")


@dataclass(frozen=True)
class VerifiedStatement:
    """A statement whose signature verified; ``keyid`` is the trusted key's id (authenticated)."""

    payload: bytes
    statement: Statement
    keyid: str


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSEv1 Pre-Authentication Encoding (lengths are byte lengths)."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(body), body)


def sign(statement_bytes: bytes, signer: Signer, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """A DSSE envelope (compact JSON bytes) with one signature by ``signer``."""
    env = Envelope(statement_bytes, payload_type, {})
    env.sign(signer)
    body: dict[str, Any] = env.to_dict()
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def read_bounded(stream: BinaryIO, max_bytes: int = MAX_ENVELOPE_BYTES) -> bytes:
    """Read at most ``max_bytes`` (AttestationError when there is more)."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise AttestationError(f"envelope larger than {max_bytes} bytes")
    return data


def _b64(value: Any, what: str) -> bytes:
    """Standard or URL-safe base64 (DSSE: verifiers MUST accept either); padding optional.

    One alphabet per value (never mixed), at most two ``=`` at the end. Checked by binascii's
    strict mode in C: a regular expression over a large payload (an SBOM) cost more than the
    decoding and the signature check together."""
    if not isinstance(value, str):
        raise AttestationError(f"envelope {what} is not a base64 string")
    if not value.isascii():
        raise AttestationError(f"envelope {what} is not valid base64")
    unpadded = value.rstrip("=")
    if len(value) - len(unpadded) > 2:
        raise AttestationError(f"envelope {what} is not valid base64")
    if "-" in unpadded or "_" in unpadded:  # the URL-safe alphabet: then no '+' or '/'
        if "+" in unpadded or "/" in unpadded:
            raise AttestationError(f"envelope {what} is not valid base64")
        unpadded = unpadded.translate(_URL_TO_STD)
    if len(unpadded) % 4 == 1:
        raise AttestationError(f"envelope {what} is truncated base64")
    padded = unpadded + "=" * (-len(unpadded) % 4)
    try:
        return binascii.a2b_base64(padded.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError) as e:
        raise AttestationError(f"envelope {what} is not valid base64") from e


def verify(
    envelope: bytes | BinaryIO,
    trusted: Sequence[PublicKey],
    *,
    max_bytes: int = MAX_ENVELOPE_BYTES,
) -> VerifiedStatement:
    """Verify a DSSE envelope against ``trusted`` keys and parse its statement.

    Raises AttestationError (exit 3) for anything malformed or when no signature verifies with
    a trusted key.
    """
    if isinstance(envelope, bytes | bytearray | memoryview):
        if len(envelope) > max_bytes:
            raise AttestationError(f"envelope larger than {max_bytes} bytes")
        data = bytes(envelope)
    else:
        data = read_bounded(envelope, max_bytes)
    doc = loads_strict(data, "envelope")
    if not isinstance(doc, dict):
        raise AttestationError("envelope is not a JSON object")
    for name in ("payload", "payloadType", "signatures"):
        if name not in doc:
            raise AttestationError(f"envelope has no {name!r} field")
    payload_type = doc["payloadType"]
    if not isinstance(payload_type, str):
        raise AttestationError("envelope payloadType is not a string")
    payload = _b64(doc["payload"], "payload")
    sigs = doc["signatures"]
    if not isinstance(sigs, list) or not sigs:
        raise AttestationError("envelope signatures is not a non-empty list")
    if len(sigs) > MAX_SIGNATURES:
        raise AttestationError(f"envelope has more than {MAX_SIGNATURES} signatures")
    raw_sigs: list[bytes] = []
    for i, s in enumerate(sigs):
        if not isinstance(s, dict) or "sig" not in s:
            raise AttestationError(f"envelope signatures[{i}] has no 'sig'")
        if "keyid" in s and not isinstance(s["keyid"], str):
            raise AttestationError(f"envelope signatures[{i}].keyid is not a string")
        raw_sigs.append(_b64(s["sig"], f"signatures[{i}].sig"))
    if not trusted:
        raise AttestationError(
            "no trusted keys to verify against", hint="pass --key PATH.pub (repeatable)"
        )

    signed = pae(payload_type, payload)
    keyid = _first_verifying_key(raw_sigs, trusted, signed)
    if keyid is None:
        raise AttestationError(
            "no signature by a trusted key",
            hint="check that the envelope was signed with the private key of one of --key",
        )
    if not _IN_TOTO_TYPE.fullmatch(payload_type):
        raise AttestationError(
            f"payloadType {payload_type!r} is not an in-toto statement", hint=PAYLOAD_TYPE
        )
    return VerifiedStatement(payload=payload, statement=parse(payload), keyid=keyid)


def _first_verifying_key(
    sigs: Sequence[bytes], trusted: Sequence[PublicKey], signed: bytes
) -> str | None:
    # the envelope's keyid is unauthenticated: never used to pick or skip a key
    for sig in sigs:
        for key in trusted:
            if key.verify(sig, signed):
                return key.keyid
    return None
