"""Behaviour of a booted VM template: what a configuration check cannot prove, tried for real.

Run by every VM build on the clone of the sealed template (``tests: [harden:behaviour/vm]`` in
the image definition), or by hand: ``pytest --harden-target ssh://USER@HOST:PORT
--harden-known-hosts FILE --harden-identity KEY verifiers/behaviour/vm``. The target is a
throwaway: the tests create a probe account, fail logins on purpose and move the clock (then
put it back). Commands run as root (harden's SSH target goes through ``sudo -n``); the SSH login
attempts are made from this process against the target's sshd, host key checked against the key
the suite's connection pinned.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shlex
from collections.abc import Iterator
from typing import Any

import pytest

PROBE = "harden-probe"
PROBE_OTHER = "harden-probe2"


def _ssh(harden_target: Any) -> Any:
    if not hasattr(harden_target, "port") or not hasattr(harden_target, "host_key"):
        pytest.skip("not an SSH target (the VM behaviour suite needs a booted machine)")
    return harden_target


def _ok(host: Any, command: str, *args: str) -> str:
    r = host.run(command, *args)
    assert r.rc == 0, f"{r.command!r} failed ({r.rc}): {r.stderr.strip()[-500:]}"
    return str(r.stdout)


@pytest.fixture(scope="module")
def password() -> str:
    # four character classes, long: pam_pwquality accepts it
    return "Hp-" + secrets.token_urlsafe(18) + "-9aZ"


@pytest.fixture(scope="module")
def probe(host: Any, harden_target: Any, password: str) -> Iterator[str]:
    """Two ordinary accounts with a known password (removed afterwards)."""
    _ssh(harden_target)
    for user in (PROBE, PROBE_OTHER):
        host.run("userdel -r %s >/dev/null 2>&1", user)
        _ok(host, "useradd --create-home --shell /bin/sh %s", user)
        _ok(host, f"printf '%s:%s\\n' {shlex.quote(user)} {shlex.quote(password)} | chpasswd")
    yield PROBE
    for user in (PROBE, PROBE_OTHER):
        host.run("faillock --user %s --reset >/dev/null 2>&1; userdel -r %s", user, user)
    host.run("rm -f /etc/sudoers.d/zz-harden-probe")


def _transport(target: Any) -> Any:
    import paramiko

    pinned = target.host_key
    assert pinned is not None, "the suite's own SSH connection has no pinned host key"
    t = paramiko.Transport((target.host, target.port))
    # ask for the type of the pinned key (the server has one of each type)
    name = pinned.get_name()
    wanted = ["rsa-sha2-512", "rsa-sha2-256", name] if name == "ssh-rsa" else [name]
    t.get_security_options().key_types = [k for k in wanted if k in t.preferred_keys]
    t.start_client(timeout=30)
    offered = t.get_remote_server_key()
    if offered.get_name() != pinned.get_name() or offered.asbytes() != pinned.asbytes():
        t.close()
        pytest.fail("the SSH server offered another host key than the one pinned for the suite")
    return t


def _allowed_methods(target: Any, user: str) -> list[str]:
    import paramiko

    t = _transport(target)
    try:
        t.auth_none(user)
    except paramiko.BadAuthenticationType as e:
        return list(e.allowed_types)
    finally:
        t.close()
    pytest.fail(f"sshd let {user} in without any authentication")


@pytest.mark.controls("iso27017:CLD.9.5.2", "anssi:R29")
def test_password_ssh_login_is_refused(
    host: Any, harden_target: Any, probe: str, password: str
) -> None:
    """sshd refuses a password login, even with the right password"""
    import paramiko

    target = _ssh(harden_target)
    methods = _allowed_methods(target, probe)
    assert "password" not in methods and "keyboard-interactive" not in methods, methods
    t = _transport(target)
    try:
        with pytest.raises((paramiko.AuthenticationException, paramiko.SSHException)):
            t.auth_password(probe, password)
        assert not t.is_authenticated()
    finally:
        t.close()


@pytest.mark.controls("iso27017:CLD.9.5.2", "anssi:R29")
def test_root_ssh_login_is_refused(host: Any, harden_target: Any) -> None:
    """sshd refuses root, even with the key that lets the build account in"""
    import paramiko

    target = _ssh(harden_target)
    effective = _ok(host, "sshd -T 2>/dev/null | grep -i '^permitrootlogin '").split()
    assert effective[1:] == ["no"], f"sshd -T: {' '.join(effective)}"
    if target.key_path is None:
        pytest.fail("the suite's SSH connection has no identity key to try as root")
    key = paramiko.PKey.from_path(target.key_path)
    t = _transport(target)
    try:
        with pytest.raises((paramiko.AuthenticationException, paramiko.SSHException)):
            t.auth_publickey("root", key)
        assert not t.is_authenticated()
    finally:
        t.close()


def _faillock_conf(host: Any) -> dict[str, str]:
    conf: dict[str, str] = {}
    text = host.file("/etc/security/faillock.conf").content_string
    for line in text.splitlines():
        m = re.match(r"^\s*([a-z_]+)\s*=\s*(\S+)", line)
        if m:
            conf[m.group(1)] = m.group(2)
    return conf


def _sudo_as(host: Any, user: str, secret: str) -> Any:
    """``sudo -S`` started by ``user`` with ``secret`` on stdin: a PAM authentication as user
    through common-auth (where pam_faillock counts), without a terminal."""
    return host.run(
        "printf '%%s\\n' %s | setpriv --reuid=%s --regid=%s --init-groups "
        "sudo -S -k -p '' /bin/true",
        secret,
        user,
        user,
    )


def _sudo_wrong_at_once(host: Any, user: str, count: int) -> Any:
    """``count`` wrong passwords for ``user``, all started together: PAM's failure delay
    (pam_unix, about 2 s each under TCG and more) is waited once, not ``count`` times;
    pam_faillock counts each failure (its tally file is locked per write). Prints ACCEPTED for
    any that got in."""
    one = (
        "printf '%%s\\n' wrong-$(od -An -N6 -tx1 /dev/urandom | tr -d ' ') | "
        "setpriv --reuid=%s --regid=%s --init-groups sudo -S -k -p '' /bin/true "
        ">/dev/null 2>&1 && echo ACCEPTED"
    )
    return host.run(f"for i in $(seq {int(count)}); do ( {one} ) & done; wait", user, user)


def _failures(host: Any, user: str) -> int:
    out = _ok(host, "faillock --user %s", user)
    return sum(1 for line in out.splitlines() if re.match(r"^\d{4}-\d\d-\d\d ", line.strip()))


@contextlib.contextmanager
def _clock_moved(host: Any, seconds: int) -> Iterator[None]:
    """Move the guest's wall clock forward, and back again afterwards."""
    _ok(host, "date -s @$(( $(date +%%s) + %s )) >/dev/null", str(seconds))
    try:
        yield
    finally:
        host.run("date -s @$(( $(date +%%s) - %s )) >/dev/null", str(seconds))


@pytest.mark.controls("iso27017:CLD.9.5.2", "anssi:R31")
def test_wrong_passwords_lock_the_account_until_unlock_time(
    host: Any, probe: str, password: str
) -> None:
    """N wrong passwords lock the account (pam_faillock); it unlocks after unlock_time"""
    conf = _faillock_conf(host)
    deny = int(conf.get("deny", "3"))
    unlock = int(conf.get("unlock_time", "600"))
    assert 0 < deny <= 10, f"faillock deny = {deny}"
    assert unlock > 0, f"faillock unlock_time = {unlock}: a locked account never unlocks"
    _ok(
        host,
        f"printf '%s\\n' '{probe} ALL=(root) /bin/true' > /etc/sudoers.d/zz-harden-probe"
        " && chmod 0440 /etc/sudoers.d/zz-harden-probe",
    )
    _ok(host, "faillock --user %s --reset", probe)
    # the harness works: the right password authenticates
    first = _sudo_as(host, probe, password)
    assert first.rc == 0, f"the right password was refused before any failure: {first.stderr}"
    wrong = _sudo_wrong_at_once(host, probe, deny)
    assert "ACCEPTED" not in wrong.stdout, "a wrong password was accepted"
    assert _failures(host, probe) >= deny, _ok(host, "faillock --user %s", probe)
    locked = _sudo_as(host, probe, password)
    assert locked.rc != 0, f"after {deny} wrong passwords the right one still works: not locked"
    # still locked just before unlock_time, unlocked after it
    with _clock_moved(host, max(unlock - 60, 0)):
        assert _sudo_as(host, probe, password).rc != 0, "unlocked before unlock_time"
    with _clock_moved(host, unlock + 5):
        after = _sudo_as(host, probe, password)
        assert after.rc == 0, f"still locked {unlock + 5} s later: {after.stderr}"


@pytest.mark.controls("iso27017:CLD.9.5.2", "anssi:R33")
def test_su_is_restricted_to_its_group(host: Any, probe: str, password: str) -> None:
    """su is refused to a user outside the pam_wheel group, even with the right password"""
    pam = host.file("/etc/pam.d/su").content_string
    line = next(
        (ln for ln in pam.splitlines() if re.match(r"^\s*auth\s+required\s+pam_wheel\.so", ln)),
        None,
    )
    assert line is not None, "/etc/pam.d/su has no 'auth required pam_wheel.so'"
    m = re.search(r"\bgroup=(\S+)", line)
    group = m.group(1) if m else "wheel"
    _ok(host, "faillock --user %s --reset", PROBE_OTHER)

    def su() -> Any:
        # su reads the password from stdin without a terminal (PAM's conversation)
        return host.run(
            "printf '%%s\\n' %s | setpriv --reuid=%s --regid=%s --init-groups "
            "su -c 'echo su-worked' %s",
            password,
            probe,
            probe,
            PROBE_OTHER,
        )

    refused = su()
    assert refused.rc != 0 and "su-worked" not in refused.stdout, "su worked outside the group"
    # the harness works: the same call succeeds for a member of the group
    _ok(host, "getent group %s >/dev/null || groupadd %s", group, group)
    _ok(host, "gpasswd -a %s %s >/dev/null", probe, group)
    try:
        allowed = su()
    finally:
        host.run("gpasswd -d %s %s >/dev/null", probe, group)
    assert allowed.rc == 0 and "su-worked" in allowed.stdout, (
        f"su failed for a member of {group} too: {allowed.stderr}"
    )


@pytest.mark.controls("iso27017:CLD.9.5.2", "anssi:R14")
def test_setuid_programs_do_not_dump_core(host: Any) -> None:
    """Core dumps are off for setuid programs (fs.suid_dumpable = 0) and for sessions"""
    assert host.file("/proc/sys/fs/suid_dumpable").content_string.strip() == "0"
    # the limit in force in a PAM session (this SSH login and sudo both went through pam_limits)
    assert _ok(host, "ulimit -H -c").strip() == "0"


@pytest.mark.controls("iso27017:CLD.9.5.2", "anssi:R73")
def test_auditd_loaded_the_rules(host: Any) -> None:
    """auditd loaded the identity and time-change rules at boot, and they are locked"""
    loaded = _ok(host, "auditctl -l")
    for watch in ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow", "/etc/localtime"):
        assert re.search(rf"^-w {re.escape(watch)} -p wa", loaded, re.M), f"no watch on {watch}"
    for call in ("adjtimex", "settimeofday", "clock_settime"):
        assert re.search(rf"-S ([a-z0-9_]+,)*{call}(,| |$)", loaded, re.M), f"no rule for {call}"
    status = _ok(host, "auditctl -s")
    assert re.search(r"^enabled 2$", status, re.M), status
    # immutable for real: deleting the rules is refused until the next boot
    assert host.run("auditctl -D").rc != 0, "auditctl -D was allowed: the rules are not locked"
    assert _ok(host, "auditctl -l") == loaded
