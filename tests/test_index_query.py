"""index-query by video, end to end: extract -> index-build -> index-serve -> index-query VIDEO."""

import json
import sys

from click.testing import CliRunner

from ig65m.cli import main
from tests.test_extract import MODEL
from tests.test_index_server import start_server, stop
from tests.videos import lossless_video

SMALL = ["--model", MODEL, "--frame-size", "32", "--crop-size", "32"]


def invoke(*args):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def test_query_by_video_finds_its_own_clips(tmp_path, weights):
    lossless_video(tmp_path / "a.mkv", frames=24)
    lossless_video(tmp_path / "b.mkv", frames=16, width=48, height=64)
    for name in ("a", "b"):
        invoke("extract", tmp_path / f"{name}.mkv", tmp_path / f"{name}.npy", "--weights", weights,
               *SMALL)
    invoke("index-build", tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "idx", "--quiet")
    process, url = start_server([sys.executable, "-m", "ig65m", "index-serve",
                                 str(tmp_path / "idx"), "--port", "0"])
    try:
        result = invoke("index-query", tmp_path / "a.mkv", "--url", url, "--k", 2,
                        "--weights", weights, *SMALL)
        answers = json.loads(result.stdout)
        assert [answer["query"]["clip"] for answer in answers] == [0, 1, 2]
        for number, answer in enumerate(answers):
            best = answer["results"][0]
            assert (best["id"], best["path"], best["clip"]) == (number, str(tmp_path / "a.mkv"), number)
            assert best["distance"] < 1e-3 * max(answer["results"][1]["distance"], 1e-3)
        other = CliRunner().invoke(main, ["index-query", str(tmp_path / "a.mkv"), "--url", url,
                                          "--weights", str(weights), "--model", "r2plus1d_18",
                                          "--frame-size", "32", "--crop-size", "32"])
        assert other.exit_code == 2 and "model r2plus1d_34_8_ig65m" in other.stderr
        sidecar = json.loads((tmp_path / "a.json").read_text())
        for key, value, said in (("frame_size", 48, "frame_size 48, the index with frame_size 32: "
                                                    "extract the query with --frame-size 32"),
                                 ("weights_sha256", "0" * 64, "the index with weights sha256 ")):
            (tmp_path / "q.npy").write_bytes((tmp_path / "a.npy").read_bytes())
            (tmp_path / "q.json").write_text(json.dumps(dict(sidecar, **{key: value})))
            other = CliRunner().invoke(main, ["index-query", str(tmp_path / "q.npy"), "--url", url])
            assert other.exit_code == 2 and said in other.stderr, other.stderr
    finally:
        stop(process)
