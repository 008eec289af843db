"""DSSE envelopes: PAE, sign/verify for both key types, every way an envelope is rejected."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.dsse import Envelope

from harden.attest import dsse
from harden.attest.dsse import PAYLOAD_TYPE, pae, sign, verify
from harden.attest.keys import KeyType, PublicKey, Signer, keygen, load_public_key, load_signer
from harden.attest.statements import Subject, revocation, serialize
from harden.errors import AttestationError

PW = b"pw"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module", params=list(KeyType))
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Signer, PublicKey]:
    d = tmp_path_factory.mktemp("keys")
    key, pub = keygen(request.param, d / "k", PW)
    return load_signer(str(key), PW), load_public_key(pub)


@pytest.fixture(scope="module")
def other_pub(tmp_path_factory: pytest.TempPathFactory) -> PublicKey:
    d = tmp_path_factory.mktemp("other")
    _, pub = keygen(KeyType.ECDSA_P256, d / "o", PW)
    return load_public_key(pub)


def _statement_bytes() -> bytes:
    import datetime as dt

    return serialize(
        revocation(
            Subject("127.0.0.1:5000/golden/debian", DIGEST),
            reason="CVE in base",
            revoked_at=dt.datetime(2026, 8, 1, tzinfo=dt.UTC),
            revoked_by="secops",
        )
    )


def _doc(env: bytes) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(env)
    return d


def _enc(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


# ---------------------------------------------------------------- PAE


def test_pae_official_test_vector() -> None:
    assert (
        pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_matches_securesystemslib_and_counts_bytes() -> None:
    body = "héllo ✓".encode()
    assert pae(PAYLOAD_TYPE, body) == Envelope(body, PAYLOAD_TYPE, {}).pae()
    assert pae(PAYLOAD_TYPE, body).startswith(b"DSSEv1 28 application/vnd.in-toto+json 10 ")


# ---------------------------------------------------------------- roundtrip


def test_sign_verify_roundtrip(pair: tuple[Signer, PublicKey], other_pub: PublicKey) -> None:
    signer, pub = pair
    body = _statement_bytes()
    env = sign(body, signer)
    doc = _doc(env)
    assert doc["payloadType"] == PAYLOAD_TYPE
    assert base64.b64decode(doc["payload"]) == body
    assert doc["signatures"][0]["keyid"] == pub.keyid
    v = verify(env, [other_pub, pub])
    assert v.payload == body  # the exact bytes that were signed
    assert v.keyid == pub.keyid
    assert v.statement.matches(DIGEST)
    assert v.statement.revocation().revokedBy == "secops"


def test_keyid_is_not_used_for_decisions(pair: tuple[Signer, PublicKey]) -> None:
    signer, pub = pair
    doc = _doc(sign(_statement_bytes(), signer))
    doc["signatures"][0]["keyid"] = "somebody-else"
    assert verify(_enc(doc), [pub]).keyid == pub.keyid
    del doc["signatures"][0]["keyid"]  # keyid is optional
    assert verify(_enc(doc), [pub]).keyid == pub.keyid


def test_url_safe_and_unpadded_base64_accepted(pair: tuple[Signer, PublicKey]) -> None:
    signer, pub = pair
    # a payload whose standard base64 has '+' and '/' (so url-safe differs): "???" and "~~~"
    body = _statement_bytes().replace(b"CVE in base", b"CVE ??? ~~~ >>> base")
    assert {"+", "/"} <= set(base64.b64encode(body).decode())
    doc = _doc(sign(body, signer))
    raw = base64.b64decode(doc["payload"])
    doc["payload"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert set(doc["payload"]) & {"-", "_"}
    doc["signatures"][0]["sig"] = base64.urlsafe_b64encode(
        base64.b64decode(doc["signatures"][0]["sig"])
    ).decode()
    assert verify(_enc(doc), [pub]).payload == body


def test_file_like_input(pair: tuple[Signer, PublicKey]) -> None:
    signer, pub = pair
    env = sign(_statement_bytes(), signer)
    assert verify(io.BytesIO(env), [pub]).keyid == pub.keyid


# ---------------------------------------------------------------- rejections


def _rejects(env: bytes, trusted: list[PublicKey], match: str | None = None) -> AttestationError:
    with pytest.raises(AttestationError, match=match) as e:
        verify(env, trusted)
    assert int(e.value.exit_code) == 3
    return e.value


def test_untrusted_key_rejected(pair: tuple[Signer, PublicKey], other_pub: PublicKey) -> None:
    signer, _ = pair
    env = sign(_statement_bytes(), signer)
    _rejects(env, [other_pub], "no signature by a trusted key")
    _rejects(env, [], "no trusted keys")


def test_payload_changed_after_signing_rejected(pair: tuple[Signer, PublicKey]) -> None:
    signer, pub = pair
    doc = _doc(sign(_statement_bytes(), signer))
    raw = bytearray(base64.b64decode(doc["payload"]))
    i = raw.index(b"secops")
    raw[i] ^= 0x01  # 's' -> 'r': still valid JSON, different statement
    doc["payload"] = base64.b64encode(bytes(raw)).decode()
    _rejects(_enc(doc), [pub], "no signature by a trusted key")


def test_payload_type_changed_rejected(pair: tuple[Signer, PublicKey]) -> None:
    signer, pub = pair
    doc = _doc(sign(_statement_bytes(), signer))
    doc["payloadType"] = "application/vnd.in-toto.other+json"
    _rejects(_enc(doc), [pub], "no signature by a trusted key")


def test_signed_but_wrong_payload_type_rejected(pair: tuple[Signer, PublicKey]) -> None:
    signer, pub = pair
    env = sign(_statement_bytes(), signer, payload_type="text/plain")
    _rejects(env, [pub], "not an in-toto statement")


def test_signature_bit_flip_rejected(pair: tuple[Signer, PublicKey]) -> None:
    signer, pub = pair
    doc = _doc(sign(_statement_bytes(), signer))
    sig = bytearray(base64.b64decode(doc["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    doc["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    _rejects(_enc(doc), [pub], "no signature by a trusted key")


def test_truncated_envelope_rejected(pair: tuple[Signer, PublicKey]) -> None:
    signer, pub = pair
    env = sign(_statement_bytes(), signer)
    for cut in (1, len(env) // 2, len(env) - 1):
        _rejects(env[:cut], [pub])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\xff\xfe garbage \x89PNG",
        b"{not json",
        b"[]",
        b'"a string"',
        b'{"payload": "e30=", "payloadType": "application/vnd.in-toto+json", "signatures": NaN}',
    ],
)
def test_garbage_and_malformed_json_rejected(data: bytes, pair: tuple[Signer, PublicKey]) -> None:
    _rejects(data, [pair[1]])


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("payload"),
        lambda d: d.pop("payloadType"),
        lambda d: d.pop("signatures"),
        lambda d: d.update(signatures=[]),
        lambda d: d.update(signatures="x"),
        lambda d: d["signatures"][0].pop("sig"),
        lambda d: d["signatures"][0].update(sig=17),
        lambda d: d["signatures"][0].update(sig="!!not base64!!"),
        lambda d: d.update(payload="abcde"),  # impossible base64 length
        lambda d: d.update(payloadType=7),
        lambda d: d.update(signatures=[d["signatures"][0]] * 17),
    ],
)
def test_missing_or_malformed_fields_rejected(mutate: Any, pair: tuple[Signer, PublicKey]) -> None:
    signer, pub = pair
    doc = _doc(sign(_statement_bytes(), signer))
    mutate(doc)
    _rejects(_enc(doc), [pub])


def test_duplicate_keys_rejected(pair: tuple[Signer, PublicKey]) -> None:
    signer, pub = pair
    env = sign(_statement_bytes(), signer)
    dup = b'{"payloadType":"x",' + env[1:]
    _rejects(dup, [pub], "duplicate JSON key")


def test_signed_payload_that_is_not_a_statement_rejected(pair: tuple[Signer, PublicKey]) -> None:
    signer, pub = pair
    _rejects(sign(b'{"hello": "world"}', signer), [pub], "_type")
    _rejects(sign(b"not json", signer), [pub], "not valid JSON")


class _CountingStream(io.RawIOBase):
    """A 50 MiB stream that records how much was read."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.read_total = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.size - self.read_total
        n = min(n, self.size - self.read_total)
        self.read_total += n
        return b"{" * n


def test_oversized_envelope_rejected_before_parsing(
    pair: tuple[Signer, PublicKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = _CountingStream(50 * 1024 * 1024)
    _rejects(stream, [pair[1]], "larger than")  # type: ignore[arg-type]
    assert stream.read_total == dsse.MAX_ENVELOPE_BYTES + 1

    def no_parse(*_: Any) -> Any:
        raise AssertionError("parsed an oversized envelope")

    monkeypatch.setattr(dsse, "loads_strict", no_parse)
    with pytest.raises(AttestationError, match="larger than 2048"):
        verify(b" " * 2049, [pair[1]], max_bytes=2048)
    with pytest.raises(AttestationError, match="larger than"):
        verify(b"{" * (50 * 1024 * 1024), [pair[1]])


def test_bounded_read_of_a_real_file(pair: tuple[Signer, PublicKey], tmp_path: Path) -> None:
    signer, pub = pair
    f = tmp_path / "att.json"
    f.write_bytes(sign(_statement_bytes(), signer))
    with f.open("rb") as fh:
        assert verify(fh, [pub]).keyid == pub.keyid
    with f.open("rb") as fh, pytest.raises(AttestationError, match="larger than"):
        verify(fh, [pub], max_bytes=100)
