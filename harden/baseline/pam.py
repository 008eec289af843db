"""Which PAM module reads which configuration file, where it must sit, and how to put it there.

``/etc/security/faillock.conf`` says nothing unless ``pam_faillock.so`` is in the ``auth`` and
``account`` stacks (Debian: ``common-auth``/``common-account``, which every login service
includes); ``pwquality.conf`` and ``pwhistory.conf`` likewise need their module in
``common-password``. The verifier (``verifiers/pam.py``) fails a setting whose module is not in
force; the remediation (``config_line.sh.j2``) enables the module with Debian's own
``pam-auth-update`` profiles, so later package installs keep the stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Need:
    """The module must appear in the ``ptype`` lines of ``stack`` with every one of ``args``."""

    stack: str
    ptype: str
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class PamProfile:
    """A ``/usr/share/pam-configs`` profile harden ships (``{arg}`` becomes ``key=value``)."""

    name: str
    text: str


@dataclass(frozen=True)
class PamEffect:
    module: str
    needs: tuple[Need, ...]
    # profiles to enable when the module is missing: harden's own, or one a package ships
    profiles: tuple[PamProfile, ...] = ()
    packaged_profile: str | None = None
    # distribution -> first major version whose module reads the file; before it only the
    # module's arguments count (Debian 12's Linux-PAM 1.5.2 pam_pwhistory ignores pwhistory.conf)
    reads_file_since: dict[str, int] = field(default_factory=dict)
    # a setting of the file that has to be passed as module argument where the file is not read
    argument_keys: tuple[str, ...] = ()


_FAILLOCK = (
    PamProfile(
        "harden-faillock",
        "Name: harden: count failed logins (pam_faillock authfail)\n"
        "Default: yes\nPriority: 0\nAuth-Type: Primary\nAuth:\n"
        "\t[default=die]\tpam_faillock.so authfail\n",
    ),
    PamProfile(
        "harden-faillock-preauth",
        "Name: harden: refuse locked accounts (pam_faillock preauth, account)\n"
        "Default: yes\nPriority: 1024\nAuth-Type: Primary\nAuth:\n"
        "\trequisite\tpam_faillock.so preauth\n"
        "Account-Type: Primary\nAccount:\n\trequired\tpam_faillock.so\n",
    ),
)

PAM_EFFECT: dict[str, PamEffect] = {
    "/etc/security/faillock.conf": PamEffect(
        "pam_faillock.so",
        (
            Need("common-auth", "auth", ("preauth",)),
            Need("common-auth", "auth", ("authfail",)),
            Need("common-account", "account"),
        ),
        profiles=_FAILLOCK,
    ),
    "/etc/security/pwquality.conf": PamEffect(
        "pam_pwquality.so",
        (Need("common-password", "password"),),
        packaged_profile="pwquality",  # libpam-pwquality ships and enables it
    ),
    "/etc/security/pwhistory.conf": PamEffect(
        "pam_pwhistory.so",
        (Need("common-password", "password"),),
        profiles=(
            PamProfile(
                "harden-pwhistory",
                "Name: harden: refuse recently used passwords (pam_pwhistory)\n"
                "Default: yes\nPriority: 1000\nPassword-Type: Primary\nPassword:\n"
                "\trequisite\tpam_pwhistory.so use_authtok{arg}\n",
            ),
        ),
        reads_file_since={"debian": 13, "ubuntu": 24},
        argument_keys=("remember",),
    ),
}
