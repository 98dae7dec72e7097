"""What every command shares: the click command class that turns user errors into one line, and
the log format (library notes and warnings go through `logging`, shown on stderr as
`note: ...` / `warning: ...`)."""

import logging
import sys

import click

from ig65m.errors import Ig65mError

_PREFIXES = {logging.INFO: "note", logging.WARNING: "warning", logging.ERROR: "error"}


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (click's test runner swaps it)."""

    def emit(self, record):
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001  (logging's own convention)
            self.handleError(record)

    def format(self, record):
        return f"{_PREFIXES.get(record.levelno, record.levelname.lower())}: {record.getMessage()}"


def setup_logging():
    """ig65m's loggers print `note:`/`warning:` lines on stderr (once per process)."""
    logger = logging.getLogger("ig65m")
    if not logger.handlers:
        logger.addHandler(_StderrHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False


class Command(click.Command):
    """A click command whose `Ig65mError`s print as `error: ...` on stderr with exit code 2."""

    def invoke(self, ctx):
        setup_logging()
        try:
            return super().invoke(ctx)
        except Ig65mError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(2)


def command(name, **kwargs):
    """`@command("extract")`: a click command using `Command`."""
    return click.command(name, cls=Command, **kwargs)
