"""`index-build`, `index-serve`, `index-query`: clip search over a collection of feature files."""

import json
import os

import click

from ig65m.cli.base import command
from ig65m.cli.options import finite, model_options, split_model_options
from ig65m.errors import Ig65mError
from ig65m.defaults import MAX_K
from ig65m.index.build import DEFAULT_TARGET_RECALL, build_index
from ig65m.index.client import IndexClient
from ig65m.index.manifest import METRICS
from ig65m.index.media import parse_prefixes
from ig65m.index.query import format_table, format_videos, query_index
from ig65m.index.server import ServeOptions, serve


@command("index-build")
@click.argument("paths", nargs=-1, required=True, metavar="FEATURES... INDEX_DIR")
@click.option("--index-key", default=None,
              help="Any Faiss factory string, e.g. 'IVF4096,Flat' or 'HNSW32' [chosen from the "
                   "collection's size: Flat, then IVF]")
@click.option("--metric", type=click.Choice(METRICS), default=None,
              help="Distance: l2, or cosine (vectors normalised)  [l2]")
@click.option("--append", is_flag=True,
              help="Add the feature files not yet in an existing INDEX_DIR.")
@click.option("--target-recall", type=finite(0, 1), default=DEFAULT_TARGET_RECALL,
              show_default=True,
              help="Recall@10 the default search breadth (nprobe) is calibrated for.")
@click.option("--path-prefix", "path_prefixes", multiple=True, metavar="OLD=NEW",
              help="Record source videos whose path starts with OLD as starting with NEW "
                   "(repeatable): where the server will find them.")
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
def index_build(paths, index_key, metric, append, target_recall, path_prefixes, quiet, shards,
                workers, use_ray, ray_address):
    """Index the clips of FEATURES (.npy files or folders of them) into INDEX_DIR.

    Prints the index manifest as JSON. INDEX_DIR appears only once complete.
    """
    if len(paths) < 2:
        raise Ig65mError("give one or more FEATURES files or folders, then INDEX_DIR")
    *inputs, index_dir = paths
    if append and (index_key or metric):
        raise Ig65mError("--append keeps the index's own --index-key and --metric")
    try:
        prefixes = parse_prefixes(path_prefixes)
    except ValueError as err:
        raise Ig65mError(str(err)) from None
    sharding = None
    if shards or use_ray or workers:
        from ig65m.index.shards import ShardOptions

        sharding = ShardOptions(shards or 8, workers, use_ray, ray_address)
    manifest = build_index(inputs, index_dir, index_key=index_key, metric=metric or "l2",
                           append=append, target_recall=target_recall, progress=not quiet,
                           path_prefixes=prefixes, sharding=sharding)
    click.echo(json.dumps(manifest, indent=2))


@command("index-serve")
@click.argument("index_dir", type=click.Path())
@click.option("--host", default="127.0.0.1", envvar="IG65M_HOST", show_default=True,
              show_envvar=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=5000, envvar="IG65M_PORT",
              show_default=True, show_envvar=True, help="Port (0: any free port).")
@click.option("--token", default=None, envvar="IG65M_TOKEN", show_envvar=True,
              help="Require 'Authorization: Bearer TOKEN' on every route but /healthz.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes, sharing one memory-mapped index.")
@click.option("--threads", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Threads of each worker for everything but searches (the page, media, "
                   "uploads); its front answers POST /search itself.")
@click.option("--omp-threads", type=click.IntRange(1, 1024), default=None,
              help="OpenMP threads per worker's searches [cores / --workers, at least 1]")
@click.option("--batch-window-ms", type=finite(0, 100), default=0.5, show_default=True,
              help="Under load, how long a search waits for others to share its Faiss call.")
@click.option("--reload-interval", type=finite(0, 3600), default=1.0, show_default=True,
              help="Seconds between checks for a new index (index-build --append); 0: only on "
                   "SIGHUP or POST /reload.")
@click.option("--max-connections", type=click.IntRange(1, 100000), default=1000,
              show_default=True, help="Open connections a worker keeps at most.")
@click.option("--idle-timeout", type=finite(1, 3600), default=30.0, show_default=True,
              help="Seconds after which an idle connection is closed.")
@click.option("--cors-origin", multiple=True,
              help="Allow cross-origin requests from this origin ('*': any); repeatable.")
@click.option("--access-log/--no-access-log", default=True, show_default=True,
              help="One line per request on stderr.")
@click.option("--model", default=None,
              help="Model that extracts uploaded videos (POST /search/video): the index's own. "
                   "Loaded on the first upload; without it, uploads take features only.")
@click.option("--weights", default=None,
              help="Weights of --model: a .pth, 'random:SEED', or the pretrained release.")
@click.option("--media-root", "media_roots", multiple=True, type=click.Path(file_okay=False),
              help="Serve videos and thumbnails only from this folder (repeatable) [the folders "
                   "the index was built from]")
@click.option("--max-upload-mb", type=finite(0, min_open=True), default=200,
              show_default=True, help="Largest upload accepted.")
@click.option("--max-upload-seconds", type=finite(0, min_open=True), default=600,
              show_default=True, help="Longest uploaded video accepted.")
@click.option("--upload-queue", type=click.IntRange(0, 64), default=2, show_default=True,
              help="Uploads that may wait while one is extracted; more get 503.")
@click.option("--thumb-cache-mb", type=finite(0, min_open=True), default=256,
              show_default=True, help="Size bound of the thumbnail cache beside the index.")
def index_serve(index_dir, token, cors_origin, access_log, model, weights, media_roots,
                max_upload_mb, max_upload_seconds, upload_queue, thumb_cache_mb, **options):
    """Serve INDEX_DIR over HTTP: the search page at /, GET /healthz, POST /search,
    GET /clips/ID, POST /reload, POST /search/video (uploads), /thumbs/ID and /media/ID.

    The `ig65m` command group loads only this command's module, so the server never imports
    torch.
    """
    web_options = dict(model=model, weights=weights, max_upload_mb=max_upload_mb,
                       media_roots=[os.path.abspath(root) for root in media_roots],
                       max_upload_seconds=max_upload_seconds, upload_queue=upload_queue,
                       thumb_cache_mb=thumb_cache_mb)
    options = ServeOptions(token=token, cors_origins=tuple(cors_origin),
                           access_log=access_log, web_options=web_options, **options)
    serve(index_dir, options)



@command("index-query")
@click.argument("query", metavar="FEATURES.npy|VIDEO")
@click.argument("clip", type=click.IntRange(0, 2**62), required=False)
@model_options
@click.option("--k", type=click.IntRange(1, MAX_K), default=10, show_default=True,
              help="Neighbours per query clip.")
@click.option("--nprobe", type=click.IntRange(1, 2**31 - 1), default=None,
              help="Search breadth (IVF lists / HNSW efSearch) [the index's calibrated default]")
@click.option("--url", default=None, envvar="IG65M_URL", show_envvar=True,
              help="Server URL [http://HOST:PORT]")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=5000, envvar="IG65M_PORT",
              show_default=True, show_envvar=True)
@click.option("--token", default=None, envvar="IG65M_TOKEN", show_envvar=True)
@click.option("--timeout", type=finite(0, 86400, min_open=True), default=30.0,
              show_default=True, help="Seconds to wait for each answer.")
@click.option("--format", "output_format", type=click.Choice(["json", "table"]), default="json",
              show_default=True)
@click.option("--remote", is_flag=True,
              help="Send VIDEO (or FEATURES.npy and its sidecar) to the server, which extracts it "
                   "(POST /search/video; no model here) and answers videos with their matching "
                   "moments; --k counts videos.")
def index_query(query, clip, k, nprobe, url, host, port, token, timeout, output_format, remote,
                **options):
    """Find the clips nearest to clip CLIP of FEATURES.npy (every clip when CLIP is left out), or
    to the clips of VIDEO (extracted first, with the same model options as `extract`)."""
    client = IndexClient(url or f"http://{host}:{port}", token=token, timeout=timeout)
    if remote:
        answer = client.search_upload(query, k=min(k, 100), nprobe=nprobe)
        click.echo(json.dumps(answer, indent=2) if output_format == "json"
                   else format_videos(answer["videos"]))
        return
    model_kwargs, run_kwargs = split_model_options(options)
    answers = query_index(client, query, clip, k=k, nprobe=nprobe, model_kwargs=model_kwargs,
                          run_kwargs=run_kwargs)
    if output_format == "json":
        click.echo(json.dumps(answers, indent=2))
    else:
        click.echo(format_table(answers))
