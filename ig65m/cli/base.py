"""What every command shares: the click command class that turns user errors into one line."""

import click

from ig65m.errors import Ig65mError


class Command(click.Command):
    """A click command whose `Ig65mError`s print as `error: ...` on stderr with exit code 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Ig65mError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(2)


def command(name, **kwargs):
    """`@command("extract")`: a click command using `Command`."""
    return click.command(name, cls=Command, **kwargs)

