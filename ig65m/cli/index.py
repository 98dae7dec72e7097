"""`index-build`, `index-serve`, `index-query`: clip search over a collection of feature files."""

import json
import os
import sys

import click

from ig65m.cli.base import command
from ig65m.cli.options import model_options, split_model_options
from ig65m.errors import Ig65mError
from ig65m.fileio import load_features
from ig65m.index.build import DEFAULT_TARGET_RECALL, build_index
from ig65m.index.client import IndexClient
from ig65m.index.manifest import METRICS, read_manifest
from ig65m.index.server import MAX_K


@command("index-build")
@click.argument("paths", nargs=-1, required=True, metavar="FEATURES... INDEX_DIR")
@click.option("--index-key", default=None,
              help="Any Faiss factory string, e.g. 'IVF4096,Flat' or 'HNSW32' [chosen from the "
                   "collection's size: Flat, then IVF]")
@click.option("--metric", type=click.Choice(METRICS), default=None,
              help="Distance: l2, or cosine (vectors normalised)  [l2]")
@click.option("--append", is_flag=True,
              help="Add the feature files not yet in an existing INDEX_DIR.")
@click.option("--target-recall", type=click.FloatRange(0, 1), default=DEFAULT_TARGET_RECALL,
              show_default=True,
              help="Recall@10 the default search breadth (nprobe) is calibrated for.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--shards", type=click.IntRange(1), default=None,
              help="Build from this many shards in parallel and merge them into on-disk lists: "
                   "memory follows the shard, not the collection.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Shards built at once (with --shards) [CPU cores].")
@click.option("--ray", "use_ray", is_flag=True,
              help="Build the shards as Ray tasks (pip install 'ig65m[ray]') instead of processes.")
@click.option("--ray-address", default=None, metavar="auto|ray://HOST:10001|HOST:PORT",
              help="The Ray cluster to join with --ray (default: start a local one).")
def index_build(paths, index_key, metric, append, target_recall, quiet, shards, workers, use_ray,
                ray_address):
    """Index the clips of FEATURES (.npy files or folders of them) into INDEX_DIR.

    Prints the index manifest as JSON. INDEX_DIR appears only once complete.
    """
    if len(paths) < 2:
        raise Ig65mError("give one or more FEATURES files or folders, then INDEX_DIR")
    *inputs, index_dir = paths
    if append and (index_key or metric):
        raise Ig65mError("--append keeps the index's own --index-key and --metric")
    sharding = None
    if shards or use_ray or workers:
        from ig65m.index.shards import ShardOptions

        sharding = ShardOptions(shards or 8, workers, use_ray, ray_address)
    manifest = build_index(inputs, index_dir, index_key=index_key, metric=metric or "l2",
                           append=append, target_recall=target_recall, progress=not quiet,
                           sharding=sharding)
    click.echo(json.dumps(manifest, indent=2))


@command("index-serve")
@click.argument("index_dir", type=click.Path())
@click.option("--host", default="127.0.0.1", envvar="IG65M_HOST", show_default=True,
              show_envvar=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=5000, envvar="IG65M_PORT",
              show_default=True, show_envvar=True, help="Port (0: any free port).")
@click.option("--token", default=None, envvar="IG65M_TOKEN", show_envvar=True,
              help="Require 'Authorization: Bearer TOKEN' on every route but /healthz.")
@click.option("--threads", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Requests served at once.")
@click.option("--omp-threads", type=click.IntRange(1, 1024), default=None,
              help="OpenMP threads per search [cores / --threads, at least 1]")
def index_serve(index_dir, host, port, token, threads, omp_threads):
    """Serve INDEX_DIR over HTTP (waitress): GET /healthz, POST /search, GET /clips/ID.

    The server runs in a fresh interpreter (same process id) that never imports torch: the `ig65m`
    command group loads the models, close to 1 GB the server does not need.
    """
    read_manifest(index_dir)  # a wrong folder fails here, before the hand-over
    argv = [sys.executable, "-m", "ig65m.index.server", str(index_dir), "--host", host,
            "--port", str(port), "--threads", str(threads)]
    if omp_threads:
        argv += ["--omp-threads", str(omp_threads)]
    if token:
        os.environ["IG65M_TOKEN"] = token  # environment, not argv: argv is public in `ps`
    else:
        os.environ.pop("IG65M_TOKEN", None)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


@command("index-query")
@click.argument("query", metavar="FEATURES.npy|VIDEO")
@click.argument("clip", type=click.IntRange(0), required=False)
@model_options
@click.option("--k", type=click.IntRange(1, MAX_K), default=10, show_default=True,
              help="Neighbours per query clip.")
@click.option("--nprobe", type=click.IntRange(1), default=None,
              help="Search breadth (IVF lists / HNSW efSearch) [the index's calibrated default]")
@click.option("--url", default=None, envvar="IG65M_URL", show_envvar=True,
              help="Server URL [http://HOST:PORT]")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=5000, envvar="IG65M_PORT",
              show_default=True, show_envvar=True)
@click.option("--token", default=None, envvar="IG65M_TOKEN", show_envvar=True)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Seconds to wait for each answer.")
@click.option("--format", "output_format", type=click.Choice(["json", "table"]), default="json",
              show_default=True)
def index_query(query, clip, k, nprobe, url, host, port, token, timeout, output_format,
                **options):
    """Find the clips nearest to clip CLIP of FEATURES.npy (every clip when CLIP is left out), or
    to the clips of VIDEO (extracted first, with the same model options as `extract`)."""
    client = IndexClient(url or f"http://{host}:{port}", token=token, timeout=timeout)
    health = client.health()
    if query.endswith(".npy"):
        vectors, queries, model = _features_query(query, clip)
    else:
        _check_model(options["model"], health)  # before spending time on the model
        vectors, queries, model = _video_query(query, clip, options)
    _check_compatible(vectors, model, health)
    results = client.search(vectors, k=k, nprobe=nprobe)
    answers = [{"query": q, "results": r} for q, r in zip(queries, results)]
    if output_format == "json":
        click.echo(json.dumps(answers, indent=2))
    else:
        click.echo(format_table(answers))


def _pick(features, meta, clip, label):
    """Rows to query and their descriptions {"path", "clip", "start", "end"}."""
    count = len(features)
    if clip is not None and clip >= count:
        raise Ig65mError(f"{label} has {count} clips (0 to {count - 1}); clip {clip} does not exist")
    numbers = range(count) if clip is None else [clip]
    times = (meta or {}).get("clips") or [[None, None]] * count
    source = (meta or {}).get("source") or label
    queries = [{"path": source, "clip": n, "start": times[n][0], "end": times[n][1]}
               for n in numbers]
    return features[list(numbers)], queries


def _features_query(path, clip):
    features, meta = load_features(path)
    vectors, queries = _pick(features, meta, clip, path)
    return vectors, queries, (meta or {}).get("model")


def _video_query(video, clip, options):
    from ig65m.extract import Extractor  # loads torch: only for queries by video

    model_kwargs, run_kwargs = split_model_options(options)
    features, meta = Extractor(**model_kwargs).features(video, **run_kwargs)
    vectors, queries = _pick(features, meta, clip, video)
    return vectors, queries, meta["model"]


def _check_compatible(vectors, model, health):
    if vectors.shape[1] != health["dimension"]:
        raise Ig65mError(f"the query has {vectors.shape[1]}-d features, the index "
                         f"{health['dimension']}-d: use the model the index was built with "
                         f"({health.get('model') or 'unknown'})")
    _check_model(model, health)


def _check_model(model, health):
    if model and health.get("model") and model != health["model"]:
        raise Ig65mError(f"the query comes from model {model}, the index from {health['model']}: "
                         f"query with --model {health['model']}")


def format_table(answers):
    """Results for people: one block per query clip, one line per neighbour."""
    lines = []
    for answer in answers:
        query = answer["query"]
        lines.append(f"query {query['path']} clip {query['clip']}{_span(query)}")
        lines.append(f"{'rank':>4} {'id':>10} {'distance':>10} {'clip':>6} {'seconds':>17}  path")
        for rank, hit in enumerate(answer["results"], 1):
            lines.append(f"{rank:>4} {hit['id']:>10} {hit['distance']:>10.4f} {hit['clip']:>6} "
                         f"{_span(hit, bare=True):>17}  {hit['path']}")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def _span(item, bare=False):
    if item.get("start") is None:
        return "" if not bare else "-"
    text = f"{item['start']:.2f}-{item['end']:.2f}"
    return text if bare else f" [{text} s]"
