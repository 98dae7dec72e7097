"""Sharded index builds: same recall as a one-shot build, loads through the server's path, appends."""

import json

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from ig65m.cli import main
from ig65m.index.build import build_index
from ig65m.index.search import Searcher, load_index
from ig65m.index.server import create_app
from ig65m.index.shards import ShardOptions, shard_groups
from ig65m.index.sources import open_feature_files

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
