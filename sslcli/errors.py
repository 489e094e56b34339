"""Errors that the CLI turns into one-line messages and exit codes.

Library code raises these; `sslcli.cli.common.command` catches them, prints ``error: <message>`` on stderr and exits
with the code below. Anything else is a bug and gets a traceback under ``--debug``.
"""

from __future__ import annotations


class SslcliError(Exception):
    """A runtime failure the user can act on (exit code 1)."""

    exit_code = 1


class InputError(SslcliError):
    """Bad input: a missing or malformed file, field or value (exit code 2).

    The message must name the file, field or value and say what was expected.
    """

    exit_code = 2


class NotImplementedYet(SslcliError):
    """A command or option that exists in the CLI surface but is not built yet (exit code 1)."""

    def __init__(self, what: str):
        super().__init__(f"not implemented yet: {what}")


class CorruptImageError(SslcliError):
    """An image file that cannot be decoded. Long jobs report and skip these."""

    def __init__(self, path, reason: str = "cannot decode"):
        self.path = str(path)
        super().__init__(f"{path}: {reason}")
