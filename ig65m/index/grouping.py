"""A search's clip hits -> videos and moments: pure functions over `Searcher.search_arrays`'s
arrays and the clip table.

`group_by_video(table, distances, ids, ...)` turns the k nearest clips of each query clip into one
entry per matching video: its best score, and its matched clips merged into `[start, end]` segments
(clips of one video whose numbers follow each other, or whose times touch, form one segment).

For a query of several clips (a whole video, or a stretch of one), videos are ranked by temporal
consistency, a temporal Hough transform: every hit of query clip i (at query time q_i) on clip j of
video v (at time t_j) votes for the offset t_j - q_i of video v, in bins of one clip length. A
near-duplicate, or the same scene somewhere else, puts many query clips on one offset (one
diagonal of the query-time x match-time plane); unrelated hits scatter over many offsets. A video's
`votes` is the number of distinct query clips on its best diagonal (a bin and its neighbour, to
absorb clip boundaries that do not line up; one match per query clip, its best); videos rank by
votes, then by best score. Their first segment is the diagonal's clips merged; the video's other
matching moments follow. A single-clip query degenerates to ranking by score.

Which hits count as matches: those scoring at least `min_score` when given; else the better half
of each query clip's neighbours (at least MIN_KEPT of them), so that a small collection, where
the k neighbours are every clip, still shows moments rather than whole videos. A single-clip query
keeps every matching moment of a video as a segment (the best first).

Scores are similarities, higher is better: 1 - distance for cosine (the cosine similarity), and
1 / (1 + distance) for l2.
"""

from collections import defaultdict
from operator import itemgetter

GROUP_BYS = ("video",)
MIN_KEPT = 4
_SCORE = itemgetter("score")


def _pair_score(pair):
    return pair[1]["score"]


def scores(distances, metric):
    """Hits' similarities from their distances: cosine similarity, or 1 / (1 + d) for l2."""
    if metric == "cosine":
        return [1.0 - distance for distance in distances]
    return [1.0 / (1.0 + distance) for distance in distances]


def group_by_video(table, distances, ids, *, metric="l2", query_times=None, exclude=None,
                   min_score=None, limit=None):
    """A search's (n, k) `distances` and `ids` (each row nearest first, -1 where Faiss found fewer
    than k, as `Searcher.search_arrays` gives them) over the clips of `table` (a store.ClipTable)
    -> a list of {"path", "score", "votes", "best": hit, "segments": [{"start", "end", "score",
    "clips", "id", "best_start"}]}, best video first; a hit is `table.hit`'s dict with its "score".

    `query_times`: (start, end) seconds of each query clip (None: clip i starts at i clip lengths);
    `exclude`: a video path whose hits are dropped (the query's own video); `min_score`: hits below
    are dropped; `limit`: at most this many videos. Result dicts are made only for the hits that
    match: after a large index's search has swept the CPU caches each one costs about a
    microsecond.
    """
    by_video = defaultdict(list)  # path -> [(query clip number, hit)]
    for number, (row_ids, row_distances) in enumerate(zip(ids.tolist(), distances.tolist())):
        scored = [(score, clip_id, distance) for score, clip_id, distance
                  in zip(scores(row_distances, metric), row_ids, row_distances) if clip_id >= 0]
        if exclude is not None:
            scored = [entry for entry in scored if table.path(entry[1]) != exclude]
        for score, clip_id, distance in _matches(scored, min_score):
            hit = table.hit(clip_id, distance)
            hit["score"] = score
            by_video[hit["path"]].append((number, hit))
    if len(ids) > 1:
        length = _clip_length(by_video)
        starts = _query_starts(query_times, len(ids), length)
        videos = [_video(path, hits, diagonal_hits(hits, starts, length))
                  for path, hits in by_video.items()]
    else:  # one query clip: every moment of a video that matches it
        videos = [_video(path, hits, hits) for path, hits in by_video.items()]
    videos.sort(key=lambda video: (-video["votes"], -video["score"], video["path"]))
    return videos[:limit] if limit else videos


def _matches(scored, min_score):
    """The (score, clip id, distance) of one query clip, best first, that count (see the module's
    notes)."""
    if min_score is not None:
        return [entry for entry in scored if entry[0] >= min_score]
    return scored[:max(MIN_KEPT, len(scored) // 2)]


def _clip_length(by_video):
    """The median clip duration among hits (seconds), 1.0 where no hit has times."""
    lengths = sorted(hit["end"] - hit["start"] for hits in by_video.values() for _, hit in hits
                     if hit["start"] is not None and hit["end"] > hit["start"])
    return lengths[len(lengths) // 2] if lengths else 1.0


def _query_starts(query_times, count, length):
    if query_times is None:
        return [number * length for number in range(count)]
    return [float(start) for start, _ in query_times]


def _video(path, hits, matched):
    """A video's entry from its (query clip number, hit) `hits`, of which `matched` (the
    diagonal's, or all) come first."""
    best = max(matched, key=_pair_score)[1]
    segments = merge_segments([hit for _, hit in matched])
    if matched is not hits:
        on = {hit["clip"] for _, hit in matched}
        elsewhere = [hit for _, hit in hits if hit["clip"] not in on]  # its other moments, after
        segments += merge_segments(elsewhere) if elsewhere else []
    return {"path": path, "score": best["score"], "votes": len({number for number, _ in matched}),
            "best": best, "segments": segments}


def diagonal_hits(hits, query_starts, length):
    """The (query clip number, hit) pairs on the best diagonal: the offset bin (match time - query
    time, in clip lengths), with its upper neighbour, holding the most distinct query clips (ties:
    the higher total score); one hit per query clip, its best there."""
    timed = [pair for pair in hits if pair[1]["start"] is not None]
    if not timed:
        return hits
    bins = defaultdict(list)
    for number, hit in timed:
        bins[round((hit["start"] - query_starts[number]) / length)].append((number, hit))

    def on_diagonal(offset):
        best = {}
        for number, hit in bins[offset] + bins.get(offset + 1, []):
            if number not in best or hit["score"] > best[number][1]["score"]:
                best[number] = (number, hit)
        return list(best.values())

    def strength(offset):
        chosen = on_diagonal(offset)
        return len(chosen), sum(hit["score"] for _, hit in chosen)

    return on_diagonal(max(list(bins), key=strength))


def merge_segments(hits):
    """Hits of one video -> segments of consecutive clips, best first:
    {"start", "end", "score" (best), "id" (its best clip), "best_start", "clips" (count)}."""
    if len(hits) == 1:  # a single-clip query's usual case, kept short: it runs cold
        hit = hits[0]
        return [{"start": hit["start"], "end": hit["end"], "score": hit["score"], "id": hit["id"],
                 "best_start": hit["start"], "clips": 1}]
    by_clip = {}
    for hit in hits:
        kept = by_clip.get(hit["clip"])
        if kept is None or hit["score"] > kept["score"]:
            by_clip[hit["clip"]] = hit
    segments, segment, last_clip = [], None, None
    for clip in sorted(by_clip):
        hit = by_clip[clip]
        start, end, score = hit["start"], hit["end"], hit["score"]
        if segment is not None and (clip == last_clip + 1 or _touches(segment["end"], start)):
            if end is not None and (segment["end"] is None or end > segment["end"]):
                segment["end"] = end
            segment["clips"] += 1
            if score > segment["score"]:
                segment.update(score=score, id=hit["id"], best_start=start)
        else:
            segment = {"start": start, "end": end, "score": score, "id": hit["id"],
                       "best_start": start, "clips": 1}
            segments.append(segment)
        last_clip = clip
    segments.sort(key=_SCORE, reverse=True)
    return segments


def _touches(end, start):
    """Whether a clip starting at `start` touches a segment ending at `end` (None: unknown)."""
    return end is not None and start is not None and start <= end + 1e-6
