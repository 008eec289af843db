"""apt's configuration read the way apt reads it (no apt-config run)."""

from __future__ import annotations

import pytest

from harden.verifiers.aptconf import (
    AptConfError,
    conf_parts,
    effective,
    insecure_options,
    parse,
    string_to_bool,
    trusted_sources,
)

D = "/etc/apt/apt.conf.d/"


def test_string_to_bool_is_apts() -> None:
    assert [string_to_bool(v) for v in ("1", "0x1", "Yes", "on", "enable", "with")] == [True] * 6
    assert [string_to_bool(v) for v in ("0", "no", "False", "off", "without")] == [False] * 5
    assert string_to_bool("maybe") is None and string_to_bool("2") is None


def test_conf_parts_are_the_files_apt_reads_in_its_order() -> None:
    names = ["99z", "01a.conf", "10b.bak", ".hidden", "x y", "20c.conf.", "05-d", "a:b"]
    assert conf_parts(names) == ["01a.conf", "05-d", "99z", "a:b"]


def test_nested_scopes_comments_and_case() -> None:
    text = """
    // a comment "with quotes"
    /* a block
       APT::Get::AllowUnauthenticated "true"; */
    # APT::Get::AllowUnauthenticated "true";
    apt { get { allowunauthenticated "tr%75e"; }; };
    Acquire::AllowWeakRepositories "false"; Acquire::http::Proxy "http://x/#y";
    """
    conf = effective(parse(text, "f"))
    assert conf["apt::get::allowunauthenticated"][1] == "true"
    assert conf["acquire::http::proxy"][1] == "http://x/#y"
    assert "acquire::allowweakrepositories" in conf


def test_the_last_assignment_wins_and_clear_removes() -> None:
    files = {
        D + "10on": 'APT::Get::AllowUnauthenticated "1";',
        D + "20off": 'APT::Get::AllowUnauthenticated "no";',
    }
    assert insecure_options(files) == ([], 2)
    files[D + "30clear"] = '#clear APT::Get;\nAcquire::AllowInsecureRepositories "yes";'
    bad, n = insecure_options(files)
    assert n == 3 and bad == [
        'Acquire::AllowInsecureRepositories "yes" (/etc/apt/apt.conf.d/30clear:2)'
    ]


def test_binary_scope_main_file_and_ignored_names() -> None:
    files = {
        D + "50x.conf": 'Binary::apt { APT::Get::AllowUnauthenticated "on"; };',
        D + "60x.bak": 'Acquire::AllowWeakRepositories "true";',  # apt ignores .bak
        "/etc/apt/apt.conf": 'Acquire::AllowDowngradeToInsecureRepositories "enable";',
    }
    bad, n = insecure_options(files)
    assert n == 2
    assert any("Binary::apt::APT::Get::AllowUnauthenticated" in b for b in bad)
    assert any("AllowDowngradeToInsecureRepositories" in b for b in bad)
    assert not any("AllowWeak" in b for b in bad)


@pytest.mark.parametrize(
    "text",
    [
        'APT::Get::AllowUnauthenticated "true" junk;',
        '{ APT::Get::AllowUnauthenticated "true"; };',
        'APT::Get::AllowUnauthenticated "true',
        "#include /etc/elsewhere.conf;",
        "#clear;",
        'APT::Get::AllowUnauthenticated "true"',
    ],
)
def test_what_apt_would_refuse_fails_never_passes(text: str) -> None:
    bad, _ = insecure_options({D + "99bad": text})
    assert bad and "apt would refuse" in bad[0]
    with pytest.raises(AptConfError):
        parse(text, "x")


def test_include_of_a_read_file_is_followed() -> None:
    files = {
        D + "10inc": "#include /etc/apt/apt.conf.d/zz.other;",
        D + "zz.other": 'Acquire::AllowInsecureRepositories "true";',
    }
    bad, _ = insecure_options(files)
    assert bad == ['Acquire::AllowInsecureRepositories "true" (/etc/apt/apt.conf.d/zz.other:1)']


def test_trusted_sources_one_line_and_deb822() -> None:
    files = {
        "/etc/apt/sources.list": "# deb [trusted=yes] http://x/ bookworm main\n"
        "deb [arch=amd64 Trusted=true] http://m/ bookworm main\n",
        "/etc/apt/sources.list.d/a.sources": "Types: deb\nAllow-Insecure: yes\nAllow-Weak: no\n",
        "/etc/apt/sources.list.d/b.list": "deb [allow-downgrade-to-insecure=1] http://m/ x y\n",
    }
    assert trusted_sources(files) == [
        "/etc/apt/sources.list:2: Trusted=true",
        "/etc/apt/sources.list.d/a.sources:2: Allow-Insecure=yes",
        "/etc/apt/sources.list.d/b.list:1: allow-downgrade-to-insecure=1",
    ]
    assert trusted_sources({"/etc/apt/sources.list": "deb [trusted=no] http://m/ x y\n"}) == []
