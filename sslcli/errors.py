"""Errors that the CLI turns into one-line messages and exit codes.

Library code raises these; `sslcli.cli.common.command` catches them, prints ``error: <message>`` on stderr and exits
with the code below. Anything else is a bug and gets a traceback under ``--debug``.
"""

from __future__ import annotations

import signal


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


class Interrupted(BaseException):
    """A stop signal ended the command: SIGINT, SIGTERM or SIGUSR1; exit code 128 + the signal's number (130, 143,
    138), as a shell reports a process killed by it.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` takes it for a failure. A training run
    that stopped on it sets ``step`` (steps completed) and ``checkpoint`` (the ``last.pt`` that holds them; None when
    the signal came before any step, so there was nothing to save).
    """

    def __init__(self, signum: int, step: int | None = None, checkpoint: str | None = None):
        self.signum, self.step, self.checkpoint = int(signum), step, checkpoint
        self.signal_name = signal.Signals(self.signum).name
        self.exit_code = 128 + self.signum
        if checkpoint is None:
            message = f"interrupted by {self.signal_name}"
        else:
            message = (f"interrupted by {self.signal_name} after step {step}; saved {checkpoint} "
                       "(continue with --resume auto)")
        super().__init__(message)

    def __reduce__(self):  # pickled with its fields (a job runner such as submitit sends it to another process)
        return type(self), (self.signum, self.step, self.checkpoint)

    def details(self) -> dict[str, object]:
        """What a --json report adds to ``error`` and ``exit_code``."""
        return {"interrupted": self.signal_name, "step": self.step, "checkpoint": self.checkpoint}
