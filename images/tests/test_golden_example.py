"""An example team suite, carried by images/debian12.yaml.

The same file runs unchanged under ``pytest --harden-target REF images/tests`` and in
``harden build`` / ``harden verify --definition``: the ``host`` fixture is testinfra's Host, bound
to whatever harden opened.
"""

import pytest


@pytest.mark.controls("iso27017:CLD.9.5.2")
def test_login_defs_umask_027(host):
    """New files are not readable by others: login.defs sets UMASK 027 or stricter"""
    text = host.file("/etc/login.defs").content_string
    settings = [ln.split() for ln in text.splitlines() if ln.strip().startswith("UMASK")]
    assert settings and len(settings[-1]) > 1, "no UMASK in /etc/login.defs"
    umask = int(settings[-1][1], 8)
    assert umask & 0o027 == 0o027, f"UMASK {settings[-1][1]} lets others read new files"


@pytest.mark.controls("iso27017:CLD.9.5.2")
def test_os_is_debian(host):
    """The image runs Debian"""
    assert host.system_info.distribution == "debian"


@pytest.mark.skip(reason="an example of a skip: reported as not applicable, never as passed")
def test_skipped_example(host):
    raise AssertionError("not run")
