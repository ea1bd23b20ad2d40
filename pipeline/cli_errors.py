"""How the command line fails: one ``error: ...`` line on stderr and a documented exit status.

Operators script around the exit status and read the one line; a traceback is for developers,
shown only with ``--debug``. Statuses (``secretscope.errors``, docs/errors.md):

    0    done
    1    the surroundings failed at run time (store unreachable past store.outage_seconds, a
         disk or network error)
    2    a wrong invocation or configuration (usage errors, missing or foreign input files,
         bad store URL, invalid config or rule): nothing was done
    3    replay ran to the end but an input file was cut short or corrupt
    70   a bug in secretscope: rerun with --debug and report the traceback
    130  interrupted (Ctrl-C)

Every line printed here goes through :func:`secretscope.redact.redact`, so a password in a URL
never reaches the terminal, even when a driver's message quotes the URL.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence

import typer

from secretscope.errors import (EXIT_FAILURE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE,
                                SecretscopeError)
from secretscope.redact import redact

DEBUG = "--debug"
# libraries whose errors mean the surroundings failed (a database, a broker, a SIEM), not us,
# and what to call that surrounding in the message
_SURROUNDINGS = {"sqlalchemy": "store", "psycopg": "store", "sqlite3": "store", "kafka": "kafka",
                 "requests": "http", "urllib3": "http", "ssl": "tls"}


def take_debug(args: Sequence[str]) -> tuple[bool, list[str]]:
    """Whether ``--debug`` is among ``args`` (before a ``--``), and ``args`` without it: it is
    accepted after the sub-command too, where an operator adds it when a command failed."""
    args = list(args)
    end = args.index("--") if "--" in args else len(args)
    if DEBUG not in args[:end]:
        return False, args
    return True, [a for i, a in enumerate(args) if not (a == DEBUG and i < end)]


def run(app: Callable[..., object], args: list[str], debug: bool) -> int:
    """Run the typer ``app`` on ``args``; the exit status, every failure reported on one line."""
    try:
        status = app(args=args, standalone_mode=False)
    except SystemExit:
        raise
    except typer.Abort:
        return _report("interrupted", EXIT_INTERRUPTED)
    except BaseException as exc:  # noqa: BLE001 -- the one place every failure is reported
        if isinstance(exc, KeyboardInterrupt):
            return _report("interrupted", EXIT_INTERRUPTED)
        if _is_no_args_help(exc):  # bare `secretscope`: the help, as before
            text = exc.ctx.get_help()  # type: ignore[attr-defined]  # rich prints it itself
            if text:
                print(text)
            return EXIT_USAGE
        if debug:
            print(redact("".join(traceback.format_exception(exc))), end="", file=sys.stderr)
        status_, message = describe(exc, debug)
        return _report(message, status_)
    return status if isinstance(status, int) else 0


def describe(exc: BaseException, debug: bool = False) -> tuple[int, str]:
    """The exit status and the one-line message for ``exc``."""
    if _is_click_error(exc):
        return getattr(exc, "exit_code", EXIT_USAGE), _usage_message(exc)
    if isinstance(exc, SecretscopeError):
        status = EXIT_FAILURE if isinstance(exc, ConnectionError) else exc.exit_status
        return status, str(exc)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return EXIT_FAILURE, f"{where}{exc.strerror or exc}"
    line = _first_line(exc)
    what = line if line.startswith(type(exc).__name__) else f"{type(exc).__name__}: {line}"
    surrounding = _SURROUNDINGS.get(type(exc).__module__.split(".")[0])
    if surrounding:
        return EXIT_FAILURE, f"{surrounding}: {what}"
    hint = "" if debug else " (rerun with --debug for the traceback)"
    return EXIT_INTERNAL, f"internal error, please report it: {what}{hint}"


def _report(message: str, status: int) -> int:
    # a YAML or driver message spreads over lines, with "^" markers under the place it means
    one_line = "; ".join(part.strip() for part in message.splitlines()
                         if part.strip().strip("^"))
    print(f"error: {redact(one_line)}", file=sys.stderr)
    return status


def _first_line(exc: BaseException) -> str:
    inner = getattr(exc, "orig", None) or exc  # a SQLAlchemy error quotes its statement after
    lines = str(inner).strip().splitlines()
    return lines[0] if lines else type(inner).__name__


def _is_click_error(exc: BaseException) -> bool:
    """Typer's usage errors (click's, or the copy of click newer typer releases carry)."""
    return callable(getattr(exc, "format_message", None)) and \
        isinstance(getattr(exc, "exit_code", None), int)


def _is_no_args_help(exc: BaseException) -> bool:
    return type(exc).__name__ == "NoArgsIsHelpError" and getattr(exc, "ctx", None) is not None


def _usage_message(exc: BaseException) -> str:
    """Click's message, with the usage line and where the help is, on the same line."""
    message = exc.format_message().rstrip(".")  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return message
    usage = ctx.get_usage().removeprefix("Usage:").strip()
    return f"{message} (usage: {usage}; see '{ctx.command_path} --help')"
