"""The options choosing how a model runs (backend, threads, calibration); importable without torch."""

import functools

import click

from ig65m.defaults import BACKEND_VARIABLE, BACKENDS, MAX_THREADS, default_backend


def backend_options(function):
    """--backend, --onnx, --threads and --calibration; they reach the command as keyword
    arguments of the same names."""
    options = [
        click.option("--backend", type=click.Choice(BACKENDS), default=default_backend,
                     show_default=f"${BACKEND_VARIABLE} or auto",
                     help="How the model runs. auto: on first use for a model on this machine, "
                          "measure every backend that passes the accuracy gate and keep the "
                          "fastest (cached; `ig65m models --backends` shows the table)."),
        click.option("--onnx", type=click.Path(dir_okay=False), default=None,
                     help="An exported model to run with --backend onnxruntime or openvino "
                          "(no torch weights are loaded); default: export into the cache."),
        click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None,
                     help="CPU threads for the model [one per core; stream models: 1]."),
        click.option("--calibration", type=click.Path(exists=True), multiple=True,
                     help="Videos or folders whose clips calibrate INT8 and check the accuracy "
                          "gate (repeatable) [the videos being extracted]."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), function)
