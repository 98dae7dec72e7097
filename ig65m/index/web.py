"""The search page and what it needs, as a Flask Blueprint registered by `create_app`.

Routes: `GET /` and `/assets/...` (the page; HTML/CSS/JS in ig65m/index/static, no framework,
nothing fetched from elsewhere), `GET /videos` (the collection), `GET /videos/<video>` (its clips), `POST /search/clip`
(`{"id": CLIP, "k", "min_score", "exclude_own"}`), `POST /search/video` (multipart: `video`, or
`features` + optional `sidecar`; form fields `k`, `min_score`), `GET /thumbs/<clip id>` (JPEG),
`GET /media/<clip id>` (the clip's source video, with HTTP range requests). Searches answer
`{"videos": [...]}` grouped by video (see grouping.py); `k` there counts videos.

With a bearer token, the page, its static files, thumbnails and media skip the server's token
check: the page holds no data, and a `<video src>` or `<img src>` cannot send an Authorization
header. Thumbnail and media URLs in search answers carry instead a signature (HMAC-SHA256 of the
path and an expiry time, keyed with the token) valid for SIGNED_URL_SECONDS, so the token itself
never appears in a URL and a leaked URL opens only that one file for a while.
"""

import hashlib
import hmac
import os
import time
from pathlib import Path

import numpy as np
from flask import Blueprint, current_app, jsonify, request, send_file, send_from_directory
from werkzeug.exceptions import BadRequest, Forbidden, NotFound, Unauthorized

from ig65m.index import grouping
from ig65m.index.media import MediaRoots, Refused
from ig65m.index.thumbs import DEFAULT_CACHE_MB, ThumbnailCache
from ig65m.index.upload import (DEFAULT_MAX_MB, DEFAULT_MAX_SECONDS, DEFAULT_QUEUE, Busy,
                                UploadRejected, UploadSearch, features_vectors)

STATIC = Path(__file__).with_name("static")
PUBLIC_ENDPOINTS = {"web.page", "web.asset", "web.thumb", "web.media"}
SIGNED_URL_SECONDS = 3600
MAX_VIDEOS = 100
CLIPS_PER_VIDEO = 10  # clip neighbours asked of Faiss per video wanted


def add_arguments(parser):
    """The page's options on the server's argparse parser (see ig65m.cli.index for their help)."""
    parser.add_argument("--model", default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--media-root", action="append", default=[])
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_MB)
    parser.add_argument("--max-upload-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    parser.add_argument("--upload-queue", type=int, default=DEFAULT_QUEUE)
    parser.add_argument("--thumb-cache-mb", type=float, default=DEFAULT_CACHE_MB)


def options_from(args):
    """argparse namespace -> keyword arguments of `make_blueprint`."""
    return {"model": args.model, "weights": args.weights, "media_roots": args.media_root,
            "max_upload_mb": args.max_upload_mb, "max_upload_seconds": args.max_upload_seconds,
            "upload_queue": args.upload_queue, "thumb_cache_mb": args.thumb_cache_mb}


def make_blueprint(get_searcher, index_dir, *, token=None, model=None, weights=None, media_roots=(),
                   max_upload_mb=DEFAULT_MAX_MB, max_upload_seconds=DEFAULT_MAX_SECONDS,
                   upload_queue=DEFAULT_QUEUE, thumb_cache_mb=DEFAULT_CACHE_MB):
    """The Blueprint over the index `get_searcher()` returns (called per request, so a reloaded
    index is seen); thumbnails are cached beside `index_dir` (none without one)."""
    searcher = get_searcher()
    web = Blueprint("web", __name__)
    signer = UrlSigner(token)
    web.record_once(lambda state: _configure(state.app, max_upload_mb, signer))
    thumbs = index_dir and ThumbnailCache(f"{os.path.abspath(index_dir)}.thumbs",
                                          int(thumb_cache_mb * (1 << 20)))
    uploads = UploadSearch(searcher.manifest, model=model, weights=weights,
                           max_seconds=max_upload_seconds, queue=upload_queue)
    videos_cache = {}

    def source_of(clip_id):
        """The real path of clip `clip_id`'s video, inside the media roots; 403/404 else."""
        current = get_searcher()
        meta = _clip_or_404(current, clip_id)
        roots = MediaRoots(media_roots, current.manifest.get("media_roots") or [])
        return meta, _resolve(roots, meta["path"])

    @web.get("/")
    def page():
        return send_from_directory(STATIC, "index.html", max_age=0)

    @web.get("/assets/<path:name>")
    def asset(name):
        return send_from_directory(STATIC, name, max_age=0)  # safe_join: nothing outside STATIC

    def collection(current):
        if videos_cache.get("of") is not current:  # a reloaded index is a new searcher
            videos_cache.update(of=current, rows=[
                dict(row, name=os.path.basename(row["path"] or "")) for row in current.videos])
        return videos_cache["rows"]

    @web.get("/videos")
    def videos():
        current = get_searcher()
        return jsonify(videos=collection(current), uploads=uploads.enabled, metric=current.metric)

    @web.get("/videos/<int:video>")
    def video_clips(video):
        current = get_searcher()
        row = next((row for row in collection(current) if row["video"] == video), None)
        if row is None:
            raise NotFound(f"no video {video}")
        clips = current.table.lookup(range(row["first_id"], row["first_id"] + row["clips"]))
        return jsonify(dict(row, clips=[
            {"id": clip["id"], "start": clip["start"], "end": clip["end"],
             "thumb": signer.url(f"/thumbs/{clip['id']}")} for clip in clips.values()]))

    @web.post("/search/clip")
    def search_clip():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or type(body.get("id")) is not int:
            raise BadRequest('send JSON {"id": CLIP_ID, "k": 10}')
        _check_json_types(body)
        current = get_searcher()
        meta = current.clip(body["id"])
        if meta is None:
            raise NotFound(f"no clip with id {body['id']}")
        vector = clip_vector(current, meta)
        exclude = meta["path"] if body.get("exclude_own") else None
        answer = page_search(current, vector, body, signer, exclude=exclude)
        return jsonify(dict(answer, query={key: meta[key] for key in ("id", "path", "start", "end")}))

    @web.post("/search/video")
    def search_video():
        request.max_content_length = current_app.config["MAX_UPLOAD_BYTES"]
        started = time.perf_counter()
        current = get_searcher()
        form, files = request.form, request.files
        seconds = {"receive": time.perf_counter() - started}
        page_limits(form)  # checked before the upload is read: a bad option costs no extraction
        min_score_of(form)
        try:
            if "features" in files:
                vectors, times = features_vectors(files["features"], files.get("sidecar"),
                                                  current.dimension, current.manifest.get("model"),
                                                  current.manifest.get("extraction"))
            elif "video" in files:
                vectors, times, spent = uploads.video_vectors(files["video"])
                seconds.update(spent)
            elif request.mimetype == "multipart/form-data" and not form and not files:
                # werkzeug drops a form it cannot parse without a word
                raise UploadRejected(400, "the multipart form could not be read: a wrong boundary, "
                                          "a body cut short, or part headers (file names) that "
                                          "are not UTF-8")
            else:
                raise UploadRejected(400, "send a multipart form with a 'video' file, or a "
                                          "'features' .npy (and its 'sidecar' .json)")
        except UploadRejected as err:
            return jsonify(error=str(err)), err.status
        except Busy as err:
            return jsonify(error=str(err)), 503
        searched = time.perf_counter()
        answer = page_search(current, vectors, form, signer, query_times=times)
        seconds["search"] = time.perf_counter() - searched
        return jsonify(dict(answer, query={"clips": len(vectors), "seconds": seconds}))

    @web.get("/thumbs/<int:clip_id>")
    def thumb(clip_id):
        signer.check(request)
        meta, video = source_of(clip_id)
        if not thumbs:
            raise NotFound("thumbnails need the server to know its index folder")
        middle = ((meta["start"] or 0.0) + (meta["end"] or meta["start"] or 0.0)) / 2
        try:
            path = thumbs.path(clip_id, video, middle)
        except (OSError, ValueError) as err:
            raise NotFound(f"cannot make a thumbnail of clip {clip_id} ({type(err).__name__})")
        return send_file(path, mimetype="image/jpeg", max_age=3600)

    @web.get("/media/<int:clip_id>")
    def media(clip_id):
        signer.check(request)
        _, video = source_of(clip_id)
        return send_file(video, conditional=True, max_age=0)

    return web


def _configure(app, max_upload_mb, signer):
    app.config["MAX_UPLOAD_BYTES"] = int(max_upload_mb * (1 << 20))
    app.extensions["ig65m.signer"] = signer


def _check_json_types(body):
    """BadRequest for /search/clip options of the wrong JSON type, which the checks shared with
    form fields (strings) let through: "exclude_own": "false" excluded the video, "k": 2.5 gave 2."""
    if body.get("exclude_own") is not None and type(body["exclude_own"]) is not bool:
        raise BadRequest(f'"exclude_own" must be true or false, got {body["exclude_own"]!r}')
    for name in ("k", "nprobe"):
        if body.get(name) is not None and type(body[name]) is not int:
            raise BadRequest(f'"{name}" must be an integer, got {body[name]!r}')


def _clip_or_404(searcher, clip_id):
    meta = searcher.clip(clip_id)
    if meta is None:
        raise NotFound(f"no clip with id {clip_id}")
    return meta


def _resolve(roots, recorded):
    try:
        return roots.resolve(recorded)
    except Refused as err:
        raise (Forbidden if err.status == 403 else NotFound)(str(err)) from None


def clip_vector(searcher, meta):
    """The stored features of a clip: from its feature file, else reconstructed by the index."""
    try:
        return np.array(np.load(meta["features"], mmap_mode="r")[meta["clip"]], dtype=np.float32)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return searcher.index.reconstruct(int(meta["id"]))
    except RuntimeError:
        raise NotFound(f"the features of clip {meta['id']} are not available") from None


def page_search(searcher, vectors, options, signer, *, query_times=None, exclude=None):
    """The page's searches: `options` "k" counts videos (CLIPS_PER_VIDEO clip neighbours are asked
    of Faiss per video wanted), "min_score", "nprobe" -> {"videos": [...]}."""
    k, breadth = page_limits(options)
    clip_k = min(1000, max(k * CLIPS_PER_VIDEO, 50), searcher.count)
    distances, ids = searcher.search_arrays(np.atleast_2d(vectors), clip_k, breadth)
    return group_results(searcher, distances, ids, options, signer, query_times=query_times,
                         exclude=exclude, limit=k)


def page_limits(options):
    """(videos wanted, search breadth or None) of the page's `options`; BadRequest when bad."""
    k = _number(options.get("k", 10), "k", int, 1, MAX_VIDEOS)
    breadth = options.get("nprobe")
    return k, None if breadth in (None, "") else _number(breadth, "nprobe", int, 1, 65536)


def min_score_of(options):
    """The "min_score" of `options`, or None; BadRequest when it is not a number."""
    min_score = options.get("min_score")
    return None if min_score in (None, "") else _number(min_score, "min_score", float, -1e9, 1e9)


def group_results(searcher, distances, ids, options, signer, *, query_times=None, exclude=None,
                  limit=None):
    """The hits of `searcher.search_arrays`'s `distances` and `ids` grouped by video
    (grouping.py) -> {"videos": [...]}, each with `media` and segment `thumb` URLs (by `signer`, a
    UrlSigner: signed when the server has a token). `options` may hold "group_by" ("video"),
    "min_score", "exclude" (a video path) and "query_times" ([[s, e]...])."""
    group_by = options.get("group_by", "video")
    if group_by not in grouping.GROUP_BYS:
        raise BadRequest(f'"group_by" must be one of {", ".join(grouping.GROUP_BYS)}, '
                         f"got {group_by!r}")
    min_score = min_score_of(options)
    query_times = query_times or _query_times(options.get("query_times"), len(ids))
    videos = grouping.group_by_video(searcher.table, distances, ids, metric=searcher.metric,
                                     query_times=query_times,
                                     exclude=exclude or options.get("exclude"),
                                     min_score=min_score, limit=limit)
    for video in videos:
        video["name"] = os.path.basename(video["path"] or "")
        video["media"] = signer.url(f"/media/{video['best']['id']}")
        for segment in video["segments"]:
            segment["thumb"] = signer.url(f"/thumbs/{segment['id']}")
    return {"videos": videos}


def _query_times(value, count):
    if value is None:
        return None
    try:
        times = [(float(start), float(end)) for start, end in value]
    except (TypeError, ValueError):
        raise BadRequest('"query_times" must be [[start, end], ...] seconds') from None
    if len(times) != count:
        raise BadRequest(f'"query_times" has {len(times)} entries for {count} query vectors')
    return times


def _number(value, name, kind, low, high):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise BadRequest(f'"{name}" must be a number, got {value!r}') from None
    if isinstance(value, bool) or not low <= number <= high:
        raise BadRequest(f'"{name}" must be from {low} to {high}, got {value!r}')
    return number


class UrlSigner:
    """Short-lived signed URLs for media and thumbnails when the server has a token."""

    def __init__(self, token, seconds=SIGNED_URL_SECONDS):
        self.key = hashlib.sha256(f"ig65m-media:{token}".encode()).digest() if token else None
        self.token = token
        self.seconds = seconds

    def _signature(self, path, expires):
        return hmac.new(self.key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, path):
        if self.key is None:
            return path
        expires = int(time.time()) + self.seconds
        return f"{path}?exp={expires}&sig={self._signature(path, expires)}"

    def check(self, req):
        """Allow a request with the bearer token or a valid, unexpired signature; 401 else."""
        if self.key is None:
            return
        given = req.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return
        expires, signature = req.args.get("exp", ""), req.args.get("sig", "")
        if expires.isdigit() and int(expires) >= time.time() and hmac.compare_digest(
                signature.encode(), self._signature(req.path, int(expires)).encode()):
            return
        raise Unauthorized("missing or wrong bearer token, or an expired link")
