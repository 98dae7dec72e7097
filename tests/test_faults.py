"""Faults that must lose nothing: kills inside each commit window, concurrent index appends,
stale temporaries, SIGTERM on a live extract, a full disk, rotated videos."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ig65m import tempfiles
from ig65m.errors import Ig65mError
from ig65m.fileio import load_features, save_features
from ig65m.index.build import build_index
from ig65m.index.manifest import read_manifest
from ig65m.index.swap import locked
from ig65m.sample import pattern_frame, write_video
from ig65m.video import read_frames

ROOT = Path(__file__).resolve().parents[1]


def python(code, *, env=None, **kwargs):
    """Run `code` in a fresh interpreter with this checkout first on the path."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=120, **kwargs)


def hidden(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


def features(rows, dim=8, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)


def meta(rows):
    return {"model": "m", "clips": [[i, i + 1.0] for i in range(rows)]}


SAVE_NEW = """
    import numpy as np
    from ig65m.fileio import save_features
    rows = np.full((13, 8), 7, np.float32)
    save_features({path!r}, rows, {{"model": "m", "clips": [[i, i + 1.0] for i in range(13)]}})
"""


@pytest.mark.parametrize("hook, survivor", [("IG65M_TEST_KILL_BEFORE_NPY", "old"),
                                            ("IG65M_TEST_KILL_AFTER_NPY", "new")])
def test_a_kill_inside_the_pair_commit_never_shows_a_mismatched_pair(tmp_path, hook, survivor):
    path = tmp_path / "f.npy"
    old = features(4)
    save_features(path, old, meta(4))
    killed = python(SAVE_NEW.format(path=str(path)), env={hook: "1"})
    assert killed.returncode == -signal.SIGKILL
    rows, side = load_features(path)  # the reader finishes or forgets the interrupted commit
    if survivor == "old":
        np.testing.assert_array_equal(rows, old)
        assert len(side["clips"]) == 4
    else:
        assert rows.shape == (13, 8) and (np.asarray(rows) == 7).all()
        assert len(side["clips"]) == 13
    swept = python(SAVE_NEW.format(path=str(tmp_path / "g.npy")))  # the next run sweeps
    assert swept.returncode == 0 and hidden(tmp_path) == []


def test_a_sidecar_that_disagrees_with_its_features_is_refused(tmp_path):
    path = tmp_path / "f.npy"
    save_features(path, features(4), meta(4))
    np.save(path, features(4, seed=1))
    with pytest.raises(Ig65mError, match="disagree"):
        load_features(path)


@pytest.mark.parametrize("replace", [False, True])
def test_a_run_that_must_not_replace_leaves_another_runs_new_pair_whole(tmp_path, replace):
    """`extract VIDEO OUT.npy` without --overwrite checks OUT at its start; a second run that
    started at the same time (the same output name in a parallel script) and finished first must
    not be silently replaced: this run fails, leaving the other's pair whole and nothing of its
    own. With --overwrite (replace=True) the later commit wins, as before."""
    from ig65m.fileio import FeatureWriter

    path = tmp_path / "f.npy"
    writer = FeatureWriter(path, replace=replace)
    writer.write(features(5, seed=2))
    save_features(path, features(4, seed=1), meta(4))  # the other run commits first
    if replace:
        writer.commit(meta(5))
        assert np.array_equal(load_features(path)[0], features(5, seed=2))
    else:
        with pytest.raises(Ig65mError, match="written by another run"):
            writer.commit(meta(5))
        assert np.array_equal(load_features(path)[0], features(4, seed=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json", "f.npy"]


def test_a_symlinked_output_is_written_where_it_points(tmp_path):
    (tmp_path / "here").mkdir()
    (tmp_path / "there").mkdir()
    os.symlink(tmp_path / "there" / "real.npy", tmp_path / "here" / "out.npy")
    save_features(tmp_path / "here" / "out.npy", features(3), meta(3))
    assert sorted(os.listdir(tmp_path / "there")) == ["real.json", "real.npy"]
    assert os.listdir(tmp_path / "here") == ["out.npy"]
    rows, side = load_features(tmp_path / "here" / "out.npy")
    assert len(rows) == 3 and len(side["clips"]) == 3


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_dead_processes_only_are_swept(tmp_path):
    here = tempfiles.host()
    dead = tmp_path / f".a.npy.{here}.{dead_pid()}.x1y2.tmp"
    live = tmp_path / f".a.npy.{here}.{os.getpid()}.x1y3.tmp"
    elsewhere = tmp_path / f".a.npy.otherhost.{dead_pid()}.x1y4.tmp"
    dead_dir = tmp_path / f".idx.{here}.{dead_pid()}.x1y5.tmp"
    for path in (dead, live, elsewhere):
        path.write_bytes(b"half")
    dead_dir.mkdir()
    (dead_dir / "index.faiss").write_bytes(b"half")
    save_features(tmp_path / "b.npy", features(2), meta(2))
    assert hidden(tmp_path) == sorted([live.name, elsewhere.name])


def test_temporary_names_carry_host_and_pid(tmp_path):
    fd, path = tempfiles.make_file(tmp_path / "out.npy")
    os.close(fd)
    assert tempfiles.owner(path) == (tempfiles.host(), os.getpid(), "tmp")


@pytest.fixture
def index(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, rows in (("a", 30), ("b", 20), ("c", 10)):
        save_features(inputs / f"{name}.npy", features(rows, seed=rows), meta(rows))
    build_index([inputs / "a.npy"], tmp_path / "idx", progress=False)
    return tmp_path / "idx", inputs


APPEND = """
    from ig65m.index.build import build_index
    build_index([{feature!r}], {index!r}, append=True, progress=False)
"""


def test_a_kill_between_the_swap_renames_loses_no_index(index):
    index_dir, inputs = index
    killed = python(APPEND.format(feature=str(inputs / "b.npy"), index=str(index_dir)),
                    env={"IG65M_TEST_KILL_MID_SWAP": "1"})
    assert killed.returncode == -signal.SIGKILL and not index_dir.exists()
    assert read_manifest(index_dir)["count"] == 30  # put back by the next reader
    manifest = build_index([inputs / "b.npy"], index_dir, append=True, progress=False)
    assert manifest["count"] == 50 and hidden(index_dir.parent) == []


def test_concurrent_appends_wait_for_each_other_and_lose_nothing(index):
    index_dir, inputs = index
    codes = [APPEND.format(feature=str(inputs / f"{name}.npy"), index=str(index_dir))
             for name in ("b", "c")]
    returncodes, errors = runs_behind_the_lock(index_dir, codes)
    assert returncodes == [0, 0], errors
    assert all("waiting for another index-build" in text for text in errors)
    assert read_manifest(index_dir)["count"] == 60 and hidden(index_dir.parent) == []


def runs_behind_the_lock(index_dir, codes):
    """Start each of `codes` (Python) while this process holds the lock of `index_dir`, let go once
    all of them wait for it, so they race for it -> (their exit codes, their stderr texts)."""
    runs = []
    with locked(index_dir):
        for code in codes:
            runs.append(subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(code)], stderr=subprocess.PIPE, text=True,
                env=dict(os.environ, PYTHONPATH=str(ROOT))))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all(_waiting(run) for run in runs):
            time.sleep(0.1)
    errors = [getattr(run, "said", "") + run.communicate(timeout=120)[1] for run in runs]
    return [run.returncode for run in runs], errors


def _waiting(run):
    """True once `run` said it waits (its first stderr line), or ended."""
    if run.poll() is not None:
        return True
    if not hasattr(run, "said"):
        run.said = run.stderr.readline()
    return "waiting" in run.said


def test_sigterm_on_a_live_extract_keeps_the_clips_like_ctrl_c(tmp_path):
    log = tmp_path / "stderr.txt"
    out = tmp_path / "live.npy"
    with open(log, "w") as stderr:
        run = subprocess.Popen(
            [sys.executable, "-m", "ig65m", "extract", "--format", "lavfi",
             "testsrc=size=64x48:rate=10", str(out), "--model", "movinet_a0_base",
             "--weights", "random:1", "--clip-frames", "4", "--crop-size", "32",
             "--frame-size", "32", "--batch-size", "1"],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
        deadline = time.monotonic() + 300  # model start-up on a loaded machine
        while time.monotonic() < deadline and "1clip" not in log.read_text():
            time.sleep(0.1)
        run.send_signal(signal.SIGTERM)
        stdout, _ = run.communicate(timeout=60)
    assert run.returncode == 0, log.read_text()[-2000:]
    record = json.loads(stdout)
    rows, side = load_features(out)
    assert record["interrupted"] and side["interrupted"] and len(rows) == record["clips"] >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.json", "live.npy", "stderr.txt"]


@pytest.mark.parametrize("argv", [
    ["semcode", "{features}", "{out}/picture.png"],
    ["index-build", "{features}", "{out}/idx", "--quiet"],
    ["extract", "{video}", "{out}/f.npy", "--model", "movinet_a0_base", "--weights", "random",
     "--clip-frames", "4", "--frame-size", "32", "--crop-size", "32"],
])
def test_a_full_disk_is_one_error_line_and_leaves_nothing(tmp_path, argv):
    features_path = tmp_path / "f.npy"
    save_features(features_path, features(400, dim=64), meta(400))
    write_video(tmp_path / "v.mkv", [pattern_frame(i, 64, 48) for i in range(8)])
    out = tmp_path / "out"
    out.mkdir()
    args = [a.format(features=features_path, out=out, video=tmp_path / "v.mkv") for a in argv]
    command = "ulimit -f 1; exec " + " ".join([sys.executable, "-m", "ig65m", *args])
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot write"), result.stderr
    assert not any(line.startswith("error") for line in lines[:-1]), result.stderr
    assert list(out.iterdir()) == []


FAILED_WRITES = """
    import resource, sys
    from pathlib import Path
    import numpy as np, torch
    from ig65m.errors import Ig65mError
    from ig65m.fileio import atomic_path, save_features
    folder = Path(sys.argv[1])
    # files may not grow past 4 KiB (Python ignores SIGXFSZ: writes fail with EFBIG)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    def save_tensor():
        with atomic_path(folder / "w.pth") as tmp:
            torch.save(torch.zeros(10_000), tmp)
    def save_rows():
        save_features(folder / "f.npy", np.zeros((100, 64), np.float32),
                      {"model": "m", "clips": [[i, i + 1.0] for i in range(100)]})
    for attempt in (save_tensor, save_rows):
        try:
            attempt()
        except Ig65mError as err:
            assert "cannot write" in str(err), err
        else:
            raise SystemExit("a write past the limit succeeded")
"""


def test_failed_writes_are_user_errors_and_leave_nothing(tmp_path):
    """In a child process: the size limit would also stop this process's own output (a log file)."""
    folder = tmp_path / "out"
    folder.mkdir()
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(FAILED_WRITES), str(folder)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert list(folder.iterdir()) == []


def test_rotated_video_is_decoded_upright(tmp_path):
    images = [pattern_frame(i, 64, 48) for i in range(4)]
    write_video(tmp_path / "plain.mkv", images, codec="libx264rgb", options={"crf": "0"})
    write_video(tmp_path / "turned.mkv", images, codec="libx264rgb", options={"crf": "0"},
                rotation=90)
    plain = [frame.image for frame in read_frames(tmp_path / "plain.mkv", frame_size=None)]
    turned = [frame.image for frame in read_frames(tmp_path / "turned.mkv", frame_size=None)]
    assert turned[0].shape == (64, 48, 3)
    for upright, original in zip(turned, plain):
        np.testing.assert_array_equal(upright, np.rot90(original))


def test_a_second_job_on_the_same_output_folder_is_refused_and_loses_nothing(tmp_path):
    """Two extract jobs on one --output-dir: the second would compact the job manifest under the
    first and drop its records, so it is refused while the first holds the folder, in this
    process or another (the lock is the folder's flock, which also ends with a killed process)."""
    from ig65m.jobs import MANIFEST_NAME, JobManifest

    first = JobManifest(tmp_path, {"model": "m"}, "ab" * 32)
    first.mark("a.mp4", tmp_path / "a.npy", "done", clips=3)
    with pytest.raises(Ig65mError, match="another extract job is writing"):
        JobManifest(tmp_path, {"model": "m"}, "ab" * 32)
    other = subprocess.run([sys.executable, "-c", "import sys; from ig65m.jobs import JobManifest; "
                            "JobManifest(sys.argv[1], {}, None)", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    assert other.returncode != 0 and "another extract job is writing" in other.stderr
    first.mark("b.mp4", tmp_path / "b.npy", "failed", error="bad")
    first.close()
    again = JobManifest(tmp_path, {"model": "m"}, "ab" * 32)
    assert {r["output"]: r["state"] for r in again.records.values()} == {"a.npy": "done",
                                                                         "b.npy": "failed"}
    again.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME]
