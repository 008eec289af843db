"""The error hierarchy. Only the CLI turns these into exit codes; nothing else exits."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    POLICY = 1  # non-compliant, gate denied, stale
    USAGE = 2
    INVALID_INPUT = 3  # baseline, config, attestation
    ENVIRONMENT = 4  # engine, SSH, registry, key


class HardenError(Exception):
    """Root of every error a user can act on."""

    exit_code: ExitCode = ExitCode.INVALID_INPUT

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def diagnostics(self) -> str:
        text = f"error: {self.message}"
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


class Location:
    """Where in an input file something went wrong (1-based line)."""

    __slots__ = ("column", "file", "line")

    def __init__(self, file: str, line: int | None = None, column: int | None = None) -> None:
        self.file = file
        self.line = line
        self.column = column

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}"


class InputError(HardenError):
    """Invalid input file; names the file, the line and the rule id where there is one."""

    exit_code = ExitCode.INVALID_INPUT

    def __init__(
        self,
        message: str,
        *,
        location: Location | None = None,
        rule_id: str | None = None,
        hint: str | None = None,
    ) -> None:
        prefix = f"{location}: " if location else ""
        rule = f"rule {rule_id}: " if rule_id else ""
        super().__init__(f"{prefix}{rule}{message}", hint=hint)
        self.location = location
        self.rule_id = rule_id


class BaselineError(InputError):
    """A baseline is malformed, inconsistent or cannot be found."""


class ImageDefinitionError(InputError):
    """An image definition is malformed."""


class AttestationError(HardenError):
    """An attestation is malformed or does not verify."""

    exit_code = ExitCode.INVALID_INPUT


class EnvironmentProblem(HardenError):
    """Something outside harden is missing or broken (engine, SSH, registry, key)."""

    exit_code = ExitCode.ENVIRONMENT


class TargetError(EnvironmentProblem):
    """A docker image, container or VM could not be reached or driven."""


class RemediationError(TargetError):
    """A remediation step failed on the target."""


class RegistryError(EnvironmentProblem):
    """The OCI registry failed or refused a request."""


class SigningKeyError(EnvironmentProblem):
    """A signing or verification key is missing, unreadable or insecure."""


class UsageError(HardenError):
    exit_code = ExitCode.USAGE
