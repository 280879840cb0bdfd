"""Errors a user can act on.

`UserError` carries the exit code the CLI uses (2: bad input or unsupported
model) and a one-line message that says what to do. Everything else that
escapes is a bug in t2c and shows a traceback only under `--debug`.
"""


class T2CError(Exception):
    """Base class of t2c's own errors; `exit_code` is what the CLI returns."""

    exit_code = 2


class UserError(T2CError):
    """Bad input or an unsupported model: exit 2 with a one-line message."""

    exit_code = 2


class UnsupportedOpError(UserError):
    """The frontend met an op it has no conversion for."""


class IRParseError(UserError):
    """IR text that does not parse; the message names the line."""


class VerifyError(T2CError):
    """The IR breaks an invariant (SSA, types, attrs): a bug in a pass or the frontend, so exit 3.

    (IR text a user wrote that does not verify is bad input: the parser raises
    IRParseError, and `t2c opt` reports an input graph that does not verify as a
    UserError.)"""

    exit_code = 3


class ValidationError(T2CError):
    """An artifact or pass does not reproduce the eager model within tolerance.

    `report` is the compile's report.json content when a compile raised it (`t2c check`
    turns it into one result per pass)."""

    exit_code = 1

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report
