"""The parts behind the search page: grouping (temporal vote), media roots, path recording,
thumbnail cache, upload limits; pure functions and real files, no server."""

import json
import os

import numpy as np
import pytest

from ig65m.index import build_index
from ig65m.index.grouping import group_by_video, merge_segments, score_of
from ig65m.index.manifest import read_manifest
from ig65m.index.media import MediaRoots, Refused, locate_source, parse_prefixes
from ig65m.index.search import Searcher
from tests.test_index_build import clustered, write


def hit(path, clip, distance, length=0.5):
    return {"id": hash((path, clip)) % 10**6, "path": path, "clip": clip, "start": clip * length,
            "end": clip * length + length, "distance": distance, "features": "f.npy"}


def test_adjacent_clips_merge_into_segments_best_first():
    hits = [dict(hit("a", clip, 0.1), score=score) for clip, score in
            [(3, 0.5), (4, 0.9), (5, 0.6), (9, 0.7)]]
    segments = merge_segments(hits)
    assert [(s["start"], s["end"], s["clips"]) for s in segments] == [(1.5, 3.0, 3), (4.5, 5.0, 1)]
    assert segments[0]["score"] == 0.9 and segments[0]["best_start"] == 2.0


def test_temporal_vote_prefers_matches_in_order_over_scattered_better_ones():
    """Query clips 0..5 match `copy` on one diagonal (clips 10..15); `noise` has better single
    scores, but at times in no order."""
    results = []
    for query in range(6):
        results.append([hit("copy", 10 + query, 0.30), hit("noise", (query * 7) % 13, 0.10),
                        hit("copy", (query * 5) % 4, 0.35)])
    videos = group_by_video(results, metric="l2", min_score=0)
    assert [video["path"] for video in videos] == ["copy", "noise"]
    assert videos[0]["votes"] == 6 and videos[1]["votes"] <= 2  # a bin and its neighbour
    segment = videos[0]["segments"][0]
    assert (segment["start"], segment["end"]) == (5.0, 8.0)
    single = group_by_video(results[:1], metric="l2", min_score=0)
    assert single[0]["path"] == "noise"  # one query clip: the best score wins


def test_exclude_min_score_limit_and_scores():
    results = [[hit("own", 0, 0.0), hit("other", 2, 0.2), hit("far", 1, 0.9)]]
    videos = group_by_video(results, metric="cosine", exclude="own", min_score=0.5)
    assert [video["path"] for video in videos] == ["other"]
    assert videos[0]["score"] == pytest.approx(0.8)
    assert score_of(3.0, "l2") == 0.25
    assert len(group_by_video(results, metric="cosine", limit=2)) == 2


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
