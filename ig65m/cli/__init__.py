"""Command line: one click group `ig65m`; each command also has its own console script.

Commands are thin: they parse options and call the library. Each lives in its own module here and
is imported only when it runs, so `semcode` or `index-serve` start without loading torch, and
`ig65m --help` reads the commands' one-line help from their docstrings without importing them.
"""

import ast
import importlib
import importlib.util

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


def short_help(name, limit=45):
    """The first sentence of command `name`'s docstring, read from its source (no import)."""
    module, attribute = COMMANDS[name]
    source = importlib.util.find_spec(module).origin
    with open(source, encoding="utf-8") as stream:
        tree = ast.parse(stream.read())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == attribute:
            return _short(ast.get_docstring(node) or "", limit)
    return ""


def _short(text, limit):
    """The first sentence of `text`'s first paragraph, cut to `limit` with "..." (as click's
    own short help, whose helper is deprecated)."""
    words = text.split("\n\n")[0].split()
    length = -1
    for index, word in enumerate(words):
        length += len(word) + 1
        if length > limit:
            break
        if word.endswith("."):
            return " ".join(words[:index + 1])
    else:
        return " ".join(words)
    kept = []
    for word in words:
        if len(" ".join(kept + [word])) + 3 > limit:
            break
        kept.append(word)
    return " ".join(kept) + "..."


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        return _load(name) if name in COMMANDS else None

    def format_commands(self, ctx, formatter):
        """The command list of `--help`, without importing any command."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, short_help(name, limit)) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ig65m")
def main():
    """Video clip embeddings with pretrained 3D CNNs, searchable with Faiss."""

