"""Where converted models and measured choices live: keyed so that a change of weights, clip
shape or runtime version never reuses a stale entry.

Everything sits in `<cache>/backends/` beside `<cache>/weights/` (`ig65m.weights.cache_dir`).
A key is built from the model, the weights' sha256, the pooling, the clip shape (C, T, H, W) and
the versions of torch, ONNX Runtime, OpenVINO and NNCF. Unseeded random weights have no sha256:
nothing about them is cached (each run has different weights).
"""

import hashlib
import json
import platform
from functools import lru_cache
from importlib import metadata

from ig65m.fileio import write_json
from ig65m.weights import cache_dir, cache_folder

RUNTIMES = ("torch", "onnxruntime", "openvino", "nncf")


@lru_cache(maxsize=1)
def runtime_versions():
    """{package: installed version or None} of every runtime a backend uses."""
    versions = {}
    for name in RUNTIMES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# CPU flags that decide which kernels the runtimes pick (AMX and AVX-512 INT8/bf16 make INT8 and
# bf16 several times faster): part of a measured choice's key, since a cloud VM's model name is
# often a generic "Intel(R) Xeon(R) Processor" on hosts with and without them
KERNEL_FLAGS = {"amx_int8", "amx_bf16", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx512f",
                "avx_vnni", "avx2"}


def cpu_name(cpuinfo="/proc/cpuinfo"):
    """The processor model and its kernel-deciding flags, part of a measured choice's key
    (another CPU, or the same name with other instructions, measures again)."""
    name, flags = None, []
    try:
        with open(cpuinfo, encoding="utf-8") as info:
            for line in info:
                field, _, value = line.partition(":")
                if field.strip() == "model name" and name is None:
                    name = value.strip()
                elif field.strip() == "flags" and not flags:
                    flags = sorted(f for f in value.split() if f in KERNEL_FLAGS)
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    return f"{name} [{' '.join(flags)}]" if flags else name


def model_key(model, weights_sha256, pooling, clip_shape, extra=()):
    """A short digest naming one converted model, or None when it must not be cached."""
    if not weights_sha256:
        return None
    fields = [model, weights_sha256, *pooling, "x".join(map(str, clip_shape)),
              *(f"{k}={v}" for k, v in sorted(runtime_versions().items())), *map(str, extra)]
    digest = hashlib.sha256("\n".join(fields).encode()).hexdigest()[:20]
    return f"{model}-{'x'.join(map(str, clip_shape))}-{digest}"


def backends_dir():
    return cache_folder(cache_dir() / "backends")


def read_choices():
    """{key: measured choice} of `--backend auto` on this machine ({} when none yet)."""
    path = cache_dir() / "backends" / "auto.json"
    try:
        choices = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return choices if isinstance(choices, dict) else {}


def save_choice(key, choice):
    """Record `choice` (a JSON-able dict) under `key`, atomically."""
    choices = read_choices()
    choices[key] = choice
    write_json(backends_dir() / "auto.json", choices)
