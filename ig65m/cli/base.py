"""What every command shares: the click command class that turns user errors into one line, and
the log format (library notes and warnings go through `logging`, shown on stderr as
`note: ...` / `warning: ...`)."""

import logging
import sys

import contextlib
import signal
import threading

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


class OneLineUsageError(click.ClickException):
    """A bad command line, shown like every other user error: one `error:` line, exit code 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


class Command(click.Command):
    """A click command whose `Ig65mError`s and bad options print as `error: ...` on stderr with
    exit code 2, and that stops on SIGTERM as on Ctrl-C (temporaries removed, live sources kept)."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as err:
            raise OneLineUsageError(f"{err.format_message().rstrip('.')} (see {info_name} --help)") \
                from None

    def invoke(self, ctx):
        setup_logging()
        with sigterm_as_interrupt():
            try:
                return super().invoke(ctx)
            except Ig65mError as err:
                click.echo(f"error: {err}", err=True)
                ctx.exit(2)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does: the
    same clean-up runs (temporaries removed, a live source's features kept). Elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def command(name, **kwargs):
    """`@command("extract")`: a click command using `Command`."""
    return click.command(name, cls=Command, **kwargs)
