"""Command line: one click group `ig65m`; each command also has its own console script.

Commands are thin: they parse options and call the library. Each lives in its own module here and
is imported only when it runs, so `semcode` or `index-serve` start without loading torch.
"""

import importlib

import click

from ig65m import __version__

# command name -> (module, attribute); setup.py's console scripts point at the same places
COMMANDS = {
    "convert": ("ig65m.cli.convert", "convert"),
    "extract": ("ig65m.cli.extract", "extract"),
    "semcode": ("ig65m.cli.semcode", "semcode"),
    "index-build": ("ig65m.cli.index", "index_build"),
    "index-serve": ("ig65m.cli.index", "index_serve"),
    "index-query": ("ig65m.cli.index", "index_query"),
    "models": ("ig65m.cli.models", "models"),
    "classify": ("ig65m.cli.classify", "classify"),
    "finetune": ("ig65m.cli.train", "finetune"),
    "evaluate": ("ig65m.cli.train", "evaluate"),
    "dreamer": ("ig65m.cli.dreamer", "dreamer"),
}


def _load(name):
    module, attribute = COMMANDS[name]
    return getattr(importlib.import_module(module), attribute)


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        return _load(name) if name in COMMANDS else None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ig65m")
def main():
    """Video clip embeddings with pretrained 3D CNNs, searchable with Faiss."""

