"""References, the referrers tag schema name and the exact referrer manifest bytes."""

from __future__ import annotations

import json

import pytest

from harden.errors import InputError
from harden.oci import Descriptor, Manifest, Reference, parse_reference, referrers_tag
from harden.oci.model import (
    CREATED_ANNOTATION,
    EMPTY_DIGEST,
    OCI_INDEX,
    OCI_MANIFEST,
    canonical_json,
    compute_digest,
    referrer_manifest,
)

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000/staging/debian:12", Reference("127.0.0.1:5000", "staging/debian", "12")),
        (
            f"127.0.0.1:5000/staging/debian@{D}",
            Reference("127.0.0.1:5000", "staging/debian", None, D),
        ),
        (
            f"reg.example.com/a/b/c:v1.2-rc_3@{D}",
            Reference("reg.example.com", "a/b/c", "v1.2-rc_3", D),
        ),
        ("localhost/img", Reference("localhost", "img")),
        (
            "localhost:5000/my.repo/x__y:latest",
            Reference("localhost:5000", "my.repo/x__y", "latest"),
        ),
        ("[::1]:5000/a:b", Reference("[::1]:5000", "a", "b")),
    ],
)
def test_parse_good_references(text: str, expected: Reference) -> None:
    ref = parse_reference(text)
    assert ref == expected
    assert str(ref) == text


@pytest.mark.parametrize(
    "text",
    [
        "debian:12",  # no registry: harden never guesses docker.io
        "library/debian:12",
        "staging/debian",
        "127.0.0.1:5000/Staging/debian:12",  # upper case repository
        "127.0.0.1:5000/debian:",  # empty tag
        "127.0.0.1:5000/debian:-bad",
        "127.0.0.1:5000/debian@sha256:abc",  # short digest
        "127.0.0.1:5000/debian@md5:" + "a" * 32,
        "127.0.0.1:5000/",
        "127.0.0.1:5000//x",
        " 127.0.0.1:5000/x",
        "",
    ],
)
def test_parse_bad_references(text: str) -> None:
    with pytest.raises(InputError):
        parse_reference(text)


def test_no_registry_hint_names_the_full_form() -> None:
    with pytest.raises(InputError) as info:
        parse_reference("debian:12")
    assert "docker.io" in (info.value.hint or "")


def test_with_digest_and_tag() -> None:
    ref = parse_reference("127.0.0.1:5000/a:1")
    assert str(ref.with_digest(D)) == f"127.0.0.1:5000/a:1@{D}"
    assert str(ref.with_tag("2")) == "127.0.0.1:5000/a:2"
    assert str(ref.with_tag(None).with_digest(D)) == f"127.0.0.1:5000/a@{D}"
    with pytest.raises(InputError):
        ref.with_digest("sha256:nope")
    with pytest.raises(InputError):
        ref.with_tag("no/slash")


def test_referrers_tag_schema_name() -> None:
    assert referrers_tag(D) == "sha256-" + "ab" * 32
    long = "sha512:" + "c" * 128
    assert referrers_tag(long) == "sha512-" + "c" * 64  # ref truncated to 64
    assert referrers_tag("a+b" * 20 + ":x=y") == ("a-b" * 20)[:32] + "-x-y"
    with pytest.raises(InputError):
        referrers_tag("nodigest")


def test_referrer_manifest_bytes_are_canonical_and_follow_the_reference() -> None:
    subject = Descriptor(OCI_INDEX, D, 1234, annotations={"ignored": "in subject"})
    blob = Descriptor("application/vnd.dev.sigstore.bundle.v0.3+json", "sha256:" + "cd" * 32, 4971)
    annotations = {
        "dev.sigstore.bundle.content": "dsse-envelope",
        "dev.sigstore.bundle.predicateType": "https://slsa.dev/provenance/v1",
        CREATED_ANNOTATION: "2024-03-08T18:18:20.406Z",
    }
    data = referrer_manifest(
        subject,
        artifact_type="application/vnd.dev.sigstore.bundle.v0.3+json",
        blob=blob,
        annotations=annotations,
    )
    doc = json.loads(data)
    # the document of attestation-formats.md 4.3, value for value
    assert doc == {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "schemaVersion": 2,
        "artifactType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "annotations": annotations,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            "size": 2,
        },
        "layers": [
            {
                "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                "digest": "sha256:" + "cd" * 32,
                "size": 4971,
            }
        ],
        "subject": {"mediaType": OCI_INDEX, "digest": D, "size": 1234},
    }
    assert data == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert data.startswith(b'{"annotations":{"dev.sigstore.bundle.content":"dsse-envelope",')
    assert compute_digest(b"{}") == EMPTY_DIGEST
    m = Manifest(data, OCI_MANIFEST, compute_digest(data))
    assert m.subject == Descriptor(OCI_INDEX, D, 1234)
    assert m.config is not None and m.config.digest == EMPTY_DIGEST
    assert m.layers == [blob]
    assert m.descriptor().artifact_type == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert m.descriptor().annotations[CREATED_ANNOTATION] == "2024-03-08T18:18:20.406Z"


def test_referrer_needs_created_annotation_and_artifact_type() -> None:
    subject = Descriptor(OCI_MANIFEST, D, 1)
    blob = Descriptor("x/y", D, 1)
    with pytest.raises(InputError, match=CREATED_ANNOTATION):
        referrer_manifest(subject, artifact_type="a/b", blob=blob, annotations={})
    with pytest.raises(InputError, match="artifactType"):
        referrer_manifest(
            subject, artifact_type="", blob=blob, annotations={CREATED_ANNOTATION: "t"}
        )


def test_descriptor_json_round_trip_and_validation() -> None:
    desc = Descriptor(OCI_MANIFEST, D, 10, "a/b", {"k": "v"})
    doc = desc.to_json()
    assert doc == {
        "mediaType": OCI_MANIFEST,
        "digest": D,
        "size": 10,
        "artifactType": "a/b",
        "annotations": {"k": "v"},
    }
    assert Descriptor.from_json({**doc, "platform": {"os": "linux"}}) == desc
    assert Descriptor(OCI_MANIFEST, D, 10).to_json() == {
        "mediaType": OCI_MANIFEST,
        "digest": D,
        "size": 10,
    }
    for bad in ({**doc, "size": -1}, {**doc, "digest": "sha256:zz"}, {"digest": D, "size": 1}):
        with pytest.raises(InputError):
            Descriptor.from_json(bad)


def test_canonical_json_is_stable() -> None:
    assert (
        canonical_json({"b": 1, "a": {"d": "é", "c": [1, 2]}})
        == '{"a":{"c":[1,2],"d":"é"},"b":1}'.encode()
    )
