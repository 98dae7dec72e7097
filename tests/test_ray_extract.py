"""`extract --ray` on real Ray: a local Ray started by the test, and a two-node cluster on 127.0.0.1.

Features are compared bit for bit with single-process extract run with one torch thread, as each
model actor here runs (2 CPUs, 2 actors): with other thread counts oneDNN sums in another order and
features differ by a few 1e-6 (relative ~5e-7), which is why the thread count is matched.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ig65m.cli import main
from ig65m.extract import Extractor
from ig65m.sample import pattern_frame, write_video
from tests.videos import ODD_RATE, lossless_video

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

ROOT = Path(__file__).resolve().parents[1]
MODEL, WEIGHTS = "r2plus1d_34_8_ig65m", "random:0"
OPTIONS = ["--weights", WEIGHTS, "--model", MODEL, "--frame-size", "32", "--crop-size", "32",
           "--batch-size", "2", "--ray-clips-per-task", "4", "--ray-workers", "2", "--ray"]
GOOD = ["a.npy", "b.npy", "sub/c.npy", "d.npy", "long.npy"]
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Six videos: five good (lossless and lossy, one at 19.62 fps, one long in 5 parts of 4
    clips with a keyframe every 12 frames, so parts start mid-GOP) and one corrupt."""
    folder = tmp_path_factory.mktemp("videos")
    (folder / "sub").mkdir()
    lossless_video(folder / "a.mkv", frames=12)
    lossless_video(folder / "b.mkv", frames=20)
    lossless_video(folder / "sub" / "c.mkv", frames=17, fps=ODD_RATE)
    frames = [pattern_frame(i, 64, 48) for i in range(150)]
    write_video(folder / "d.mp4", frames[:30], fps=25, options={"g": "6"})
    write_video(folder / "long.mp4", frames, fps=25, options={"g": "12", "bf": "2"})
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    return folder


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory):
    """Single-process extract of every good video, one torch thread -> {name: (features, meta)}."""
    out = tmp_path_factory.mktemp("single")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extractor = Extractor(MODEL, WEIGHTS, progress=False)
        found = {}
        for name in GOOD:
            source = next(videos.glob(str(Path(name).with_suffix(".*"))))
            output = out / name.replace("/", "_")
            extractor.extract(str(source), output, frame_size=32, crop_size=32, batch_size=2)
            # the sidecar as written, its features_sha256 (the .npy content) included
            found[name] = (np.load(output), json.loads(output.with_suffix(".json").read_text()))
    finally:
        torch.set_num_threads(threads)
    return found


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_processes(temp_dir):
    """Live processes of the Ray instance rooted at `temp_dir` (found by their command lines)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid != os.getpid() and any(temp_dir in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def stop_ray(temp_dir):
    """Stop every process of this Ray instance only (`ray stop` would stop every Ray on the
    machine, other users' included) and check that none is left."""
    procs = ray_processes(temp_dir)
    for proc in procs:
        proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=15)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=15)
    assert ray_processes(temp_dir) == []


def check_job(out, reference, stdout):
    """Every good video written as single-process extract writes it; the corrupt one failed."""
    written = sorted(json.loads(line)["output"] for line in stdout.splitlines())
    assert written == sorted(str(out / name) for name in GOOD)
    for name, (features, meta) in reference.items():
        assert np.array_equal(np.load(out / name), features), name
        assert json.loads((out / name).with_suffix(".json").read_text()) == meta
    records = manifest(out)
    assert records["broken.npy"]["state"] == "failed" and "broken.mp4" in records["broken.npy"]["error"]
    assert all(records[name]["state"] == "done" for name in GOOD)
    assert not (out / "broken.npy").exists()


def manifest(out):
    lines = (out / "ig65m-job.jsonl").read_text().splitlines()
    return {record["output"]: record for record in map(json.loads, lines)}


def test_local_ray_started_by_the_test(videos, reference, tmp_path, monkeypatch):
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    temp_dir = tempfile.mkdtemp(prefix="r12l", dir="/tmp")  # short: Ray's socket paths
    ray.init(num_cpus=2, _temp_dir=temp_dir, include_dashboard=False,
             object_store_memory=80 << 20)
    try:
        result = CliRunner().invoke(main, ["extract", str(videos), "--output-dir",
                                           str(tmp_path / "out"), *OPTIONS])
    finally:
        ray.shutdown()
        stop_ray(temp_dir)
    assert result.exit_code == 2, result.output
    assert "1 of 6 videos failed" in result.stderr and "5 done, 1 failed" in result.stderr
    check_job(tmp_path / "out", reference, result.stdout)


@pytest.fixture(scope="module")
def cluster():
    """A head and a second node with their own CPU, on 127.0.0.1 -> (the address to join, the
    environment, the head's Ray client address ray://127.0.0.1:PORT)."""
    temp_dir = tempfile.mkdtemp(prefix="r12c", dir="/tmp")
    env = dict(os.environ, **RAY_ENV)
    port, client_port = free_port(), free_port()
    common = ["--num-cpus", "1", "--temp-dir", temp_dir, "--disable-usage-stats",
              "--object-store-memory", str(80 << 20), "--node-ip-address", "127.0.0.1",
              "--dashboard-agent-listen-port", "0"]
    ray_cli = [str(Path(sys.executable).with_name("ray")), "start"]
    try:
        start_node([*ray_cli, "--head", "--port", str(port), "--include-dashboard", "false",
                    "--dashboard-port", "0", "--ray-client-server-port", str(client_port), *common],
                   env)
        start_node([*ray_cli, "--address", f"127.0.0.1:{port}", "--resources",
                    '{"second_node": 1}', *common], env)
        yield f"127.0.0.1:{port}", env, f"ray://127.0.0.1:{client_port}"
    finally:
        stop_ray(temp_dir)


def start_node(command, env):
    """`ray start ...`; a failure fails the test with what Ray printed, not only its exit code."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    if done.returncode:
        pytest.fail(f"{' '.join(command[1:4])} failed ({done.returncode}):\n{done.stdout[-2000:]}"
                    f"\n{done.stderr[-3000:]}")


def extract_on(address, videos, out, *extra):
    return [sys.executable, "-m", "ig65m", "extract", str(videos), "--output-dir", str(out),
            *OPTIONS, "--ray-address", address, *extra]


def test_cluster_job_killed_resumes_and_redoes_changed_settings(cluster, videos, reference,
                                                                 tmp_path):
    address, env, _ = cluster
    out = tmp_path / "out"
    command = extract_on(address, videos, out)
    job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        if (out / "ig65m-job.jsonl").is_file() and any(
                r["state"] == "done" for r in manifest(out).values()):
            break
        time.sleep(0.2)
    job.send_signal(signal.SIGKILL)
    job.communicate(timeout=30)
    done = sorted(name for name, r in manifest(out).items() if r["state"] == "done")
    assert done and len(done) < len(GOOD), done  # killed mid-run: some done, some not
    stamps = {name: (out / name).stat().st_mtime_ns for name in done}

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 2, again.stderr[-2000:]
    assert again.stderr.count("skipping") == len(done)
    assert {name: (out / name).stat().st_mtime_ns for name in done} == stamps
    check_job(out, reference, again.stdout + "".join(
        json.dumps({"output": str(out / name)}) + "\n" for name in done))

    # other settings: every done video is redone (few clips, to keep the test short)
    changed = subprocess.run(extract_on(address, videos, out, "--step", "4", "--max-clips", "2"),
                             env=env, capture_output=True, text=True, timeout=600)
    assert changed.returncode == 2, changed.stderr[-2000:]
    assert changed.stderr.count("settings changed: max_clips, step") == len(GOOD)
    records = manifest(out)
    for name in GOOD:
        assert records[name]["settings"]["step"] == 4 and records[name]["state"] == "done"
        assert json.loads((out / name).with_suffix(".json").read_text())["step"] == 4
        assert len(np.load(out / name)) == 2


def test_ray_client_address_gives_the_features_of_single_process_extract(cluster, videos,
                                                                         reference, tmp_path):
    """`--ray-address ray://HOST:PORT`: the driver runs here, its tasks and actors on the cluster
    through the head's Ray client server."""
    _, env, client = cluster
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "ig65m", "extract", str(videos / "a.mkv"),
                             str(videos / "b.mkv"), "--output-dir", str(out), *OPTIONS,
                             "--ray-address", client], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(json.loads(line)["output"] for line in result.stdout.splitlines()) == \
        [str(out / "a.npy"), str(out / "b.npy")]
    for name in ("a.npy", "b.npy"):
        features, meta = reference[name]
        assert np.array_equal(np.load(out / name), features), name
        assert json.loads((out / name).with_suffix(".json").read_text()) == meta


def test_ray_needs_a_collection_and_files(videos, tmp_path):
    """Refused before Ray starts: one VIDEO FEATURES.npy, --labels, a camera."""
    single = CliRunner().invoke(main, ["extract", str(videos / "a.mkv"), str(tmp_path / "f.npy"),
                                       *OPTIONS])
    assert single.exit_code == 2 and "--output-dir" in single.stderr
    labels = CliRunner().invoke(main, ["extract", str(videos), "--output-dir", str(tmp_path),
                                       "--labels", *OPTIONS])
    assert labels.exit_code == 2 and "--labels" in labels.stderr
    live = CliRunner().invoke(main, ["extract", "--format", "lavfi", "testsrc", "--output-dir",
                                     str(tmp_path / "o"), *OPTIONS])
    assert live.exit_code == 2 and "live" in live.stderr and not ray.is_initialized()
