"""index-query's logic: the query vectors (a features file's clips, or a video's, extracted first),
checked against the server's index, searched -> answers; and their table for people.

The local input is read and checked before the server is asked anything."""

from ig65m.errors import Ig65mError
from ig65m.fileio import load_features
from ig65m.index.sources import extraction_mismatch
from ig65m.sidecar import Sidecar


def query_index(client, query, clip=None, *, k=10, nprobe=None, model_kwargs=None, run_kwargs=None):
    """Search `client`'s index for the clips of `query` (FEATURES.npy or a video; only clip `clip`
    when given) -> [{"query": {"path", "clip", "start", "end"}, "results": [...]}]."""
    if query.endswith(".npy"):
        vectors, queries, meta = _features_query(query, clip)
        health = client.health()
    else:
        health = client.health()
        _check_model(model_kwargs["model"], health)  # before spending time on the model
        vectors, queries, meta = _video_query(query, clip, model_kwargs, run_kwargs)
    _check_compatible(vectors, meta, health)
    results = client.search(vectors, k=k, nprobe=nprobe)
    return [{"query": q, "results": r} for q, r in zip(queries, results)]


def _pick(features, meta, clip, label):
    """Rows to query and their descriptions {"path", "clip", "start", "end"}."""
    count = len(features)
    if count == 0:
        raise Ig65mError(f"{label} holds no clips to query with")
    if clip is not None and clip >= count:
        raise Ig65mError(f"{label} has {count} clips (0 to {count - 1}); clip {clip} does not exist")
    numbers = range(count) if clip is None else [clip]
    sidecar = Sidecar.from_dict(meta or {}, name=f"sidecar of {label}", rows=count)
    times = sidecar.clip_times(count)
    source = sidecar.source or label
    queries = [{"path": source, "clip": n, "start": times[n][0], "end": times[n][1]}
               for n in numbers]
    return features[list(numbers)], queries


def _features_query(path, clip):
    features, meta = load_features(path)
    vectors, queries = _pick(features, meta, clip, path)
    return vectors, queries, meta or {}


def _video_query(video, clip, model_kwargs, run_kwargs):
    from ig65m.extract import Extractor  # loads torch: only for queries by video

    features, meta = Extractor(**model_kwargs).features(video, **run_kwargs)
    vectors, queries = _pick(features, meta, clip, video)
    return vectors, queries, meta


def _check_compatible(vectors, meta, health):
    """The query's features (`meta`: their sidecar) against the server's index: dimension, model,
    and the settings that shape features (weights, clip frames, fps, frame and crop size,
    pooling), where both record them: features extracted otherwise find meaningless neighbours."""
    if vectors.shape[1] != health["dimension"]:
        raise Ig65mError(f"the query has {vectors.shape[1]}-d features, the index "
                         f"{health['dimension']}-d: use the model the index was built with "
                         f"({health.get('model') or 'unknown'})")
    _check_model(meta.get("model"), health)
    mismatch = extraction_mismatch(meta, health.get("extraction"), "the query", "the index")
    if mismatch:
        words, option = mismatch
        raise Ig65mError(f"{words}: extract the query with {option}")


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


def format_videos(videos):
    """Video-level results for people: one line per video, then its matched segments."""
    lines = [f"{'rank':>4} {'score':>8} {'votes':>5}  path"]
    for rank, video in enumerate(videos, 1):
        lines.append(f"{rank:>4} {video['score']:>8.4f} {video['votes']:>5}  {video['path']}")
        for segment in video["segments"]:
            lines.append(f"{'':>20}{_span(segment, bare=True):>17} score {segment['score']:.4f}")
    return "\n".join(lines)
