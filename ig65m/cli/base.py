"""What every command shares: the click command class that turns user errors into one line."""

import contextlib
import signal
import threading

import click

from ig65m.errors import Ig65mError


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

