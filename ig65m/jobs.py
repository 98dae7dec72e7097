"""Extraction jobs over many videos: planning, the job manifest, resume and progress.

A job is a list of (source video, output .npy). With `--output-dir` the job keeps a manifest,
`ig65m-job.jsonl` in the output folder: one JSON line per event, the last line of a video wins:

    {"output": "sub/b.npy", "source": "...", "state": "done" | "failed" | "pending",
     "error": "..." (failed only), "settings": {...}, "weights_sha256": "...", "clips": N, "time": ...}

Re-running the same job skips a video only when its last record says done with the same settings and
weights sha256 and its features file is still there; anything else (other model, weights, clip
options, --max-clips...) is redone. Random weights without a seed have no sha256: never skipped.
"""

import datetime
import fcntl
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ig65m.video import VIDEO_SUFFIXES
from ig65m.errors import Ig65mError
from ig65m.fileio import atomic_path

MANIFEST_NAME = "ig65m-job.jsonl"
STATES = ("pending", "done", "failed")


def expand_sources(paths, from_list):
    """Sources: files as given, folders searched for videos, plus the lines of --from-list ->
    [(source path, output path relative to the output folder, without suffix change)]."""
    sources = []
    for path in list(paths) + read_list(from_list):
        if Path(path).is_dir():
            found = sorted(p for p in Path(path).rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
            sources.extend((p, p.relative_to(path)) for p in found)
        else:
            sources.append((Path(path), Path(Path(path).name)))
    return sources


def read_list(from_list):
    """The video paths of a --from-list file: one a line, blank lines and # comments skipped.
    A byte-order mark (as Windows editors and spreadsheets save UTF-8) is not part of the first
    path."""
    if from_list is None:
        return []
    try:
        lines = Path(from_list).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise Ig65mError(f"cannot read --from-list {from_list}: {err}") from None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def plan_jobs(paths, output_dir, from_list):
    """[(source, output .npy)] from the command line's two forms: VIDEO FEATURES.npy, or videos
    and folders (and --from-list) with --output-dir."""
    if output_dir is None and from_list is None:
        if len(paths) != 2:
            raise Ig65mError("give VIDEO FEATURES.npy, or videos/folders with --output-dir")
        if not paths[1].endswith(".npy"):
            raise Ig65mError(f"the output must be a .npy file, got {paths[1]}")
        return [(paths[0], Path(paths[1]))]
    if output_dir is None:
        raise Ig65mError("--from-list needs --output-dir")
    jobs = [(str(src), Path(output_dir) / rel.with_suffix(".npy"))
            for src, rel in expand_sources(paths, from_list)]
    if not jobs:
        raise Ig65mError("no videos found in the given paths")
    seen = {}
    for source, output in jobs:
        if output in seen:
            raise Ig65mError(f"{seen[output]} and {source} would both write {output}"
                             + (" (listed twice)" if seen[output] == source else
                                "; give their folders instead, whose layout the outputs keep"))
        seen[output] = source
    return jobs


def job_settings(extractor, run_kwargs):
    """Everything that changes a video's features, as the manifest records it (JSON-comparable)."""
    clip_keys = ("frame_size", "clip_frames", "step", "fps", "crop_size", "frame_stride")
    settings = extractor.settings(**{key: run_kwargs.get(key) for key in clip_keys},
                                  tail=run_kwargs.get("tail") or "pad").clip_settings()
    settings.update(model=extractor.spec.name, backend=extractor.backend,
                    pool_spatial=extractor.pooling[0], pool_temporal=extractor.pooling[1],
                    max_clips=run_kwargs.get("max_clips"), duration=run_kwargs.get("duration"),
                    format=run_kwargs.get("format"),
                    input_options=dict(run_kwargs.get("input_options") or {}))
    return json.loads(json.dumps(settings, sort_keys=True))


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class JobManifest:
    """The job's record in `<output_dir>/ig65m-job.jsonl` (see the module docstring).

    Opening it compacts the file to one line per video (atomically); each state change then
    appends one line and flushes it to disk, so a killed job loses at most the video in flight.
    A job holds an exclusive lock on its folder until `close`: a second job on the same folder,
    which would compact the file under the first and lose its records, is an Ig65mError.
    """

    def __init__(self, output_dir, settings, weights_sha256):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / MANIFEST_NAME
        self.settings, self.weights_sha256 = settings, weights_sha256
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_folder(self.output_dir)
        try:
            self.records = self._read()
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records.values()),
                               encoding="utf-8")
            self._file = open(self.path, "a", encoding="utf-8")
        except BaseException:
            os.close(self._lock)
            raise

    def _read(self):
        records = {}
        if not self.path.is_file():
            return records
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
                records[record["output"]] = record
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill: that video is simply redone
        return records

    def _key(self, output):
        return Path(output).relative_to(self.output_dir).as_posix()

    def is_done(self, output):
        """True when `output` was done with this job's settings and weights and is still there."""
        record = self.records.get(self._key(output))
        return (record is not None and record.get("state") == "done"
                and self.weights_sha256 is not None
                and record.get("weights_sha256") == self.weights_sha256
                and record.get("settings") == self.settings and Path(output).is_file())

    def why_redo(self, output):
        """A short reason an existing output is redone, or None when there is nothing to say."""
        record = self.records.get(self._key(output))
        if record is None or record.get("state") != "done":
            return None
        if self.weights_sha256 is None:
            return "random weights without a seed cannot be compared"
        if record.get("weights_sha256") != self.weights_sha256:
            return "other weights"
        if record.get("settings") != self.settings:
            changed = sorted(k for k in set(self.settings) | set(record.get("settings") or {})
                             if self.settings.get(k) != (record.get("settings") or {}).get(k))
            return "settings changed: " + ", ".join(changed)
        return "its features file is missing"

    def mark(self, source, output, state, *, error=None, clips=None):
        """Append one record (state one of STATES) and flush it to disk."""
        if state not in STATES:
            raise ValueError(f"state must be one of {STATES}")
        record = {"output": self._key(output), "source": str(source), "state": state,
                  "settings": self.settings, "weights_sha256": self.weights_sha256,
                  "time": _now()}
        if error is not None:
            record["error"] = str(error)
        if clips is not None:
            record["clips"] = clips
        self.records[record["output"]] = record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self):
        self._file.close()
        os.close(self._lock)


def _lock_folder(folder):
    """A descriptor of `folder` holding an exclusive flock on it (released when closed, or when
    the process ends, however it ends)."""
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise Ig65mError(f"another extract job is writing {folder}: let it finish (a re-run then "
                         "skips what it did), or give another --output-dir") from None
    return descriptor


def select_pending(jobs, manifest, overwrite, say):
    """The jobs left to run: all with `overwrite`, else those not done with these settings.
    `say(text)` reports every skip and every redo with its reason."""
    pending = []
    for source, output in jobs:
        if not overwrite and manifest.is_done(output):
            say(f"skipping {source}: done with the same settings (use --overwrite)")
            continue
        reason = None if overwrite else manifest.why_redo(output)
        if reason:
            say(f"redoing {source}: {reason}")
        pending.append((source, output))
    return pending


class JobProgress:
    """Progress on stderr: a bar over videos ("video i of n", total and ETA) counting clips."""

    def __init__(self, videos, enabled=True):
        self.videos, self.clips, self.started = videos, 0, time.monotonic()
        self.done = self.failed = 0
        self.failed_sources = []
        self._bar = tqdm(total=videos, unit="video", file=sys.stderr, disable=not enabled,
                         desc=f"video 1 of {videos}", dynamic_ncols=True)

    def add_clips(self, count):
        self.clips += count
        elapsed = max(time.monotonic() - self.started, 1e-9)
        self._bar.set_postfix(clips=self.clips, clips_per_s=f"{self.clips / elapsed:.2f}",
                              refresh=False)
        self._bar.refresh()

    def video_finished(self, ok, source=None):
        if not ok:
            self.failed_sources.append(source)
        self.done += ok
        self.failed += not ok
        self._bar.update(1)
        finished = self.done + self.failed
        if finished < self.videos:
            self._bar.set_description(f"video {finished + 1} of {self.videos}")

    def close(self):
        self._bar.close()

    def summary(self, skipped):
        seconds = time.monotonic() - self.started
        return (f"{self.done} done, {self.failed} failed, {skipped} skipped; {self.clips} clips in "
                f"{seconds:.1f} s")


def video_record(source, output, meta, tally=None, clip_tops=()):
    """The JSON line printed on stdout for a video written."""
    record = {"source": str(source), "output": str(output), "clips": len(meta["clips"]),
              "interrupted": meta.get("interrupted", False)}
    if tally is not None:
        record.update(top=tally.video_top(), clip_top=[clip["top"] for clip in clip_tops])
    return record


def run_batch(extractor, pending, manifest, run_kwargs, *, emit, say, labels=None, progress=True):
    """Extract every (source, output) of `pending` in this process, recording each in `manifest`.

    A failing video is reported through `say`, recorded as failed, and the job goes on. `emit`
    gets each written video's record. Returns the JobProgress (its counts and summary).
    """
    from ig65m.classify import ClipLabels  # numpy only, but keep jobs.py light for planning

    bar = JobProgress(len(pending), progress)
    for source, output in pending:
        manifest.mark(source, output, "pending")
    for source, output in pending:
        output.parent.mkdir(parents=True, exist_ok=True)
        tally, clip_tops = (ClipLabels(labels) if labels is not None else None), []

        def on_batch(batch, tally=tally, clip_tops=clip_tops):
            bar.add_clips(len(batch.features))
            if tally is not None:
                clip_tops.extend(tally.add(batch))

        try:
            meta = extractor.extract(source, output, **run_kwargs, on_batch=on_batch)
        except Ig65mError as err:
            say(f"error: {source}: {err}")
            manifest.mark(source, output, "failed", error=err)
            bar.video_finished(False, source)
            continue
        manifest.mark(source, output, "done", clips=len(meta["clips"]))
        bar.video_finished(True)
        emit(video_record(source, output, meta, tally, clip_tops))
    bar.close()
    return bar
