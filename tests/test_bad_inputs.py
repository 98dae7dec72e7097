"""Bad inputs, as a careless or hostile user types them, for every command.

Each case must give: exit code 2, exactly one `error:` line on stderr (the last line; a `warning:`
before it is allowed), no traceback, no new file anywhere in the test's world, and every existing
file byte-identical. Commands run in-process through click's CliRunner and fail before any model
loads, so the 400-odd cases take seconds.
"""

import hashlib
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ig65m.cli import main
from ig65m.fileio import save_features
from ig65m.index.build import build_index
from ig65m.train.finetune import CHECKPOINT_FORMAT, CHECKPOINT_KEYS
from tests.test_index_server import start_server, stop
from tests.videos import audio_only, empty_video, lossless_video

DIM = 16
MODEL = ["--model", "movinet_a0_base"]
POS_INT = ["0", "-1", "1.5", "x", "", "99999999999999999999"]
NONNEG_INT = ["-1", "1.5", "x", "", "99999999999999999999"]
POS_FLOAT = ["0", "-1", "nan", "inf", "-inf", "x", ""]
UNIT = ["-0.1", "1.5", "nan", "inf", "x"]
UNKNOWN = [["--no-such-option"], ["--weights"], ["-z"]]


def numbers(options):
    """[(option, bad value)] for options given as {option: list of bad values}."""
    return [[option, value] for option, values in options.items() for value in values]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every kind of bad file, and good outputs that must stay byte-identical."""
    w = tmp_path_factory.mktemp("world")
    lossless_video(w / "video.mkv", frames=10)
    (w / "text.txt").write_text("not a video\n")
    (w / "empty.mp4").write_bytes(b"")
    (w / "garbage.mp4").write_bytes(os.urandom(4096))
    (w / "text.npy").write_text("not numpy")
    (w / "empty.npy").write_bytes(b"")
    audio_only(w / "audio.m4a", seconds=0.2)
    empty_video(w / "noframes.mkv")
    (w / "folder").mkdir()
    (w / "folder" / "readme.txt").write_text("no videos here\n")
    os.symlink("loop_b.npy", w / "loop_a.npy")
    os.symlink("loop_a.npy", w / "loop_b.npy")
    os.symlink("nowhere.npy", w / "dangling.npy")
    rows = np.random.default_rng(0).standard_normal((12, DIM)).astype(np.float32)
    clips = {"model": "movinet_a0_base", "clips": [[i, i + 1.0] for i in range(12)]}
    save_features(w / "good.npy", rows, clips)
    save_features(w / "other_dim.npy", rows[:, :8], dict(clips))
    save_features(w / "nan.npy", np.where(np.arange(DIM) == 3, np.nan, rows), clips)
    save_features(w / "changed.npy", rows, clips)
    np.save(w / "changed.npy", rows + 1)  # the sidecar's features_sha256 no longer matches
    np.save(w / "onedim.npy", np.ones(5, np.float32))
    np.save(w / "zero.npy", np.zeros((0, DIM), np.float32))
    np.save(w / "strings.npy", np.array([["a", "b"]]))
    np.save(w / "complex.npy", rows.astype(np.complex64))
    np.save(w / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    save_features(w / "badside.npy", rows, clips)
    (w / "badside.json").write_text("{not json")
    np.save(w / "dirside.npy", rows)
    (w / "dirside.json").mkdir()  # a folder where the sidecar goes: not "no sidecar"
    np.save(w / "linkside.npy", rows)
    os.symlink("nowhere.json", w / "linkside.json")
    build_index([w / "good.npy"], w / "idx", progress=False)
    np.save(w / "plain.npy", rows)  # no sidecar: an index that names no model
    build_index([w / "plain.npy"], w / "idx_plain", progress=False)
    (w / "notindex").mkdir()
    (w / "notindex" / "manifest.json").write_text("{}")
    out = w / "out"
    out.mkdir()
    save_features(out / "exists.npy", rows, clips)
    (out / "exists.png").write_bytes(b"\x89PNG old picture")
    (out / "run").mkdir()
    (out / "side.json").mkdir()  # where side.npy's sidecar would go
    (out / "run" / "last.pth").write_bytes(b"not a checkpoint")
    for name, state in (("foreign", {"format": CHECKPOINT_FORMAT, "config": {"nonsense": 1},
                                      "labels": ["x"]}),
                        ("partial", {"format": CHECKPOINT_FORMAT}),
                        ("older", {key: None for key in CHECKPOINT_KEYS} |
                         {"format": CHECKPOINT_FORMAT, "config": {"model": "r2plus1d_18"}})):
        (out / name).mkdir()
        torch.save(state, out / name / "last.pth")
    data = w / "data"
    for label in ("jump", "run"):
        (data / label).mkdir(parents=True)
        for name in ("a", "b"):
            shutil.copy(w / "video.mkv", data / label / f"{name}.mkv")
    (w / "labels.txt").write_text("jump\nrun\n")
    (w / "dataset.csv").write_bytes(b"\x00\xff\xfe binary \x89PNG")
    (w / "nolabel.csv").write_text("video.mkv\n")
    os.symlink(w / "out" / "loop_x", w / "out" / "loop_x")
    return w


def snapshot(folder):
    """{relative path: sha256 or link target or 'dir'} of everything under `folder`."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            key = os.path.relpath(path, folder)
            if os.path.islink(path):
                found[key] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                found[key] = "dir"
            else:
                with open(path, "rb") as stream:
                    found[key] = hashlib.sha256(stream.read()).hexdigest()
    return found


def case_list():
    """(command, args with {w} for the world folder) for every bad input tried."""
    return {
        "extract": extract_cases(),
        "semcode": semcode_cases(),
        "index-build": index_build_cases(),
        "index-query": index_query_cases(),
        "index-serve": index_serve_cases(),
        "convert": convert_cases(),
        "classify": classify_cases(),
        "finetune": finetune_cases(),
        "evaluate": evaluate_cases(),
        "models": models_cases(),
    }


def extract_cases():
    ok = ["{w}/video.mkv", "{w}/out/new.npy", "--weights", "random", *MODEL]
    cases = [ok + option for option in numbers({
        "--frame-size": POS_INT, "--crop-size": POS_INT, "--clip-frames": POS_INT,
        "--step": POS_INT, "--batch-size": POS_INT, "--fps": POS_FLOAT, "--max-clips": POS_INT,
        "--duration": POS_FLOAT})]
    cases += [ok + extra for extra in UNKNOWN + [
        ["--pool-spatial", "median"], ["--tail", "wrap"], ["--backend", "tpu"],
        ["--model", "no_such_model"], ["--device", "quantum"], ["--device", "mps"],
        ["--device", "meta"], ["--threads", "100000"], ["--labels", "{w}/missing.txt"],
        ["--weights", "{w}/folder"],
        ["--input-option", "novalue"], ["--frame-size", "16", "--crop-size", "32"],
        ["--clip-frames", "1000000", "--batch-size", "65536"]]]
    for video in ("missing.mkv", "text.txt", "empty.mp4", "garbage.mp4", "audio.m4a", "folder",
                  "dangling.npy"):
        cases.append([f"{{w}}/{video}", "{w}/out/new.npy", "--weights", "random", *MODEL])
    for output in ("out/exists.npy", "out/new.txt", "missing/new.npy", "out", "loop_a.npy",
                   "out/loop_x", "out/side.npy"):
        cases.append(["{w}/video.mkv", f"{{w}}/{output}", "--weights", "random", *MODEL])
    cases += [["/proc/x.mkv", "{w}/out/new.npy", *MODEL], ["{w}/video.mkv", "/proc/new.npy"],
              ["{w}/video.mkv"], ["{w}/video.mkv", "{w}/out/a.npy", "{w}/out/b.npy"],
              ["{w}/folder", "--output-dir", "{w}/out/many", "--weights", "random"],
              ["{w}/video.mkv", "--output-dir", "/proc/many"],
              ["{w}/video.mkv", "--output-dir", "{w}/text.txt"],
              ["--from-list", "{w}/garbage.mp4", "--output-dir", "{w}/out/many"],
              ["--from-list", "{w}/missing.txt", "--output-dir", "{w}/out/many"],
              ["{w}/video.mkv", "--from-list", "{w}/text.txt"]]
    return cases


def semcode_cases():
    ok = ["{w}/good.npy", "{w}/out/new.png"]
    cases = [ok + option for option in numbers({
        "--color": ["-1", "361", "nan", "inf", "x", ""], "--width": POS_INT + ["5"],
        "--dpi": POS_INT + ["5"]})]
    cases += [ok + extra for extra in UNKNOWN + [["--view", "cube"], ["--scale", "log"]]]
    for features in ("missing.npy", "text.npy", "empty.npy", "onedim.npy", "zero.npy",
                     "strings.npy", "complex.npy", "objects.npy", "changed.npy", "badside.npy",
                     "dirside.npy", "linkside.npy", "folder", "loop_a.npy", "dangling.npy",
                     "video.mkv"):
        cases.append([f"{{w}}/{features}", "{w}/out/new.png"])
    for picture in ("out/new.gif", "out/new", "missing/new.png", "out", "loop_a.npy",
                    "out/loop_x", "out/exists.png/x.png"):
        cases.append(["{w}/good.npy", f"{{w}}/{picture}"])
    cases += [["{w}/good.npy", "/proc/new.png"], ["{w}/good.npy"], []]
    return cases


def index_build_cases():
    ok = ["{w}/good.npy", "{w}/out/newidx", "--quiet"]
    cases = [ok + ["--target-recall", value] for value in UNIT + ["-inf", ""]]
    cases += [ok + extra for extra in UNKNOWN + [
        ["--metric", "hamming"], ["--index-key", "Nonsense42"], ["--index-key", "IVF99999,Flat"],
        ["--index-key", ""], ["--index-key", "PQ7"], ["--index-key", "IDMap,Flat"],
        ["--index-key", "IDMap2,IVF2,Flat"]]]
    for features in ("missing.npy", "text.npy", "empty.npy", "onedim.npy", "zero.npy",
                     "strings.npy", "complex.npy", "objects.npy", "changed.npy", "badside.npy",
                     "folder", "loop_a.npy", "dangling.npy", "nan.npy", "video.mkv", "notindex",
                     "dirside.npy", "linkside.npy"):
        cases.append([f"{{w}}/{features}", "{w}/out/newidx", "--quiet"])
    cases += [["{w}/good.npy", "{w}/other_dim.npy", "{w}/out/newidx", "--quiet"],
              ["{w}/good.npy", "{w}/idx", "--quiet"],
              ["{w}/good.npy", "{w}/out/exists.npy", "--quiet"],
              ["{w}/good.npy", "/proc/newidx", "--quiet"],
              ["{w}/good.npy", "{w}/missing/newidx", "--quiet"],
              ["{w}/good.npy", "{w}/loop_a.npy", "--quiet"],
              ["{w}/good.npy", "{w}/out/loop_x", "--quiet"],
              ["{w}/good.npy"], [],
              ["{w}/other_dim.npy", "{w}/idx", "--append", "--quiet"],
              ["{w}/good.npy", "{w}/notindex", "--append", "--quiet"],
              ["{w}/good.npy", "{w}/out/newidx", "--append", "--quiet"],
              ["{w}/good.npy", "{w}/idx", "--append", "--metric", "cosine"],
              ["{w}/good.npy", "{w}/idx", "--append", "--index-key", "Flat"],
              ["{w}/nan.npy", "{w}/idx", "--append", "--quiet"]]
    return cases


def index_query_cases():
    ok = ["{w}/good.npy", "--url", "{url}"]
    cases = [ok + option for option in numbers({
        "--k": POS_INT, "--nprobe": POS_INT, "--timeout": POS_FLOAT,
        "--port": ["-1", "65536", "x", ""]})]
    cases += [ok + extra for extra in UNKNOWN + [["--format", "xml"]]]
    cases += [["{w}/good.npy", value, "--url", "{url}"] for value in ("-1", "12", "x", "1.5")]
    for features in ("missing.npy", "text.npy", "empty.npy", "onedim.npy", "zero.npy",
                     "strings.npy", "complex.npy", "objects.npy", "changed.npy", "badside.npy",
                     "other_dim.npy", "loop_a.npy", "dangling.npy"):
        cases.append([f"{{w}}/{features}", "--url", "{url}"])
    cases += [["{w}/good.npy", "--url", "http://127.0.0.1:9"],
              ["{w}/good.npy", "--url", "not a url"], ["{w}/good.npy", "--url", "ftp://x"],
              ["{w}/missing.mkv", "--url", "{url}", *MODEL],
              ["{w}/video.mkv", "--url", "{url}", "--model", "r2plus1d_18_16_kinetics"], []]
    return cases


def index_serve_cases():
    ok = ["{w}/idx"]
    cases = [ok + option for option in numbers({
        "--port": ["-1", "65536", "x", ""], "--threads": ["0", "-1", "257", "x"],
        "--omp-threads": ["0", "-1", "x"], "--batch-window-ms": ["nan", "-1"],
        "--reload-interval": ["nan", "inf"], "--idle-timeout": ["nan", "0"],
        "--max-upload-mb": ["nan", "inf"], "--max-upload-seconds": ["nan"],
        "--thumb-cache-mb": ["nan", "inf"], "--token": ["", " "]})]
    cases += [ok + extra for extra in UNKNOWN]
    cases += [["{w}/idx_plain", "--model", "no_such_model"],
              ["{w}/idx", "--model", "movinet_a0_base", "--weights", "{w}/missing.pth"]]
    cases += [[f"{{w}}/{name}"] for name in ("missing", "notindex", "good.npy", "folder",
                                            "loop_a.npy", "out")] + [[]]
    return cases


def convert_cases():
    ok = ["{w}/garbage.mp4", "{w}/out/conv", "--model", "r2plus1d_34_8_ig65m"]
    cases = [["{w}/garbage.mp4", "{w}/out/conv"] + option for option in numbers({
        "--frames": POS_INT, "--classes": POS_INT})]
    cases += [ok + extra for extra in UNKNOWN]
    for source in ("missing.pkl", "text.txt", "empty.mp4", "garbage.mp4", "good.npy",
                   "objects.npy", "folder", "loop_a.npy", "dangling.npy", "video.mkv",
                   "notindex", "data", "labels.txt", "dataset.csv", "nolabel.csv", "badside.json",
                   "idx/manifest.json", "idx/index.faiss", "idx/metadata.sqlite"):
        cases.append([f"{{w}}/{source}", "{w}/out/conv", "--model", "r2plus1d_34_8_ig65m"])
    cases += [["{w}/garbage.mp4", "{w}/out/conv", "--model", "no_such_model"],
              ["{w}/garbage.mp4", "{w}/out/conv", "--model", "movinet_a0_base"],
              ["{w}/garbage.mp4", "{w}/out/conv"],
              ["{w}/garbage.mp4", "{w}/out/conv", "--frames", "9", "--classes", "1"],
              ["{w}/garbage.mp4", "{w}/out/conv", "--frames", "8"],
              ["{w}/garbage.mp4", "/proc/conv", "--model", "r2plus1d_34_8_ig65m"],
              ["{w}/garbage.mp4", "{w}/missing/conv", "--model", "r2plus1d_34_8_ig65m"],
              ["{w}/garbage.mp4", "{w}/out", "--model", "r2plus1d_34_8_ig65m"],
              ["{w}/garbage.mp4", "{w}/loop_a.npy", "--model", "r2plus1d_34_8_ig65m"],
              ["{w}/garbage.mp4", "{w}/out/conv", "--model", "r2plus1d_34_8_ig65m",
               "--classes", "400"],
              ["{w}/garbage.mp4"], []]
    return cases


def classify_cases():
    ok = ["{w}/video.mkv", "--weights", "random", *MODEL]
    cases = [ok + option for option in numbers({
        "--frame-size": POS_INT, "--crop-size": POS_INT, "--clip-frames": POS_INT,
        "--top": POS_INT, "--every": POS_INT, "--max-clips": POS_INT, "--duration": POS_FLOAT,
        "--fps": POS_FLOAT, "--threads": ["0", "-1", "x", "100000"]})]
    cases += [ok + extra for extra in UNKNOWN + [
        ["--format", "xml"], ["--backend", "tpu"], ["--model", "no_such_model"],
        ["--labels", "{w}/missing.txt"], ["--labels", "{w}/folder"],
        ["--input-option", "novalue"]]]
    for video in ("missing.mkv", "text.txt", "empty.mp4", "garbage.mp4", "audio.m4a", "folder",
                  "dangling.npy"):
        cases.append([f"{{w}}/{video}", "--weights", "random", *MODEL])
    cases += [[]]
    return cases


def finetune_cases():
    ok = ["{w}/data", "{w}/out/ft", "--weights", "random", *MODEL]
    cases = [ok + option for option in numbers({
        "--epochs": POS_INT, "--batch-size": POS_INT, "--lr": POS_FLOAT,
        "--weight-decay": ["-1", "nan", "inf", "x"], "--val-split": ["0", "1", "nan", "x"],
        "--freeze": NONNEG_INT, "--clip-frames": POS_INT, "--crop-size": POS_INT,
        "--seed": ["-1", "x", "99999999999999999999"], "--num-workers": ["-1", "x"]})]
    cases += [ok + extra for extra in UNKNOWN + [
        ["--optimizer", "adam"], ["--model", "no_such_model"], ["--chunk-frames", "4"],
        ["--clip-frames", "1000000"], ["--crop-size", "64", "--frame-size", "32"]]]
    for dataset in ("missing", "video.mkv", "dataset.csv", "garbage.mp4", "empty.mp4",
                    "nolabel.csv", "folder", "loop_a.npy"):
        cases.append([f"{{w}}/{dataset}", "{w}/out/ft", "--weights", "random", *MODEL])
    cases += [["{w}/data", "/proc/ft", "--weights", "random"],
              ["{w}/data", "{w}/text.txt", "--weights", "random"],
              ["{w}/data", "{w}/out/run", "--weights", "random"],
              ["{w}/data", "{w}/out/run", "--resume", "--weights", "random", *MODEL],
              ["{w}/data", "{w}/out/ft", "--resume", "--weights", "random"],
              *[["{w}/data", f"{{w}}/out/{name}", "--resume", "--weights", "random", *MODEL,
                 "--crop-size", "32", "--frame-size", "32", "--clip-frames", "4"]
                for name in ("foreign", "partial", "older")],
              ["{w}/data", "{w}/out/ft", "--val", "{w}/missing"], ["{w}/data"], []]
    return cases


def evaluate_cases():
    ok = ["{w}/data", "--weights", "random", "--labels", "{w}/labels.txt", *MODEL]
    cases = [ok + option for option in numbers({
        "--num-clips": POS_INT, "--batch-size": POS_INT, "--clip-frames": POS_INT,
        "--frame-size": POS_INT, "--crop-size": POS_INT, "--num-workers": ["-1", "x"]})]
    cases += [ok + extra for extra in UNKNOWN + [
        ["--mode", "frame"], ["--model", "no_such_model"], ["--out", "/proc/report"],
        ["--out", "{w}/text.txt"], ["--out", "{w}/out/exists.png/x"],
        ["--num-clips", "1000000000"], ["--labels", "{w}/missing.txt"]]]
    for dataset in ("missing", "video.mkv", "dataset.csv", "garbage.mp4", "empty.mp4",
                    "nolabel.csv", "folder", "loop_a.npy"):
        cases.append([f"{{w}}/{dataset}", "--weights", "random", "--labels", "{w}/labels.txt",
                      *MODEL])
    cases += [["{w}/data", "--weights", "random", *MODEL], []]
    return cases


def models_cases():
    cases = [["--format", value] for value in ("xml", "", "JSON", "csv", "table2", "1", "-1",
                                               "nan", "markdown,json", " json")]
    cases += [[option] for option in ("--no-such-option", "--format", "-z", "--weights",
                                      "--model", "--json", "-f", "--formats", "--verbose",
                                      "--quiet")]
    cases += [[argument] for argument in ("extra", "r2plus1d_18", "0", "-1", "nan", "{w}",
                                          "{w}/good.npy", "--=x", "'", "list")]
    cases += [["--format", "json", argument] for argument in ("extra", "1", "{w}", "x y", "",
                                                              "..", "/", "--=", "-", "%s")]
    return cases


# Bad inputs whose handling another branch of issue 13 owns (item 3, weights files: an empty
# file given as weights still raises IndexError); they run, and may fail, until it lands.
CASES = [pytest.param(command, number, args, id=f"{command}-{number}")
         for command, cases in case_list().items() for number, args in enumerate(cases)]


@pytest.fixture(scope="module")
def url(world):
    process, address = start_server([sys.executable, "-m", "ig65m", "index-serve",
                                     str(world / "idx"), "--port", "0"])
    yield address
    stop(process)


@pytest.fixture
def no_exec(monkeypatch):
    """index-serve hands over with os.execv: a case that got that far must not replace pytest."""
    def refuse(*args):
        raise AssertionError(f"index-serve accepted a bad start-up: {args}")
    monkeypatch.setattr(os, "execv", refuse)


@pytest.mark.parametrize("command, number, args", CASES)
def test_bad_input_is_one_error_line_and_changes_nothing(world, request, no_exec, command,
                                                         number, args):
    address = request.getfixturevalue("url") if command == "index-query" else ""
    argv = [command] + [arg.format(w=world, url=address) for arg in args]
    before = snapshot(world)
    result = CliRunner().invoke(main, argv)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (argv, result.exit_code, result.output, result.exception)
    assert not isinstance(result.exception, AssertionError), result.exception
    assert "Traceback" not in result.output
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], (argv, lines)
    assert lines[-1].startswith("error: "), (argv, lines)
    assert snapshot(world) == before, argv


def test_every_command_gets_at_least_40_bad_inputs():
    counts = {command: len(cases) for command, cases in case_list().items()}
    assert all(count >= 40 for command, count in counts.items() if command != "index-serve"), counts


@pytest.mark.parametrize("bad", ["features", "source"])
def test_a_path_that_is_not_utf8_is_one_error_line_and_no_index(tmp_path, bad):
    """The index's metadata keeps paths as UTF-8 text: a file or video named with other bytes (as
    extract happily writes them) is refused up front, not with a UnicodeEncodeError mid-build."""
    name = os.fsdecode(b"caf\xe9") if bad == "features" else "cafe"
    rows = np.ones((3, DIM), np.float32)
    source = os.fsdecode(b"/videos/caf\xe9.mp4") if bad == "source" else "/videos/cafe.mp4"
    save_features(tmp_path / f"{name}.npy", rows, {"source": source,
                                                   "clips": [[i, i + 1.0] for i in range(3)]})
    before = snapshot(tmp_path)
    result = CliRunner().invoke(main, ["index-build", str(tmp_path / f"{name}.npy"),
                                       str(tmp_path / "idx"), "--quiet"])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "UTF-8" in lines[0], lines
    assert snapshot(tmp_path) == before


def test_float64_features_beyond_float32_are_one_line_in_a_real_process(world, url, tmp_path):
    """numpy's RuntimeWarning (overflow in cast), with its source line, came before the error on
    stderr; in-process runs do not show it (pytest records warnings), so real processes here."""
    import subprocess

    rows = np.ones((3, DIM))
    rows[1, 2] = 1e300  # finite in float64, infinite as float32
    np.save(tmp_path / "big.npy", rows)
    env = dict(os.environ, PYTHONPATH=str(os.path.dirname(os.path.dirname(__file__))),
               PYTHONWARNINGS="default")
    for argv in (["index-build", str(tmp_path / "big.npy"), str(tmp_path / "idx"), "--quiet"],
                 ["index-query", str(tmp_path / "big.npy"), "1", "--url", url]):
        done = subprocess.run([sys.executable, "-m", "ig65m", *argv], capture_output=True,
                              text=True, timeout=120, env=env)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, (argv, done.stderr)
        assert "clip 1" in lines[0] or "query vector 0" in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.npy"]


@pytest.mark.parametrize("argv", [
    ["extract", "{w}/video.mkv", "{t}/f.npy", *MODEL],  # the pretrained download's folder
    ["classify", "{w}/video.mkv", "--weights", "random:0", *MODEL, "--frame-size", "32",
     "--crop-size", "32", "--backend", "onnxruntime"],  # the exported model's folder
])
def test_a_cache_folder_that_cannot_be_made_is_one_error_line(world, tmp_path, monkeypatch,
                                                              argv):
    """$IG65M_HOME on a read-only filesystem (or under a file, as here): an OSError traceback
    from mkdir before; now one line that names the variable."""
    (tmp_path / "file").write_text("not a folder\n")
    monkeypatch.setenv("IG65M_HOME", str(tmp_path / "file" / "home"))
    before = snapshot(world), snapshot(tmp_path)
    result = CliRunner().invoke(main, [arg.format(w=world, t=tmp_path) for arg in argv])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.output, result.exception)
    assert lines[-1].startswith("error: cannot create the cache folder ") and \
        "$IG65M_HOME" in lines[-1], lines
    assert (snapshot(world), snapshot(tmp_path)) == before
