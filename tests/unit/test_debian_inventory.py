"""dpkg status parsing, Debian version order, apt sources, pending updates and the SBOM."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from harden.debian.archive import Candidate, parse_packages
from harden.debian.dpkg import MAX_PACKAGES, DpkgStatusError, Package, parse_status
from harden.debian.pending import pending_updates
from harden.debian.sources import host_sources, update_archives
from harden.debian.version import compare
from harden.sbom import cyclonedx, packages_of

STATUS = b"""Package: libc6
Status: install ok installed
Architecture: amd64
Source: glibc
Version: 2.36-9+deb12u4
Description: GNU C Library
 continuation line: Version: 9.9

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2024a-0+deb12u1

Package: libpam0g
Status: install ok installed
Architecture: amd64
Source: pam (1.5.2-6)
Version: 1.5.2-6+deb12u1
"""


def test_status_keeps_installed_packages_and_their_sources() -> None:
    pkgs = {p.name: p for p in parse_status(STATUS)}
    assert set(pkgs) == {"libc6", "tzdata", "libpam0g"}
    assert pkgs["libc6"].source == "glibc"
    assert pkgs["libc6"].version == "2.36-9+deb12u4"  # not the continuation line's text
    assert pkgs["tzdata"].source == "tzdata"
    assert pkgs["libpam0g"].source_version == "1.5.2-6"


def test_status_over_the_entry_limit_is_an_error_not_a_partial_list() -> None:
    stanza = b"Package: p%d\nStatus: install ok installed\nVersion: 1\n\n"
    data = b"".join(stanza % i for i in range(MAX_PACKAGES + 1))
    with pytest.raises(DpkgStatusError, match="more than"):
        parse_status(data)


@pytest.mark.parametrize(
    ("a", "b", "sign"),
    [
        ("1.0-1", "1.0-1+deb12u1", -1),
        ("1:1.2.13.dfsg-1", "1.2.13.dfsg-1+deb12u9", 1),  # the epoch wins
        ("2.6.1~rc1", "2.6.1", -1),  # ~ sorts before everything
        ("1.10", "1.9", 1),  # numeric, not string, order
        ("1.0-1", "1.0-1", 0),
    ],
)
def test_debian_version_order(a: str, b: str, sign: int) -> None:
    got = compare(a, b)
    assert (got > 0) - (got < 0) == sign


def test_pending_updates_pick_the_newest_candidate_over_suites() -> None:
    installed = [Package("tzdata", "2024a-0+deb12u1", "all", "tzdata", "2024a-0+deb12u1")]
    sec = {"tzdata": Candidate("tzdata", "2025a-0+deb12u1", "tzdata", "bookworm-security")}
    upd = {"tzdata": Candidate("tzdata", "2024b-0+deb12u1", "tzdata", "bookworm-updates")}
    older = {"tzdata": Candidate("tzdata", "2023c-0", "tzdata", "bookworm-updates")}
    (one,) = pending_updates(installed, [upd, sec, older])
    assert (one.candidate, one.suite, one.security) == (
        "2025a-0+deb12u1",
        "bookworm-security",
        True,
    )
    assert pending_updates(installed, [older]) == ()


def test_packages_index_keeps_the_newest_version() -> None:
    text = "Package: a\nVersion: 1.9\n\nPackage: a\nVersion: 1.10\nSource: asrc (1)\n\n"
    assert parse_packages(text, "s")["a"] == Candidate("a", "1.10", "asrc", "s")


def test_sources_deb822_and_one_line(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/archive-security "
        "bookworm-security main\n"
    )
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# note\nURIs: http://mirror.invalid/archive\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb-src\nURIs: http://src.invalid/\nSuites: bookworm\nComponents: main\n"
    )
    sources = host_sources(tmp_path)
    assert [(s.uri, s.suite) for s in sources] == [
        ("http://mirror.invalid/archive-security", "bookworm-security"),
        ("http://mirror.invalid/archive", "bookworm"),
        ("http://mirror.invalid/archive", "bookworm-updates"),
    ]
    archives = update_archives("trixie", sources)
    assert [(a.uri, a.suite, str(a.keyring)) for a in archives] == [
        ("http://mirror.invalid/archive-security", "trixie-security", "/k.gpg"),
        (
            "http://mirror.invalid/archive",
            "trixie-updates",
            "/usr/share/keyrings/debian-archive-keyring.gpg",
        ),
    ]


def test_cyclonedx_sbom_is_reproducible_and_names_debian_purls() -> None:
    pkgs = parse_status(STATUS)

    def sbom() -> dict[str, Any]:
        return cyclonedx(
            pkgs,
            subject_name="127.0.0.1:5000/golden/x",
            subject_digest="sha256:" + "a" * 64,
            distro="debian-12",
            now=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
        )

    doc = sbom()
    assert doc == sbom()
    assert doc["specVersion"] == "1.6"
    assert doc["metadata"]["component"]["bom-ref"] == "sha256:" + "a" * 64
    purls = {c["purl"] for c in doc["components"]}
    assert "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12" in purls
    assert packages_of(doc) == {p.name: p.version for p in pkgs}


def test_sbom_round_trips_to_the_packages_status_compares() -> None:
    from harden.sbom import codename_of, installed_of

    pkgs = parse_status(STATUS)
    doc = cyclonedx(
        pkgs,
        subject_name="x",
        subject_digest="sha256:" + "a" * 64,
        distro="debian-12",
        now=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
        codename="bookworm",
    )
    assert installed_of(doc) == pkgs
    assert codename_of(doc) == "bookworm"
    doc["metadata"]["properties"][0]["value"] = "../../x"  # never a path into the archive
    assert codename_of(doc) is None


def test_archive_problems_make_the_state_unknown_with_the_reason() -> None:
    import dataclasses

    from harden.clock import FixedClock
    from harden.lifecycle import ImageFacts, State, Verification, assess

    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    facts = ImageFacts(
        name="x",
        definition="x.yaml",
        destination="r/x:latest",
        max_age=dt.timedelta(days=30),
        digest="sha256:" + "b" * 64,
        archive_state="archive unreachable",
        archive_problem="archive unreachable: http://127.0.0.1:9/dists/x/InRelease",
        verification=Verification(now, now + dt.timedelta(days=9), True, "sha256:" + "c" * 64),
        current_baseline_digest="sha256:" + "c" * 64,
    )
    st = assess(facts, FixedClock(now), dt.timedelta(0))
    assert st.state is State.UNKNOWN
    assert st.label == "unknown (archive unreachable)"
    assert st.to_json()["archive"]["state"] == "archive unreachable"
    # an image that needs a rebuild anyway keeps that state; the problem is one of its reasons
    stale = assess(dataclasses.replace(facts, verification=None), FixedClock(now), dt.timedelta(0))
    assert stale.state is State.STALE
    assert facts.archive_problem in stale.reasons


def test_reading_only_the_names_an_archive_has_gives_the_same_pending_updates() -> None:
    from harden.debian.archive import ArchiveReader
    from harden.debian.check import SecurityCheck
    from harden.debian.sources import Archive
    from harden.sbom import installed_of

    sec = Archive("http://127.0.0.1:9/debian-security", "bookworm-security")
    upd = Archive("http://127.0.0.1:9/debian", "bookworm-updates")
    tables = {
        sec: {"libc6": Candidate("libc6", "2.36-9+deb12u99", "glibc", "bookworm-security")},
        upd: {
            "tzdata": Candidate("tzdata", "2099a-0", "tzdata", "bookworm-updates"),
            "not-installed": Candidate("not-installed", "9", "x", "bookworm-updates"),
        },
    }

    class Reader(ArchiveReader):  # the archive's parsed indices, no network
        def __init__(self) -> None:
            pass

        def candidates(self, archive: Archive) -> dict[str, Candidate]:
            return dict(tables[archive])

    pkgs = parse_status(STATUS)
    doc = cyclonedx(
        pkgs,
        subject_name="x",
        subject_digest="sha256:" + "a" * 64,
        distro="debian-12",
        now=dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
        codename="bookworm",
    )
    doc["components"].append({"name": ["not", "a", "string"], "purl": "pkg:deb/debian/x@1"})
    check = SecurityCheck(Reader(), with_fixes=False)
    names = check.candidate_names([sec, upd])
    assert names == {"libc6", "tzdata", "not-installed"}
    only = installed_of(doc, names)
    assert {p.name for p in only} <= names
    assert only == tuple(p for p in installed_of(doc) if p.name in names)
    full = SecurityCheck(Reader(), with_fixes=False).pending([sec, upd], installed_of(doc))
    assert full.updates  # the test is about something
    assert check.pending([sec, upd], only) == full


def test_indices_are_fetched_by_hash_where_the_release_offers_it(tmp_path: Path) -> None:
    """A mirror that publishes a new Release while harden reads still serves, by hash, the
    index the Release harden verified vouches for (CI hit that race with the plain name)."""
    from harden.clock import FixedClock
    from harden.debian.archive import ArchiveError, ArchiveReader

    class Fetcher:
        def __init__(self, missing: bool) -> None:
            self.missing = missing
            self.urls: list[str] = []

        def get(self, url: str, limit: int) -> bytes:
            self.urls.append(url)
            if self.missing and "/by-hash/" in url:
                raise ArchiveError(f"{url}: HTTP 404")
            return b"index"

    path, digest = "main/binary-amd64/Packages.xz", "ab" * 32
    for offered, missing, expected in (
        ("yes", False, [f"B/main/binary-amd64/by-hash/SHA256/{digest}"]),
        ("yes", True, [f"B/main/binary-amd64/by-hash/SHA256/{digest}", f"B/{path}"]),
        ("no", False, [f"B/{path}"]),
    ):
        fetcher = Fetcher(missing)
        reader = ArchiveReader(
            tmp_path, FixedClock(dt.datetime(2026, 12, 2, tzinfo=dt.UTC)), fetcher=fetcher
        )
        fields = {"Acquire-By-Hash": offered}
        assert reader._fetch_index("B", path, digest, 5, fields) == b"index"
        assert fetcher.urls == expected
