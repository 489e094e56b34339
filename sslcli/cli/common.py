"""Conventions shared by every command: --json/--quiet/--debug, one-line errors, exit codes.

Output and progress live in `sslcli.console`; a command only configures them.

A command is a plain function registered with :func:`command`. It returns a JSON-serialisable dict (its result)
or None. The wrapper adds the global options, prints the result (one JSON object on stdout with ``--json``, a
short human summary otherwise) and maps errors to exit codes: 0 success, 1 runtime failure, 2 usage or validation.
"""

from __future__ import annotations

import functools
import inspect
import json
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import typer

try:  # typer >= 0.22 vendors click; older releases use the click package
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperGroup
from typer.exceptions import Abort

from sslcli.cli.render import key_values
from sslcli.console import Output, current, progress, set_current
from sslcli.errors import Interrupted, SslcliError

__all__ = ["Output", "command", "current", "progress", "run_guarded", "set_current"]  # output lives in sslcli.console


_GLOBAL_OPTIONS = [
    inspect.Parameter("json_output", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--json", help="Print one machine-readable JSON object on stdout.")),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--quiet", "-q", help="No progress or log lines (the result is still printed).")),
    inspect.Parameter("debug", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--debug", help="Show tracebacks on errors.")),
]


def _message(exc: BaseException) -> str:
    """The user-facing text of an error. DataLoader workers re-raise with the worker's traceback embedded in the
    message; the user gets its last line (the original error) unless --debug."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def report_error(message: str, exit_code: int, as_json: bool, details: dict[str, Any] | None = None) -> None:
    """The one error report every failure gets: one line on stderr and, under --json, one JSON object on stdout
    (``details`` adds fields to it)."""
    message = " ".join(message.split())  # one line, whatever the message held
    print(f"error: {message}", file=sys.stderr, flush=True)
    if as_json:
        print(json.dumps({"error": message, "exit_code": exit_code, **(details or {})}), flush=True)


def _os_error_message(exc: OSError) -> str:
    """An operating-system error as 'path: reason' (the file it names first), e.g. an unwritable output folder."""
    reason = exc.strerror or type(exc).__name__
    if exc.filename is not None:
        return f"{exc.filename}: {reason}" + (f" ({exc.filename2})" if exc.filename2 else "")
    return reason


def run_guarded(fn: Callable[[], Any], out: Output) -> Any:
    """Run ``fn`` mapping errors to one-line messages and exit codes (shared by commands and tests). `Interrupted`
    (a stop signal; `pretrain` saves a checkpoint first) and KeyboardInterrupt exit with 128 + the signal's number."""
    try:
        return fn()
    except typer.Exit:
        raise
    except (Interrupted, KeyboardInterrupt) as exc:  # KeyboardInterrupt: SIGINT outside a training loop
        stop = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        report_error(str(stop), stop.exit_code, out.json, stop.details())
        raise typer.Exit(stop.exit_code) from None
    except SslcliError as exc:
        if out.debug:
            traceback.print_exc()
        report_error(_message(exc), exc.exit_code, out.json)
        raise typer.Exit(exc.exit_code) from None
    except OSError as exc:  # permissions, a full disk, a folder where a file should be: the path and the reason
        if out.debug:
            traceback.print_exc()
        report_error(_os_error_message(exc), 1, out.json)
        raise typer.Exit(1) from None
    except Exception as exc:  # a bug or an unexpected environment problem: still one line unless --debug
        if out.debug:
            traceback.print_exc()
        report_error(f"{type(exc).__name__}: {_message(exc)} (rerun with --debug for the traceback)", 1, out.json)
        raise typer.Exit(1) from None


class OneLineErrorsGroup(TyperGroup):
    """The root command group: usage errors (unknown option, bad value, missing argument) as one line naming the
    command, the option and the value, instead of click's usage box; a JSON object on stdout under --json."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        args = list(sys.argv[1:] if args is None else args)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()
            code = exc.exit_code
        except ClickException as exc:
            where = exc.ctx.command_path if getattr(exc, "ctx", None) else "sslcli"
            hint = f" (see '{where} --help')" if getattr(exc, "ctx", None) else ""
            report_error(f"{where}: {exc.format_message()}{hint}", exc.exit_code, "--json" in args)
            code = exc.exit_code
        except Abort:
            report_error("aborted", 1, "--json" in args)
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


def command(app: typer.Typer, name: str, human: Callable[[dict[str, Any]], str] | None = None,
            **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` as ``name`` on ``app`` with the global options and the error/exit-code conventions.
    ``human``: how the result reads without --json (default: `render.key_values`, one line per key)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        # Annotations evaluated (modules use `from __future__ import annotations`): typer then sees the options
        # declared as `Annotated[..., typer.Option(...)]` (sslcli.cli.options).
        sig = inspect.signature(fn, eval_str=True)

        @functools.wraps(fn)
        def wrapper(*args: Any, json_output: bool = False, quiet: bool = False, debug: bool = False,
                    **kw: Any) -> None:
            out = Output(json=json_output, quiet=quiet, debug=debug)
            set_current(out)
            result = run_guarded(lambda: fn(*args, **kw), out)
            if result is None:
                return
            if out.json:
                print(json.dumps(result, default=str))
            else:  # the result is what was asked for: --quiet silences progress and log lines, never this
                print((human or key_values)(result))

        wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), *_GLOBAL_OPTIONS])  # type: ignore[attr-defined]
        app.command(name, **kwargs)(wrapper)
        return fn

    return decorate
