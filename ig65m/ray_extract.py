"""`extract --ray`: a collection on Ray: planning and decoding as CPU tasks, the model in actors.

    plan task (1 CPU) ──► parts of <= clips_per_task clips ──► decode task (1 CPU, seeks to its part)
        ──► model actor (1 GPU each when the cluster has GPUs) ──► driver: features written in order

Each video is planned from its packets (`ig65m.ranges`), split into parts that decode in parallel,
and its features are written by the driver through the same `FeatureWriter` and sidecar as
single-process extract, so the files are the same. The job manifest (`ig65m.jobs`) makes the run
resumable. Decoding runs at most two parts ahead of each actor, so memory and the object store stay
bounded however large the collection. Every node must see the videos and the output folder at the
same paths (a shared file system) and have ig65m installed.
"""

import collections
from dataclasses import dataclass

import numpy as np

from ig65m.defaults import default_backend
from ig65m.errors import Ig65mError
from ig65m.extract import CLIP_OPTIONS, Extractor
from ig65m.fileio import FeatureWriter
from ig65m.jobs import JobManifest, JobProgress, job_settings, select_pending, video_record
from ig65m.models import get_spec
from ig65m.ranges import clips_per_part, decode_part, plan_video, split
from ig65m.video import is_live

PARTS_AHEAD = 2  # parts queued on each actor: one running, one decoded and waiting


@dataclass
class RayOptions:
    """`address`: None (start a local Ray), "auto", "HOST:PORT" or "ray://HOST:10001"."""

    address: str | None = None
    workers: int | None = None
    clips_per_task: int | None = None


def import_ray():
    try:
        import ray
    except ImportError:
        raise Ig65mError("--ray needs Ray: pip install 'ig65m[ray]'") from None
    return ray


def start_ray(ray, address):
    """Join the cluster at `address`, or start a local Ray on this machine (None) -> True; False
    when this process is already connected to Ray (a caller's `ray.init`), which is then used."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 configure_logging=True, logging_level="WARNING")
        return True
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise Ig65mError(f"cannot start or join Ray at {address or 'a local instance'}: "
                         f"{str(err).splitlines()[0]}") from None


def worker_layout(resources, workers):
    """(actors, GPUs per actor, torch threads per CPU actor) for the cluster's `resources`."""
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    workers = workers or (gpus if gpus else max(1, cpus // 2))
    return workers, (1 if gpus else 0), max(1, cpus // workers)


class _Embedder:
    """A model actor: batches of preprocessed clips -> features.

    It is created before the driver loads its own model, so that its process starts and imports
    meanwhile; `load` then builds its Extractor with the driver's weights sha256, which builds the
    torch model only when the backend needs it (auto's cached ONNX/OpenVINO choice does not)."""

    def __init__(self):
        self.extractor = None

    def load(self, model_kwargs, weights_sha256):
        if self.extractor is None:
            self.extractor = Extractor(**model_kwargs, weights_sha256=weights_sha256,
                                       progress=False)

    def embed(self, clips, batch_size, source, settings, load_args):
        """-> (features, the backend that ran them). The backend is chosen as single-process
        extract chooses it: on the first batch, gated on clips of `source` cut with `settings`.
        `load_args`: those of `load`, for an actor restarted since (Ray runs only __init__)."""
        import torch

        self.load(*load_args)
        tensor = torch.from_numpy(np.array(clips))  # a writable copy of the object-store array
        rows = [self.extractor.run(tensor[i:i + batch_size], source, settings)[1]
                for i in range(0, len(tensor), batch_size)]
        return np.concatenate(rows).astype(np.float32, copy=False), self.extractor.runner.name


def _plan(source, settings, run_kwargs):
    return plan_video(source, settings, max_clips=run_kwargs.get("max_clips"),
                      duration=run_kwargs.get("duration"), format=run_kwargs.get("format"),
                      options=run_kwargs.get("input_options"))


def _decode(source, part, model, settings, run_kwargs):
    return decode_part(source, part, model=model, frame_size=settings.frame_size,
                       crop_size=settings.crop_size, format=run_kwargs.get("format"),
                       options=run_kwargs.get("input_options"))


def failure_text(err):
    """The message to record for a failed task: the user error inside, or the bug's type."""
    cause = getattr(err, "cause", None) or err
    if isinstance(cause, Ig65mError):
        return str(cause)
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"


def run_ray_job(jobs, output_dir, model_kwargs, run_kwargs, options, *, overwrite, emit, say,
                progress=True):
    """Run `jobs` [(source, output)] on Ray -> (failed sources, videos attempted)."""
    ray = import_ray()
    if get_spec(model_kwargs["model"]).weights.modality == "flow":
        raise Ig65mError("--ray runs RGB models; extract flow models without --ray")
    if any(is_live(source, run_kwargs.get("format")) for source, _ in jobs):
        raise Ig65mError("--ray runs video files; extract cameras and live inputs without --ray")
    started = start_ray(ray, options.address)
    try:
        # the actors start (their processes import torch and ig65m) while the driver loads its
        # own model copy: the weights sha256 and the sidecar, as single-process writes them
        actors, actor_kwargs = _start_actors(ray, model_kwargs, options.workers)
        extractor = Extractor(**dict(model_kwargs, device="cpu"), progress=False)
        manifest = JobManifest(output_dir, job_settings(extractor, run_kwargs),
                               extractor.weights_sha256)
        try:
            pending = select_pending(jobs, manifest, overwrite, say)
            if not pending:
                say("0 done, 0 failed, %d skipped" % len(jobs))
                return [], 0
            load_args = (actor_kwargs, extractor.weights_sha256)
            for actor in actors:
                actor.load.remote(*load_args)
            job = _RayJob(ray, extractor, actors, load_args, run_kwargs, options, manifest, emit,
                          say, progress)
            bar = job.run(pending)
        finally:
            manifest.close()
    finally:
        if started:
            ray.shutdown()
    say(bar.summary(len(jobs) - len(pending)))
    return bar.failed_sources, len(pending)


def _start_actors(ray, model_kwargs, workers):
    """Create the model actors (not loaded yet) -> (actors, the model options they load)."""
    workers, gpus, threads = worker_layout(ray.cluster_resources(), workers)
    actor = ray.remote(_Embedder).options(
        num_gpus=gpus, num_cpus=1 if gpus else 0, scheduling_strategy="SPREAD",
        max_restarts=2, max_task_retries=2)
    # the driver's backend name ($IG65M_BACKEND is read here, not on the nodes) and threads
    actor_kwargs = dict(model_kwargs, backend=model_kwargs.get("backend") or default_backend(),
                        threads=model_kwargs.get("threads") or (None if gpus else threads))
    return [actor.remote() for _ in range(workers)], actor_kwargs


class _Video:
    """One video in flight: its parts' features are written in order as they come back."""

    def __init__(self, source, output, plan, parts):
        self.source, self.output, self.plan, self.parts = source, output, plan, parts
        self.arrived, self.next_part, self.writer, self.failed = {}, 0, None, False
        self.backend = None  # the backend that ran its clips, for the sidecar


class _RayJob:
    def __init__(self, ray, extractor, actors, load_args, run_kwargs, options, manifest, emit,
                 say, progress):
        self.ray, self.extractor, self.run_kwargs = ray, extractor, run_kwargs
        self.actors, self.load_args = actors, load_args
        self.manifest, self.emit, self.say, self.progress = manifest, emit, say, progress
        # the resolved clip settings (ig65m.preprocess.Preprocess), as single-process extract uses
        self.settings = extractor.settings(**{key: run_kwargs.get(key) for key in CLIP_OPTIONS},
                                           tail=run_kwargs.get("tail") or "pad")
        self.batch_size = run_kwargs.get("batch_size") or 4
        if self.batch_size < 1:
            raise Ig65mError(f"--batch-size must be positive, got {self.batch_size}")
        self.clips_per_task = options.clips_per_task or clips_per_part(self.settings,
                                                                       self.batch_size)
        self.plan_task = ray.remote(num_cpus=1, max_retries=0)(_plan)
        self.decode_task = ray.remote(num_cpus=1, max_retries=0)(_decode)

    def run(self, pending):
        for source, output in pending:
            self.manifest.mark(source, output, "pending")
        self.bar = JobProgress(len(pending), self.progress)
        waiting, planning, ready, running = collections.deque(pending), {}, collections.deque(), {}
        load = {actor: 0 for actor in self.actors}
        while waiting or planning or ready or running:
            while waiting and len(planning) < len(self.actors) + 1 and len(ready) < 4 * len(load):
                source, output = waiting.popleft()
                ref = self.plan_task.remote(source, self.settings, self.run_kwargs)
                planning[ref] = (source, output)
            while ready and min(load.values()) < PARTS_AHEAD:
                video, number = ready.popleft()
                if video.failed:
                    continue
                actor = min(load, key=load.get)
                clips = self.decode_task.remote(video.source, video.parts[number],
                                                self.extractor.spec.name, self.settings,
                                                self.run_kwargs)
                running[actor.embed.remote(clips, self.batch_size, video.source, self.settings,
                                           self.load_args)] = (video, number, actor)
                load[actor] += 1
            if not planning and not running:
                continue
            [done], _ = self.ray.wait(list(planning) + list(running), num_returns=1)
            if done in planning:
                self._planned(done, planning.pop(done), ready)
            else:
                video, number, actor = running.pop(done)
                load[actor] -= 1
                self._embedded(done, video, number)
        self.bar.close()
        return self.bar

    def _planned(self, ref, job, ready):
        source, output = job
        try:
            plan = self.ray.get(ref)
        except Exception as err:  # noqa: BLE001 - every failure is recorded, the job goes on
            self._fail(source, output, failure_text(err))
            return
        video = _Video(source, output, plan, split(plan, self.clips_per_task))
        ready.extend((video, number) for number in range(len(video.parts)))

    def _embedded(self, ref, video, number):
        if video.failed:
            return
        try:
            video.arrived[number], video.backend = self.ray.get(ref)
            self._write_ready(video)
        except Exception as err:  # noqa: BLE001 - every failure is recorded, the job goes on
            video.failed = True
            if video.writer is not None:
                video.writer.abort()
            self._fail(video.source, video.output, failure_text(err))

    def _write_ready(self, video):
        if video.writer is None:
            video.output.parent.mkdir(parents=True, exist_ok=True)
            video.writer = FeatureWriter(video.output)
        while video.next_part in video.arrived:
            features = video.arrived.pop(video.next_part)
            video.writer.write(features)
            self.bar.add_clips(len(features))
            video.next_part += 1
        if video.next_part == len(video.parts):
            times = [[start, end] for _, start, end in video.plan.clips]
            meta = self.extractor.metadata(video.source, times, dict(self.run_kwargs),
                                           backend=video.backend)
            meta["interrupted"] = False
            video.writer.commit(meta)
            self.manifest.mark(video.source, video.output, "done", clips=len(times))
            self.bar.video_finished(True)
            self.emit(video_record(video.source, video.output, meta))

    def _fail(self, source, output, message):
        self.say(f"error: {source}: {message}")
        self.manifest.mark(source, output, "failed", error=message)
        self.bar.video_finished(False, source)
