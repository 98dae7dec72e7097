"""Command line: one click group `ig65m`; each command also has its own console script.

Commands are thin: they parse options and call the library. Each lives in its own module here.
"""

import click

from ig65m import __version__
from ig65m.cli.classify import classify
from ig65m.cli.convert import convert
from ig65m.cli.extract import extract
from ig65m.cli.index import index_build, index_query, index_serve
from ig65m.cli.models import models
from ig65m.cli.semcode import semcode
from ig65m.cli.train import evaluate, finetune


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ig65m")
def main():
    """Video clip embeddings with pretrained 3D CNNs, searchable with Faiss."""


for _command in (convert, extract, semcode, index_build, index_serve, index_query, models, classify,
                 finetune, evaluate):
    main.add_command(_command)
