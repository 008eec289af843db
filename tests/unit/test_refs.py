"""Which references harden pulls, and which target a reference opens."""

from __future__ import annotations

import pytest
from harden.builder.docker_engine import names_registry, split_tag
from harden.verifiers.refs import scheme_of

from harden.errors import UsageError


@pytest.mark.parametrize(
    ("ref", "pulled"),
    [
        ("127.0.0.1:5000/library/debian:12", True),
        ("registry.example.com/library/debian:bookworm", True),
        ("localhost/app:1", True),
        ("debian:12", False),  # never an implied public registry
        ("library/debian:12", False),
        ("harden/debian12-hardened:latest", False),
    ],
)
def test_only_references_naming_a_registry_are_pulled(ref: str, pulled: bool) -> None:
    assert names_registry(ref) is pulled


def test_split_tag_keeps_the_port_in_the_repository() -> None:
    assert split_tag("127.0.0.1:5000/a/b:tag") == ("127.0.0.1:5000/a/b", "tag")
    assert split_tag("127.0.0.1:5000/a/b") == ("127.0.0.1:5000/a/b", "latest")


@pytest.mark.parametrize(
    ("ref", "scheme"),
    [
        ("debian:12", "registry"),  # refused later: it names no registry host
        ("127.0.0.1:5000/library/debian:12", "registry"),
        ("docker-image://debian:12", "local"),
        ("docker://web", "docker"),
        ("ssh://root@127.0.0.1:2222", "ssh"),
        ("/var/cache/harden/templates/t.qcow2", "qcow2"),
    ],
)
def test_scheme_of(ref: str, scheme: str) -> None:
    assert scheme_of(ref) == scheme


def test_local_images_are_named_as_such() -> None:
    assert scheme_of("debian:12", local=True) == "local"
    assert scheme_of("127.0.0.1:5000/library/debian:12", local=True) == "local"


def test_unknown_scheme_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        scheme_of("http://example/x")
