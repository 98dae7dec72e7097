"""`models`: every registered model with its family, classes, input and weights. Torch-free:
the table is data (`ig65m.models.table`)."""

import json

import click

from ig65m.cli.base import command
from ig65m.models.registry import model_rows

COLUMNS = ("name", "family", "classes", "clip_frames", "frame_stride", "input", "parameters", "pin",
           "weights")


def _millions(count):
    return "-" if count is None else f"{count / 1e6:.2f}M"


def format_table(rows, columns=COLUMNS):
    """Aligned plain-text columns."""
    cells = [[str(row[c]) if c != "parameters" else _millions(row[c]) for c in columns]
             for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    lines = [columns] + cells
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip()
                     for line in lines)


def format_markdown(rows):
    """A Markdown table (the README's models section is generated from it)."""
    head = ["model", "family", "classes", "input (T x H x W)", "parameters", "feature dim",
            "description"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"`{row['name']}`", row["family"], str(row["classes"]), row["input"].replace("x", " x "),
                 _millions(row["parameters"]), str(row["feature_dim"]), row["description"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


BACKEND_COLUMNS = ("model", "input", "backend", "precision", "clips_per_s", "ratio_to_torch",
                   "min_cosine", "top1_agreement", "chosen", "refused")


def backend_rows():
    """One dict per backend measured by `--backend auto` on this machine (ig65m.backends)."""
    from ig65m.backends.cache import read_choices

    rows = []
    for choice in read_choices().values():
        for row in choice.get("table", []):
            rows.append({"model": choice["model"], "input": "x".join(map(str, choice["clip_shape"])),
                         **{key: row.get(key, "") for key in BACKEND_COLUMNS[2:8]},
                         "chosen": "*" if row["backend"] == choice["backend"] else "",
                         "refused": row.get("refused", "")})
    return rows


@command("models")
@click.option("--format", "output_format", type=click.Choice(["table", "json", "markdown"]),
              default="table", show_default=True, help="json: one object per line.")
@click.option("--backends", "show_backends", is_flag=True,
              help="Show the backends `--backend auto` measured on this machine instead: speed, "
                   "ratio to torch fp32, accuracy gate, the one chosen (*).")
def models(output_format, show_backends):
    """List every model: name, family, classes, clip frames, input size, parameters, weights URL."""
    if show_backends:
        rows = backend_rows()
        if output_format == "json":
            click.echo("\n".join(json.dumps(row) for row in rows))
        else:
            click.echo(format_table(rows, BACKEND_COLUMNS) if rows else
                       "no backends measured yet: extract with --backend auto first")
        return
    rows = model_rows()
    if output_format == "json":
        for row in rows:
            click.echo(json.dumps(row))
    else:
        click.echo(format_markdown(rows) if output_format == "markdown" else format_table(rows))
