"""index-build: real Faiss indexes compared with brute-force numpy neighbours, metadata, errors."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ig65m.cli import main
from ig65m.errors import Ig65mError
from ig65m.fileio import save_features
from ig65m.index import Searcher, build_index, choose_index_key
from ig65m.index.manifest import INDEX_FILE, MANIFEST_FILE, METADATA_FILE


def clustered(count, dim, seed, clusters=20):
    """Vectors around `clusters` random centres: structure like real clip features."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 3
    return (centres[rng.integers(0, clusters, count)] + rng.normal(size=(count, dim))).astype("f4")


def write(folder, name, vectors, *, source=None, model="m", sidecar=True, **settings):
    path = folder / f"{name}.npy"
    meta = {"source": source or f"/videos/{name}.mp4", "model": model,
            "clips": [[0.5 * i, 0.5 * i + 0.5] for i in range(len(vectors))], **settings}
    save_features(path, vectors, meta)
    if not sidecar:
        path.with_suffix(".json").unlink()
    return path


def brute_force(database, queries, k, metric="l2"):
    if metric == "cosine":
        database = database / np.linalg.norm(database, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        distances = 1 - queries @ database.T
    else:
        distances = ((queries[:, None, :] - database[None]) ** 2).sum(-1) ** 0.5
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, 1)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_flat_index_is_exact(tmp_path, metric):
    parts = [clustered(300, 16, seed) for seed in (1, 2)]
    for number, part in enumerate(parts):
        write(tmp_path, f"f{number}", part)
    manifest = build_index([tmp_path], tmp_path / "idx", metric=metric, progress=False)
    assert manifest["index_key"] == "Flat" and manifest["count"] == 600 and manifest["files"] == 2
    database = np.concatenate(parts)
    queries = clustered(20, 16, seed=9)
    want_ids, want_distances = brute_force(database.astype("f8"), queries.astype("f8"), 5, metric)
    results = Searcher(tmp_path / "idx").search(queries, 5)
    got_ids = np.array([[hit["id"] for hit in row] for row in results])
    got_distances = np.array([[hit["distance"] for hit in row] for row in results])
    np.testing.assert_allclose(got_distances, want_distances, rtol=1e-4, atol=1e-4)
    assert (got_ids == want_ids).mean() > 0.99  # equal up to ties of float32 rounding


def test_ivf_keeps_every_clip_and_reaches_recall(tmp_path):
    parts = [clustered(1500, 32, seed) for seed in (3, 4)]
    for number, part in enumerate(parts):
        write(tmp_path, f"f{number}", part)
    manifest = build_index([tmp_path], tmp_path / "idx", index_key="IVF32,Flat", progress=False)
    assert manifest["count"] == 3000  # training clips included
    assert manifest["search_parameter"] == "nprobe" and 1 <= manifest["search_default"] <= 32
    searcher = Searcher(tmp_path / "idx")
    database = np.concatenate(parts)
    first = [row[0]["id"] for row in searcher.search(database, 1)]
    assert first == list(range(3000))  # every clip present, each finds itself
    rng = np.random.default_rng(11)  # held-out queries near the collection
    queries = (database[rng.integers(0, 3000, 50)] + rng.normal(size=(50, 32))).astype("f4")
    want, _ = brute_force(database, queries, 10)
    got = [[hit["id"] for hit in row] for row in searcher.search(queries, 10)]
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
    assert recall >= 0.9
    exhaustive = [[hit["id"] for hit in row] for row in searcher.search(queries, 10, breadth=32)]
    assert np.mean([len(set(g) & set(w)) / 10 for g, w in zip(exhaustive, want)]) > 0.99


def test_hnsw_key_and_single_vector(tmp_path):
    write(tmp_path, "many", clustered(500, 8, 5))
    manifest = build_index([tmp_path / "many.npy"], tmp_path / "hnsw", index_key="HNSW16",
                           progress=False)
    assert manifest["search_parameter"] == "efSearch"
    searcher = Searcher(tmp_path / "hnsw")
    assert searcher.search(np.load(tmp_path / "many.npy")[7], 1)[0][0]["id"] == 7
    write(tmp_path, "one", clustered(1, 8, 6))
    manifest = build_index([tmp_path / "one.npy"], tmp_path / "single", progress=False)
    assert manifest["count"] == 1 and manifest["index_key"] == "Flat"
    assert [hit["id"] for hit in Searcher(tmp_path / "single").search(np.zeros(8), 5)[0]] == [0]


def test_metadata_from_sidecars_or_file_names(tmp_path):
    write(tmp_path, "a", clustered(4, 8, 1), source="/videos/cat.mp4")
    write(tmp_path, "b", clustered(3, 8, 2), sidecar=False)
    build_index([tmp_path / "a.npy", tmp_path / "b.npy"], tmp_path / "idx", progress=False)
    searcher = Searcher(tmp_path / "idx")
    assert searcher.clip(2) == {"id": 2, "path": "/videos/cat.mp4", "clip": 2, "start": 1.0,
                                "end": 1.5, "features": str((tmp_path / "a.npy").resolve())}
    no_sidecar = searcher.clip(5)
    assert no_sidecar["path"] == str((tmp_path / "b.npy").resolve()) and no_sidecar["clip"] == 1
    assert no_sidecar["start"] is None and searcher.clip(7) is None
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == sorted(
        [INDEX_FILE, METADATA_FILE, MANIFEST_FILE])


def test_search_results_carry_each_hits_metadata_and_leave_out_faiss_padding(tmp_path):
    """Searcher.results (ClipTable.hits) gives every hit its clip's metadata (as `clip` gives it)
    and its distance, rows of several queries apart, and drops the -1 ids Faiss pads rows with
    when k is more than the clips; times that were never recorded read None."""
    a, b = clustered(4, 8, 1), clustered(3, 8, 2)
    write(tmp_path, "a", a, source="/videos/cat.mp4")
    write(tmp_path, "b", b, sidecar=False)
    build_index([tmp_path / "a.npy", tmp_path / "b.npy"], tmp_path / "idx", progress=False)
    searcher = Searcher(tmp_path / "idx")
    distances, ids = searcher.search_arrays(np.stack([a[1], b[2]]), 10)
    assert (ids == -1).sum() == 6  # 7 clips, k = 10
    rows = searcher.results(distances, ids)
    assert [len(row) for row in rows] == [7, 7]
    assert rows[0][0]["id"] == 1 and rows[1][0]["id"] == 6
    for row, row_distances in zip(rows, distances):
        for hit, distance in zip(row, row_distances):
            assert hit == dict(searcher.clip(hit["id"]), distance=float(distance))
    assert rows[1][0]["start"] is None and rows[0][0]["start"] == 0.5


def test_append_adds_new_files_and_skips_known_ones(tmp_path):
    first, second = clustered(200, 16, 1), clustered(150, 16, 2)
    write(tmp_path, "first", first)
    build_index([tmp_path / "first.npy"], tmp_path / "idx", progress=False)
    write(tmp_path, "second", second)
    manifest = build_index([tmp_path], tmp_path / "idx", append=True, progress=False)
    assert manifest["count"] == 350 and manifest["files"] == 2
    searcher = Searcher(tmp_path / "idx")
    assert searcher.search(second[10], 1)[0][0]["id"] == 210
    assert searcher.clip(210)["path"] == "/videos/second.mp4" and searcher.clip(210)["clip"] == 10
    again = build_index([tmp_path], tmp_path / "idx", append=True, progress=False)
    assert again["count"] == 350 and leftovers(tmp_path) == []
    (tmp_path / "other").mkdir()
    write(tmp_path / "other", "x", clustered(5, 16, 3), model="another")
    with pytest.raises(Ig65mError, match="model"):
        build_index([tmp_path / "other"], tmp_path / "idx", append=True, progress=False)
    assert Searcher(tmp_path / "idx").count == 350


def test_features_extracted_with_other_settings_are_refused_as_another_model_is(tmp_path):
    """Weights, clip frames, fps, frame and crop size and pooling change what features are:
    files that differ in one cannot share an index, nor be appended to one, nor query it."""
    write(tmp_path, "big", clustered(40, 16, 1), frame_size=112, weights_sha256="ab" * 32)
    write(tmp_path, "step", clustered(30, 16, 2), frame_size=112, weights_sha256="ab" * 32, step=4)
    write(tmp_path, "small", clustered(30, 16, 3), frame_size=64, weights_sha256="ab" * 32)
    write(tmp_path, "other", clustered(30, 16, 4), frame_size=112, weights_sha256="cd" * 32)
    for name, said in (("small", "extracted with frame_size 64, .*big.npy with frame_size 112"),
                       ("other", "extracted with weights sha256 cdcdcdcdcdcd..., .*big.npy with "
                                 "weights sha256 abababababab...")):
        with pytest.raises(Ig65mError, match=said):
            build_index([tmp_path / "big.npy", tmp_path / f"{name}.npy"], tmp_path / "idx",
                        progress=False)
        assert not (tmp_path / "idx").exists()
    build_index([tmp_path / "big.npy", tmp_path / "step.npy"], tmp_path / "idx", progress=False)
    with pytest.raises(Ig65mError, match="small.npy was extracted with frame_size 64, the index "
                                         "with frame_size 112"):
        build_index([tmp_path / "small.npy"], tmp_path / "idx", append=True, progress=False)
    assert Searcher(tmp_path / "idx").count == 70


def bad_inputs(tmp_path):
    """(inputs, message) pairs, each of which must fail before anything is written."""
    write(tmp_path, "good", clustered(10, 8, 1))
    write(tmp_path, "wide", clustered(10, 12, 2))
    nan = clustered(10, 8, 3)
    nan[4, 2] = np.nan
    write(tmp_path, "nan", nan)
    inf = clustered(10, 8, 4)
    inf[9, 0] = np.inf
    write(tmp_path, "inf", inf)
    huge = clustered(10, 8, 6)
    huge[6] = 1e20  # finite, but its squared length overflows float32: Faiss would find nothing
    write(tmp_path, "huge", huge)
    np.save(tmp_path / "zero.npy", np.zeros((0, 8), "f4"))
    (tmp_path / "empty").mkdir()
    write(tmp_path, "mismatch", clustered(3, 8, 5))
    (tmp_path / "mismatch.json").write_text(json.dumps({"clips": [[0, 1]]}))
    return [
        (["good.npy", "wide.npy"], "12-d features, others 8-d"),
        (["good.npy", "nan.npy"], "clip 4 holds NaN"),
        (["inf.npy"], "clip 9 holds NaN, infinity"),
        (["huge.npy"], "clip 6 holds NaN, infinity or numbers too large for float32"),
        (["zero.npy"], "empty"),
        (["empty"], "no .npy feature files"),
        (["missing.npy"], "not found"),
        (["mismatch.npy"], "lists 1 clips for 3"),
    ]


def test_bad_inputs_fail_cleanly_and_write_nothing(tmp_path):
    for inputs, message in bad_inputs(tmp_path):
        with pytest.raises(Ig65mError, match=message):
            build_index([tmp_path / name for name in inputs], tmp_path / "idx", progress=False)
        assert not (tmp_path / "idx").exists() and leftovers(tmp_path) == []
    with pytest.raises(Ig65mError, match="invalid --index-key"):
        build_index([tmp_path / "good.npy"], tmp_path / "idx", index_key="Bogus9", progress=False)
    with pytest.raises(Ig65mError, match="cannot train"):
        build_index([tmp_path / "good.npy"], tmp_path / "idx", index_key="IVF64,Flat",
                    progress=False)
    assert leftovers(tmp_path) == [] and not (tmp_path / "idx").exists()


def test_cli_prints_manifest_and_reports_errors(tmp_path):
    write(tmp_path, "good", clustered(10, 8, 1))
    runner = CliRunner()
    result = runner.invoke(main, ["index-build", str(tmp_path / "good.npy"), str(tmp_path / "idx"),
                                  "--metric", "cosine", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metric"] == "cosine"
    result = runner.invoke(main, ["index-build", str(tmp_path / "good.npy"), str(tmp_path / "idx")])
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""
    result = runner.invoke(main, ["index-build", str(tmp_path / "idx")])
    assert result.exit_code == 2 and "INDEX_DIR" in result.stderr
    write(tmp_path, "more", clustered(5, 8, 2))
    result = runner.invoke(main, ["index-build", str(tmp_path / "more.npy"), str(tmp_path / "idx"),
                                  "--append", "--metric", "l2"])
    assert result.exit_code == 2 and "keeps the index's own" in result.stderr
    result = runner.invoke(main, ["index-build", str(tmp_path), str(tmp_path / "idx"), "--append",
                                  "--quiet"])
    assert result.exit_code == 0 and json.loads(result.stdout)["count"] == 15
    assert "skipping" in result.stderr and json.loads(result.stdout)["metric"] == "cosine"


def test_uneven_lists_are_warned_about_and_even_ones_are_not(tmp_path):
    """2,000 copies of one clip (a still scene) all fall in one IVF list: a search probing it scans
    most of the collection, and index-build says so in one line; clustered clips do not."""
    even = tmp_path / "even"
    even.mkdir()
    write(even, "spread", clustered(3000, 8, 3, clusters=40))
    result = CliRunner().invoke(main, ["index-build", str(even), str(even / "idx"),
                                       "--index-key", "IVF64,Flat", "--quiet"])
    assert result.exit_code == 0 and "uneven" not in result.stderr, result.stderr
    uneven = tmp_path / "uneven"
    uneven.mkdir()
    still = np.repeat(clustered(1, 8, 4), 2000, axis=0)
    write(uneven, "still", np.concatenate([still, clustered(1000, 8, 5, clusters=40)]))
    result = CliRunner().invoke(main, ["index-build", str(uneven), str(uneven / "idx"),
                                       "--index-key", "IVF64,Flat", "--quiet"])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if "uneven" in line]
    assert len(warning) == 1 and "holds 2,0" in warning[0] and "of 3,000 clips" in warning[0]
    assert json.loads(result.stdout)["count"] == 3000


def test_choice_of_index_follows_size_and_memory():
    assert choose_index_key(1, 512) == "Flat"
    assert choose_index_key(10_000, 512) == "Flat"
    assert choose_index_key(1_000_000, 512, memory_bytes=8 << 30) == "IVF4000,Flat"
    assert choose_index_key(1_000_000, 512, memory_bytes=1 << 30) == "IVF4000,SQ8"
    assert choose_index_key(100_000_000, 512, memory_bytes=8 << 30) == "IVF40000,PQ32"
