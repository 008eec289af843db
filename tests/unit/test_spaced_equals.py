"""``separator: spaced_equals``: auditd.conf needs ``key = value`` (``key=value`` stops auditd)."""

from __future__ import annotations

from harden.baseline.kinds import ConfigLine
from harden.builder.render import _ctx_config_line
from harden.target import TargetKind
from harden.verifiers.checks import _split


def _spec(separator: str) -> ConfigLine:
    return ConfigLine.model_validate(
        {
            "path": "/etc/audit/auditd.conf",
            "key": "space_left_action",
            "value": "email,exec,single,halt",
            "compare": "one_of",
            "match": "last",
            "separator": separator,
        }
    )


def test_remediation_writes_blanks_around_the_equals_sign() -> None:
    assert _ctx_config_line(_spec("spaced_equals"), TargetKind.VM)["line"] == (
        "space_left_action = email"
    )
    assert _ctx_config_line(_spec("equals"), TargetKind.VM)["line"] == "space_left_action=email"


def test_check_reads_only_what_auditd_would_accept() -> None:
    assert _split("space_left_action = email", "spaced_equals") == ("space_left_action", "email")
    assert _split("  log_group = adm  ", "spaced_equals") == ("log_group", "adm")
    # auditd rejects these lines: not a value harden may count as set
    assert _split("space_left_action=email", "spaced_equals") is None
    assert _split("space_left_action =email", "spaced_equals") is None
    assert _split("space_left_action=email", "equals") == ("space_left_action", "email")
