"""Sharded index builds: same recall as a one-shot build, loads through the server's path, appends."""

import json

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from ig65m.cli import main
from ig65m.index.build import build_index
from ig65m.index.manifest import read_manifest
from ig65m.index.media import parse_prefixes
from ig65m.index.search import Searcher, load_index
from ig65m.index.server import create_app
from ig65m.index.shards import ShardOptions, shard_groups
from ig65m.index.sources import open_feature_files
from tests.test_faults import hidden, runs_behind_the_lock
from tests.test_index_build import clustered as small_clustered, write

DIM, FILES, ROWS = 64, 8, 25_600  # 204,800 vectors in 8 files, one file per shard
KEY = "IVF512,Flat"


def clustered(rng, rows, centres):
    """Vectors around random centres, as real clip features are (uniform noise has no structure)."""
    picks = rng.integers(len(centres), size=rows)
    return (centres[picks] + 0.3 * rng.standard_normal((rows, DIM))).astype(np.float32)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """8 feature folders of 25,600 64-d vectors, and 300 held-out queries."""
    root = tmp_path_factory.mktemp("features")
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, DIM)).astype(np.float32)
    folders = []
    for number in range(FILES):
        folder = root / f"part{number}"
        folder.mkdir()
        np.save(folder / "features.npy", clustered(rng, ROWS, centres))
        folders.append(folder)
    return folders, clustered(rng, 300, centres)


def small_vectors(rows, seed):
    """`rows` 8-d clustered vectors: enough for IVF16 lists."""
    return small_clustered(rows, 8, seed)


def recall_at_10(index_dir, folders, queries, nprobe):
    """Recall@10 of the index as the server loads it, against brute force over every vector."""
    vectors = np.concatenate([np.load(folder / "features.npy") for folder in folders])
    _, truth = faiss.knn(queries, vectors, 10)
    index = load_index(index_dir / "index.faiss")
    _, found = index.search(queries, 10, params=faiss.SearchParametersIVF(nprobe=nprobe))
    return np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])


def test_sharded_build_has_the_recall_of_a_one_shot_build(collection, tmp_path):
    folders, queries = collection
    one = build_index(folders, tmp_path / "one", index_key=KEY, progress=False)
    sharded = build_index(folders, tmp_path / "sharded", index_key=KEY, progress=False,
                          sharding=ShardOptions(shards=8, workers=2))
    assert sharded["count"] == one["count"] == FILES * ROWS and sharded["shards"] == 8
    assert (tmp_path / "sharded" / "index.ivfdata").is_file()
    nprobe = one["search_default"]
    recall_one = recall_at_10(tmp_path / "one", folders, queries, nprobe)
    recall_sharded = recall_at_10(tmp_path / "sharded", folders, queries, nprobe)
    assert recall_one > 0.8
    assert abs(recall_sharded - recall_one) <= 0.01, (recall_sharded, recall_one)
    # the server's loading path (memory-mapped) serves it, ids and metadata as a one-shot build
    searcher = Searcher(tmp_path / "sharded")
    vector = np.load(folders[5] / "features.npy", mmap_mode="r")[17]
    [hits] = searcher.search(vector, 3)
    assert hits[0]["id"] == 5 * ROWS + 17 and hits[0]["clip"] == 17
    assert hits[0]["path"].endswith("part5/features.npy")
    response = create_app(searcher=searcher).test_client().post(
        "/search", json={"vectors": [vector.tolist()], "k": 1})
    assert response.status_code == 200 and response.get_json()["results"][0][0]["id"] == 5 * ROWS + 17


def test_append_a_new_shard_folder_through_the_cli(collection, tmp_path):
    folders, _ = collection
    index_dir = tmp_path / "index"
    result = CliRunner().invoke(main, ["index-build", *map(str, folders[:6]), str(index_dir),
                                       "--index-key", "IVF128,Flat", "--shards", "3",
                                       "--workers", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["count"] == 6 * ROWS
    result = CliRunner().invoke(main, ["index-build", str(folders[6]), str(index_dir), "--append",
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["count"] == 7 * ROWS and manifest["shards"] == 4 and manifest["files"] == 7
    searcher = Searcher(index_dir)
    vector = np.load(folders[6] / "features.npy", mmap_mode="r")[3]
    assert searcher.search(vector, 1)[0][0]["id"] == 6 * ROWS + 3
    again = CliRunner().invoke(main, ["index-build", str(folders[6]), str(index_dir), "--append",
                                      "--quiet"])
    assert again.exit_code == 0 and json.loads(again.stdout)["count"] == 7 * ROWS


def test_shards_cut_between_files_by_rows(collection):
    folders, _ = collection
    files = open_feature_files([folder / "features.npy" for folder in folders])
    groups = shard_groups(files, 3)
    assert [len(group) for group in groups] == [3, 3, 2]
    assert [first for group in groups for _, first in group] == [n * ROWS for n in range(FILES)]


def test_a_sharded_build_needs_ivf_lists(collection, tmp_path):
    folders, _ = collection
    result = CliRunner().invoke(main, ["index-build", str(folders[0]), str(tmp_path / "i"),
                                       "--index-key", "HNSW16", "--shards", "2"])
    assert result.exit_code == 2 and "IVF" in result.stderr and not (tmp_path / "i").exists()


def test_a_sharded_build_records_media_roots_and_honours_path_prefixes(tmp_path, monkeypatch):
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"video")
    monkeypatch.chdir(tmp_path)
    relative = write(tmp_path, "a", small_vectors(400, 1), source="videos/a.mp4")
    moved = write(tmp_path, "b", small_vectors(400, 2), source="/mnt/old/videos/b.mp4")
    manifest = build_index([relative, moved], tmp_path / "idx", index_key="IVF16,Flat",
                           progress=False, path_prefixes=parse_prefixes(["/mnt/old=/data"]),
                           sharding=ShardOptions(shards=2, workers=1))
    assert manifest["shards"] == 2
    paths = {video["path"] for video in Searcher(tmp_path / "idx").videos}
    assert paths == {str(tmp_path / "videos" / "a.mp4"), "/data/videos/b.mp4"}
    assert manifest["media_roots"] == sorted(["/data/videos", str(tmp_path / "videos")])
    assert read_manifest(tmp_path / "idx")["media_roots"] == manifest["media_roots"]
    # an append keeps the roots before it and adds the new file's
    extra = write(tmp_path, "c", small_vectors(100, 3), source="/mnt/old/more/c.mp4")
    appended = build_index([extra], tmp_path / "idx", append=True, progress=False,
                           path_prefixes=parse_prefixes(["/mnt/old=/data"]))
    assert appended["shards"] == 3 and appended["count"] == 900
    assert appended["media_roots"] == sorted(["/data/more", "/data/videos",
                                              str(tmp_path / "videos")])


SHARDED_APPEND = """
    from ig65m.index.build import build_index
    from ig65m.index.shards import ShardOptions
    build_index([{feature!r}], {index!r}, append=True, progress=False,
                sharding=ShardOptions(shards=1, workers=1))
"""


def test_concurrent_sharded_appends_wait_for_each_other_and_both_land(tmp_path, capfd):
    names = {"a": 600, "b": 200, "c": 100}
    paths = {name: write(tmp_path, name, small_vectors(rows, rows)) for name, rows in names.items()}
    index_dir = tmp_path / "idx"
    build_index([paths["a"]], index_dir, index_key="IVF16,Flat", progress=False,
                sharding=ShardOptions(shards=1, workers=1))
    codes = [SHARDED_APPEND.format(feature=str(paths[name]), index=str(index_dir))
             for name in ("b", "c")]
    returncodes, errors = runs_behind_the_lock(index_dir, codes)
    assert returncodes == [0, 0], errors
    assert all("waiting for another index-build" in text for text in errors)
    assert capfd.readouterr().out == ""  # stdout carries only results, also Faiss's C++ side
    manifest = read_manifest(index_dir)
    assert manifest["count"] == 900 and manifest["files"] == 3 and manifest["shards"] == 3
    assert hidden(index_dir.parent) == []
    searcher = Searcher(index_dir)
    for name, rows in names.items():  # every file's last row is found under its own path
        vector = np.load(paths[name], mmap_mode="r")[rows - 1]
        [[hit]] = searcher.search(vector, 1)
        assert hit["path"] == f"/videos/{name}.mp4" and hit["clip"] == rows - 1  # write()'s source


def test_append_in_shards_to_a_one_shot_index_is_refused(tmp_path):
    path = write(tmp_path, "a", small_vectors(100, 1))
    build_index([path], tmp_path / "idx", progress=False)
    result = CliRunner().invoke(main, ["index-build", str(path), str(tmp_path / "idx"), "--append",
                                       "--shards", "2"])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert "one piece" in result.stderr and len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("key", ["IVF16,Flat", "PCA16,IVF16,Flat", "IVF16,SQ8"])
def test_shards_find_what_a_one_shot_build_finds(tmp_path, key):
    """Workers place each row in its list themselves (lists allocated at their final size): the
    lists must equal those of Faiss's own add, also behind a transform and with encoded codes.
    Calibration, which searches the shard files one at a time, finds what the whole index finds."""
    paths = [write(tmp_path, name, small_clustered(700, 32, seed)) for seed, name in enumerate("abc")]
    one = build_index(paths, tmp_path / "one", index_key=key, progress=False)
    sharded = build_index(paths, tmp_path / "sharded", index_key=key, progress=False,
                          sharding=ShardOptions(shards=3, workers=2))
    assert one["count"] == sharded["count"] == 2100
    assert sharded["search_default"] == one["search_default"]
    assert sharded["calibrated_recall"] == pytest.approx(one["calibrated_recall"])
    queries = small_clustered(50, 32, 9)
    found = []
    for name in ("one", "sharded"):
        index = load_index(tmp_path / name / "index.faiss")
        found.append(index.search(queries, 10, params=faiss.SearchParametersIVF(nprobe=4)))
    np.testing.assert_array_equal(found[0][1], found[1][1])
    np.testing.assert_allclose(found[0][0], found[1][0], rtol=1e-5)
