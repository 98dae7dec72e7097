"""Choosing the backend: an explicit one behind the accuracy gate, or `auto`, which measures.

`auto`, on first use for a model (weights, pooling, clip shape, threads, runtime versions, CPU),
builds every backend that can run here, checks each against torch fp32 on real clips (the gate),
times the ones that pass for a few seconds on the real clip shape in two alternating rounds, and
keeps the fastest. The choice and the measured table are cached (ig65m.backends.cache);
`ig65m models --backends` prints them. Without gate clips (a camera and no --calibration) only
the fp32 backends are candidates.
"""

import os
import time

import numpy as np
import torch

from ig65m.backends import cache, gate
from ig65m.backends.runners import build, say
from ig65m.defaults import PRECISIONS
from ig65m.embedder import run_torch
from ig65m.errors import Ig65mError

AUTO_SECONDS = 2.0  # timing per backend and round
AUTO_ROUNDS = 2
# where a refused reduced-precision backend falls back to
FALLBACK = {"openvino-int8": "openvino-bf16", "openvino-bf16": "openvino", "torch-bf16": "torch",
            "torch-fp16": "torch", "onnxruntime-int8": "onnxruntime"}
# auto's candidates: torch.compile is left out (minutes of compiling, and no win measured here)
AUTO_CANDIDATES = ("torch", "torch-fp16", "torch-bf16", "onnxruntime", "onnxruntime-int8",
                   "openvino", "openvino-bf16", "openvino-int8")


def choose(requested, target, gate_clips, batch_size):
    """The Runner for `requested` ("auto" or a backend name). `gate_clips()`: real clips
    (N, C, T, H, W) for the accuracy gate, or None when there are none (called only when
    needed, once)."""
    if requested == "auto":
        return _auto(target, gate_clips, batch_size)
    checker = _Checker(target, gate_clips, batch_size)
    while True:
        runner = build(requested, target)
        if PRECISIONS[requested] == "fp32":
            return runner
        result = checker.check(runner)
        if result.passed:
            return runner
        say(f"{requested} {result.describe()}; falling back to {FALLBACK[requested]}")
        requested = FALLBACK[requested]


class _Checker:
    """The gate against torch fp32 on the gate clips, the reference computed once."""

    def __init__(self, target, gate_clips, batch_size):
        self.target, self.batch_size, self._reference = target, batch_size, None
        self._clips, self._gate_clips = None, gate_clips

    @property
    def clips(self):
        if self._gate_clips is not None:
            self._clips, self._gate_clips = self._gate_clips(), None
        return self._clips

    def check(self, runner):
        if self.clips is None:
            raise Ig65mError(f"{runner.name} computes in {runner.precision}: the accuracy gate needs "
                             f"clips of a video file to check it; give --calibration FOLDER")
        if self._reference is None:
            embedder, device = self.target.embedder, self.target.device
            self._reference = gate.run_batched(lambda c: run_torch(embedder, c, device),
                                               self.clips, self.batch_size)
        return gate.check(self._reference, gate.run_batched(runner, self.clips, self.batch_size))


def auto_key(target):
    return target.key("auto", cache.cpu_name(), target.threads, target.device.type)


def _auto(target, gate_clips, batch_size):
    key = auto_key(target)
    cached = cache.read_choices().get(key) if key else None
    if cached:
        try:
            return _rebuild(cached, target)
        except (Ig65mError, OSError) as err:
            say(f"cached choice {cached.get('backend')} cannot be used ({err}); measuring again")
    checker = _Checker(target, gate_clips, batch_size)
    rows, runners = _measure(target, checker)
    best = max((row for row in rows if row.get("clips_per_s")), key=lambda row: row["clips_per_s"])
    say(f"auto chose {best['backend']} for {target.model} {'x'.join(map(str, target.clip_shape))}: "
        f"{best['clips_per_s']:.2f} clips/s, x{best.get('ratio_to_torch', 1):.2f} torch "
        f"(`ig65m models --backends` shows the table)")
    if key:
        try:
            cache.save_choice(key, {"model": target.model, "clip_shape": list(target.clip_shape),
                                    "backend": best["backend"], "precision": best["precision"],
                                    "int8_model": best.get("file"), "threads": target.threads,
                                    "versions": cache.runtime_versions(),
                                    "cpu": cache.cpu_name(),
                                    "load": round(os.getloadavg()[0], 2), "table": rows})
        except Ig65mError as err:  # an unwritable cache: this run goes on, the next measures again
            say(f"the choice is not cached: {err}")
    return runners[best["backend"]]


def _rebuild(cached, target):
    if cached.get("int8_model"):
        target.int8_model = cached["int8_model"]
        if not os.path.isfile(cached["int8_model"]):
            raise Ig65mError(f"{cached['int8_model']} is gone")
    return build(cached["backend"], target)


def _measure(target, checker):
    """Build, gate and time every candidate -> (table rows, {name: Runner} of those that pass)."""
    gate_clips, rows, runners = checker.clips, [], {}
    for name in AUTO_CANDIDATES:
        row = {"backend": name, "precision": PRECISIONS[name]}
        rows.append(row)
        if gate_clips is None and PRECISIONS[name] != "fp32":
            row["refused"] = "no clips of a video file for the accuracy gate"
            continue
        try:
            runner = build(name, target)
            result = checker.check(runner) if gate_clips is not None else None
        except Ig65mError as err:
            row["refused"] = str(err)
            continue
        if result is not None:
            row.update(min_cosine=result.min_cosine, top1_agreement=result.top1_agreement)
            if not result.passed and PRECISIONS[name] != "fp32":
                row["refused"] = result.describe()
                continue
        row["file"] = getattr(runner, "file", None)
        runners[name] = runner
    _time(runners, rows, _timing_batch(target, gate_clips, checker.batch_size))
    return rows, runners


def _timing_batch(target, gate_clips, batch_size):
    if gate_clips is not None and len(gate_clips) >= batch_size:
        return gate_clips[:batch_size]
    return torch.randn(batch_size, *target.clip_shape, generator=torch.Generator().manual_seed(0))


def _time(runners, rows, batch):
    rates = {name: [] for name in runners}
    for index in range(AUTO_ROUNDS):
        order = list(runners) if index % 2 == 0 else list(runners)[::-1]
        for name in order:
            if index == 0:
                runners[name](batch)  # warm-up: first calls allocate and pick kernels
            calls, start = 0, time.perf_counter()
            while calls == 0 or time.perf_counter() - start < AUTO_SECONDS:
                runners[name](batch)
                calls += 1
            rates[name].append(calls * len(batch) / (time.perf_counter() - start))
    torch_rate = float(np.median(rates["torch"])) if "torch" in rates else None
    for row in rows:
        if row["backend"] in rates:
            row["clips_per_s"] = round(float(np.median(rates[row["backend"]])), 4)
            if torch_rate:
                row["ratio_to_torch"] = round(row["clips_per_s"] / torch_rate, 3)
