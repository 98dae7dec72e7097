"""The parts behind the search page: grouping (temporal vote), media roots, path recording,
thumbnail cache, upload limits; pure functions and real files, no server."""

import json
import os

import numpy as np
import pytest

from ig65m.index import build_index
from ig65m.index.grouping import group_by_video, merge_segments, scores
from ig65m.index.manifest import read_manifest
from ig65m.index.media import MediaRoots, Refused, locate_source, parse_prefixes
from ig65m.index.search import Searcher
from ig65m.index.store import ClipTable
from tests.test_index_build import clustered, write


def hit(path, clip, distance, length=0.5):
    return {"id": hash((path, clip)) % 10**6, "path": path, "clip": clip, "start": clip * length,
            "end": clip * length + length, "distance": distance, "features": "f.npy"}


def searched(rows, length=0.5):
    """A ClipTable and a search's (distances, ids) from hand-made rows of (path, clip, distance),
    each row put nearest first and padded with -1 as Faiss does."""
    files, clips = {}, {}
    for row in rows:
        for path, clip, _ in row:
            files.setdefault(path, len(files))
            clips.setdefault((path, clip), len(clips))
    table = np.empty(len(clips), ClipTable.ROW)
    for (path, clip), clip_id in clips.items():
        table[clip_id] = (files[path], clip, clip * length, clip * length + length)
    width = max(len(row) for row in rows)
    distances, ids = np.full((len(rows), width), np.inf), np.full((len(rows), width), -1)
    for number, row in enumerate(rows):
        for place, (path, clip, distance) in enumerate(sorted(row, key=lambda hit: hit[2])):
            distances[number, place], ids[number, place] = distance, clips[(path, clip)]
    return ClipTable({number: (path, "f.npy") for path, number in files.items()}, table), distances, ids


def test_adjacent_clips_merge_into_segments_best_first():
    hits = [dict(hit("a", clip, 0.1), score=score) for clip, score in
            [(3, 0.5), (4, 0.9), (5, 0.6), (9, 0.7)]]
    segments = merge_segments(hits)
    assert [(s["start"], s["end"], s["clips"]) for s in segments] == [(1.5, 3.0, 3), (4.5, 5.0, 1)]
    assert segments[0]["score"] == 0.9 and segments[0]["best_start"] == 2.0
    assert merge_segments(hits[3:]) == [{"start": 4.5, "end": 5.0, "score": 0.7, "id": hits[3]["id"],
                                         "best_start": 4.5, "clips": 1}]


def test_temporal_vote_prefers_matches_in_order_over_scattered_better_ones():
    """Query clips 0..5 match `copy` on one diagonal (clips 10..15); `noise` has better single
    scores, but at times in no order."""
    rows = [[("copy", 10 + query, 0.30), ("noise", (query * 7) % 13, 0.10),
             ("copy", (query * 5) % 4, 0.35)] for query in range(6)]
    table, distances, ids = searched(rows)
    videos = group_by_video(table, distances, ids, metric="l2", min_score=0)
    assert [video["path"] for video in videos] == ["copy", "noise"]
    assert videos[0]["votes"] == 6 and videos[1]["votes"] <= 2  # a bin and its neighbour
    segment = videos[0]["segments"][0]
    assert (segment["start"], segment["end"]) == (5.0, 8.0)
    best = videos[0]["best"]
    assert best == {"id": int(ids[0, 1]), "path": "copy", "clip": 10, "start": 5.0, "end": 5.5,
                    "features": "f.npy", "distance": 0.30, "score": scores([0.30], "l2")[0]}
    single = group_by_video(table, distances[:1], ids[:1], metric="l2", min_score=0)
    assert single[0]["path"] == "noise"  # one query clip: the best score wins
    assert single[0]["votes"] == 1 and single[0]["best"]["clip"] == 0


def test_exclude_min_score_limit_and_scores():
    table, distances, ids = searched([[("own", 0, 0.0), ("other", 2, 0.2), ("far", 1, 0.9)]])
    videos = group_by_video(table, distances, ids, metric="cosine", exclude="own", min_score=0.5)
    assert [video["path"] for video in videos] == ["other"]
    assert videos[0]["score"] == pytest.approx(0.8)
    assert scores([3.0, 0.0], "l2") == [0.25, 1.0] and scores([0.25], "cosine") == [0.75]
    assert len(group_by_video(table, distances, ids, metric="cosine", limit=2)) == 2


def test_without_min_score_the_better_half_counts_after_exclusion_and_padding():
    """Ten neighbours, of which the query's own video holds the best four, and two -1 paddings:
    the better half of the six others (at least MIN_KEPT) counts, in order."""
    rows = [[("own", clip, 0.01 * clip) for clip in range(4)]
            + [(f"v{number}", 0, 0.1 + 0.1 * number) for number in range(6)]]
    table, distances, ids = searched(rows)
    ids = np.concatenate([ids, [[-1, -1]]], axis=1)
    distances = np.concatenate([distances, [[np.inf, np.inf]]], axis=1)
    videos = group_by_video(table, distances, ids, metric="l2", exclude="own")
    assert [video["path"] for video in videos] == ["v0", "v1", "v2", "v3"]
    videos = group_by_video(table, distances, ids)  # half of ten: own's four clips and v0
    assert [video["path"] for video in videos] == ["own", "v0"]
    assert [(s["start"], s["end"], s["clips"]) for s in videos[0]["segments"]] == [(0.0, 2.0, 4)]


def test_media_roots_refuse_escapes_and_find_moved_videos(tmp_path):
    old, new, outside = tmp_path / "old", tmp_path / "new", tmp_path / "outside"
    for folder in (new / "sub", outside):
        folder.mkdir(parents=True)
    (new / "sub" / "v.mp4").write_bytes(b"video")
    (outside / "secret.txt").write_text("secret")
    os.symlink(outside / "secret.txt", new / "sub" / "link.mp4")
    roots = MediaRoots([new], recorded=[str(old)])
    assert roots.resolve(str(old / "sub" / "v.mp4")) == (new / "sub" / "v.mp4").resolve()
    assert roots.resolve("sub/v.mp4") == (new / "sub" / "v.mp4").resolve()
    refusals = {str(new / "sub" / "link.mp4"): 403, str(outside / "secret.txt"): 403,
                str(new / "sub" / ".." / ".." / "outside" / "secret.txt"): 403,
                str(new / "sub" / "v.mp4\x00"): 403, "sub\\v.mp4": 403, "": 404,
                str(new / "sub" / "missing.mp4"): 404, str(new / "sub"): 404}
    for path, status in refusals.items():
        with pytest.raises(Refused) as refused:
            roots.resolve(path)
        assert refused.value.status == status, path


def test_index_build_records_absolute_sources_and_maps_prefixes(tmp_path, monkeypatch):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"video")
    monkeypatch.chdir(tmp_path)
    vectors = clustered(8, 16, 1)
    relative = write(tmp_path, "a", vectors, source="videos/a.mp4")
    moved = write(tmp_path, "b", vectors, source="/mnt/old/videos/b.mp4")
    manifest = build_index([relative, moved], tmp_path / "idx", progress=False,
                           path_prefixes=parse_prefixes(["/mnt/old=/data"]))
    paths = {video["path"] for video in Searcher(tmp_path / "idx").videos}
    assert paths == {str(tmp_path / "videos" / "a.mp4"), "/data/videos/b.mp4"}
    assert manifest["media_roots"] == sorted(["/data/videos", str(tmp_path / "videos")])
    assert read_manifest(tmp_path / "idx")["media_roots"] == manifest["media_roots"]
    meta = json.loads(relative.with_suffix(".json").read_text())
    assert locate_source(meta["source"], relative, cwd="/elsewhere") == str(tmp_path / "videos" / "a.mp4")
    with pytest.raises(ValueError):
        parse_prefixes(["no-equals-sign"])
    assert np.isfinite(vectors).all()


def test_thumbnail_cache_stays_under_its_bound(tmp_path):
    from ig65m.index.thumbs import ThumbnailCache
    from tests.videos import lossless_video

    video = tmp_path / "v.mp4"
    lossless_video(video, 40, fps=10)
    cache = ThumbnailCache(tmp_path / "thumbs", max_bytes=4000)
    made = [cache.path(clip, video, clip * 0.5) for clip in range(8)]
    assert made[-1].read_bytes()[:3] == b"\xff\xd8\xff"
    left = list((tmp_path / "thumbs").glob("*/*.jpg"))
    assert 0 < sum(path.stat().st_size for path in left) <= 4000 and made[-1] in left


def test_client_imports_without_flask_faiss_or_torch():
    import subprocess
    import sys

    code = ("import sys, ig65m.index.client; "
            "print(sorted({'flask', 'faiss', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_upload_limits_are_checked_before_any_model_loads(tmp_path):
    from werkzeug.datastructures import FileStorage

    from ig65m.errors import Ig65mError
    from ig65m.index.upload import UploadRejected, UploadSearch
    from tests.videos import lossless_video

    manifest = {"dimension": 512, "model": "r2plus1d_34_8_ig65m"}
    with pytest.raises(Ig65mError, match="differs from the index's model"):
        UploadSearch(manifest, model="r2plus1d_18_16_kinetics")
    for weights in ("pretrained", "random", "random:3", None):  # not files: loaded at an upload
        assert UploadSearch(manifest, model="r2plus1d_34_8_ig65m", weights=weights).weights == weights
    with pytest.raises(Ig65mError, match="weights file not found"):
        UploadSearch(manifest, model="r2plus1d_34_8_ig65m", weights=str(tmp_path / "none.pth"))
    video = tmp_path / "two-seconds.mp4"
    lossless_video(video, 20, fps=10)
    uploads = UploadSearch(manifest, model="r2plus1d_34_8_ig65m", max_seconds=1.5)
    with open(video, "rb") as handle, pytest.raises(UploadRejected) as rejected:
        uploads.video_vectors(FileStorage(handle))
    assert rejected.value.status == 413 and "at most 1.5 s" in str(rejected.value)
    assert uploads._extractor is None
    with pytest.raises(UploadRejected) as rejected:
        UploadSearch(manifest).video_vectors(None)
    assert rejected.value.status == 400 and "--model" in str(rejected.value)


@pytest.mark.parametrize("npy, sidecar, said", [
    ("big", None, "too large for float32"),  # float64 1e300: infinite as float32, was searched
    ("good", {"clips": [[float("nan"), 1.0]] * 3}, "clip 0 is [NaN, 1"),  # was searched
    ("good", {"clips": [[0, 1, 2]] * 3}, "clip 0 is [0, 1, 2]"),  # said "not valid JSON"
    ("good", [1, 2], "must be a JSON object"),  # said "not valid JSON"
    ("good", {"clips": [[0, 1]]}, "lists 1 clips for 3 feature rows"),
    ("text", None, "no .npy header"),  # said "pickled (object) data ... allow_pickle"
])
def test_an_uploaded_features_pair_is_checked_as_a_local_one(npy, sidecar, said):
    """POST /search/video with a features .npy (index-query FEATURES --remote): the rules of
    ig65m.sidecar and the float32 range, one 400 message that says what is wrong."""
    import io

    from werkzeug.datastructures import FileStorage

    from ig65m.index.upload import UploadRejected, features_vectors

    rows = np.ones((3, 4))
    rows[1, 2] = 1e300 if npy == "big" else 1.0
    data = io.BytesIO()
    np.save(data, rows)
    body = b"hello" if npy == "text" else data.getvalue()
    side = None if sidecar is None else FileStorage(io.BytesIO(json.dumps(sidecar).encode()))
    with pytest.raises(UploadRejected) as rejected:
        features_vectors(FileStorage(io.BytesIO(body)), side, 4)
    assert rejected.value.status == 400 and said in str(rejected.value), str(rejected.value)


def test_thumbnails_of_an_index_whose_cache_cannot_be_written_are_served_uncached(tmp_path):
    """An index on a read-only volume (here: a file where `<index>.thumbs` would go): every
    thumbnail used to be 404 'cannot make a thumbnail (OSError)'; now it is made each time."""
    from ig65m.fileio import save_features
    from ig65m.index.server import create_app
    from tests.videos import lossless_video

    lossless_video(tmp_path / "v.mkv", 20, fps=10)
    save_features(tmp_path / "v.npy", np.ones((2, 4), np.float32),
                  {"source": str(tmp_path / "v.mkv"), "clips": [[0.0, 1.0], [1.0, 2.0]]})
    build_index([tmp_path / "v.npy"], tmp_path / "idx", progress=False)
    (tmp_path / "idx.thumbs").write_text("not a folder\n")
    response = create_app(tmp_path / "idx").test_client().get("/thumbs/1")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "image/jpeg" and response.data[:3] == b"\xff\xd8\xff"
    assert (tmp_path / "idx.thumbs").read_text() == "not a folder\n"
