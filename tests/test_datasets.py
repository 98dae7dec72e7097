"""Datasets for finetune/evaluate: layouts, CSVs, splits, unreadable items, clip and crop sampling."""

import numpy as np
import pytest
import torch
from PIL import Image

from ig65m.errors import Ig65mError
from ig65m.sample import write_video
from ig65m.train import datasets, sampling
from ig65m.transforms import ClipTransform


def _indexed_frames(count, size=24):
    """Frames whose red channel is 8 * index: a decoded frame tells which one it was."""
    frames = np.zeros((count, size, size, 3), dtype=np.uint8)
    frames[..., 0] = (np.arange(count) * 8)[:, None, None]
    frames[:, :, : size // 2, 1] = 200  # left half green: shows horizontal flips
    return frames


def _lossless(path, frames):
    return write_video(path, frames, codec="libx264rgb", options={"crf": "0"})


@pytest.fixture
def folder(tmp_path):
    """root/{a,b}/: two videos each, plus an image-sequence folder in b, a stray text file."""
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for number in range(2):
            _lossless(tmp_path / label / f"{label}{number}.mp4", _indexed_frames(12))
    sequence = tmp_path / "b" / "Series1"
    sequence.mkdir()
    for index, frame in enumerate(_indexed_frames(12)[::-1][:5]):  # pic8 ... pic12: 12 follows 9
        Image.fromarray(frame).save(sequence / f"pic{index + 8}.png")
    (tmp_path / "a" / "notes.txt").write_text("not a video")
    return tmp_path


def test_folder_layout_lists_videos_and_image_sequences(folder):
    entries = datasets.list_entries(folder)
    names = [(path.name, label) for path, label in entries]
    assert names == [("a0.mp4", "a"), ("a1.mp4", "a"), ("Series1", "b"), ("b0.mp4", "b"),
                     ("b1.mp4", "b")]
    samples = datasets.probe(datasets.label_indices(entries, ["a", "b"]), frame_size=None,
                             progress=False)
    assert [s.num_frames for s in samples] == [12, 12, 5, 12, 12]


def test_image_sequence_frames_in_order(folder):
    frames = datasets.read_indices(folder / "b" / "Series1", [4, 0, 2, 2], None)
    assert frames.shape == (4, 24, 24, 3)
    assert [int(round(frames[i, 5, 5, 0] / 8)) for i in range(4)] == [7, 11, 9, 9]


def test_read_indices_of_a_video(folder):
    frames = datasets.read_indices(folder / "a" / "a0.mp4", [11, 3, 3, 0], None)
    assert [int(round(f[5, 5, 0] / 8)) for f in frames] == [11, 3, 3, 0]


def test_unreadable_items_are_skipped_with_a_count(folder, capsys):
    (folder / "a" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 definitely not a video")
    (folder / "b" / "empty_sequence").mkdir()
    (folder / "b" / "empty_sequence" / "pic0.jpg").write_bytes(b"not a jpeg")
    entries = datasets.label_indices(datasets.list_entries(folder), ["a", "b"])
    samples = datasets.probe(entries, frame_size=None, progress=False, what="videos")
    assert len(entries) == 7 and len(samples) == 5
    err = capsys.readouterr().err
    assert "skipped 2 of 7 videos (unreadable)" in err
    assert "broken.mp4" in err and "empty_sequence" in err


def test_nothing_readable_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mp4").write_bytes(b"junk")
    with pytest.raises(Ig65mError, match="none of the 1"):
        datasets.probe([(tmp_path / "a" / "x.mp4", 0)], frame_size=None, progress=False)


def test_empty_dataset_and_single_class(tmp_path):
    with pytest.raises(Ig65mError, match="not found"):
        datasets.list_entries(tmp_path / "missing")
    (tmp_path / "only").mkdir()
    with pytest.raises(Ig65mError, match="is empty"):
        datasets.list_entries(tmp_path)
    _lossless(tmp_path / "only" / "v.mp4", _indexed_frames(3))
    with pytest.raises(Ig65mError, match="only one class"):
        datasets.class_names(datasets.list_entries(tmp_path))


def test_csv_with_and_without_header(folder, tmp_path):
    (folder / "list.csv").write_text("path,label\na/a0.mp4,a\nb/b1.mp4,B\n")
    (folder / "bare.csv").write_text("a/a1.mp4,a\n\nb/Series1,b\n")
    assert datasets.list_entries(folder / "list.csv") == [(folder / "a/a0.mp4", "a"),
                                                          (folder / "b/b1.mp4", "B")]
    assert datasets.list_entries(folder / "bare.csv") == [(folder / "a/a1.mp4", "a"),
                                                          (folder / "b/Series1", "b")]
    indexed = datasets.label_indices(datasets.list_entries(folder / "list.csv"), ["a", "b"])
    assert [label for _, label in indexed] == [0, 1]  # labels match case-blind


def test_kinetics_annotation_csv(tmp_path):
    (tmp_path / "air_drumming").mkdir()
    _lossless(tmp_path / "air_drumming" / "abc_000010_000020.mp4", _indexed_frames(3))
    (tmp_path / "val.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                      "air drumming,abc,10,20,val\n")
    entries = datasets.list_entries(tmp_path / "val.csv")
    assert entries == [(tmp_path / "air_drumming" / "abc_000010_000020.mp4", "air drumming")]
    assert datasets.label_indices(entries, ["abseiling", "Air_Drumming"])[0][1] == 1


def test_csv_labels_not_in_the_label_list(folder):
    (folder / "list.csv").write_text("a/a0.mp4,a\nb/b0.mp4,zebra\nb/b1.mp4,yak\n")
    with pytest.raises(Ig65mError, match=r"2 label\(s\) of the dataset are not in the label list "
                                         r"\(2 labels\): 'yak', 'zebra'"):
        datasets.label_indices(datasets.list_entries(folder / "list.csv"), ["a", "b"])


def test_train_val_folders_and_stratified_split(folder, tmp_path):
    train, val = datasets.split_entries(datasets.list_entries(folder), 0.4, seed=3)
    assert len(val) == 1 + 1 and len(train) == 1 + 2  # round(0.4 * 2) = 1, round(0.4 * 3) = 1
    assert {label for _, label in val} == {"a", "b"}
    assert set(train).isdisjoint(val)
    again = datasets.split_entries(datasets.list_entries(folder), 0.4, seed=3)
    assert again == (train, val)
    root = tmp_path / "splits"
    for split in ("train", "val"):
        (root / split / "a").mkdir(parents=True)
        _lossless(root / split / "a" / "v.mp4", _indexed_frames(3))
    train, val = datasets.load_splits(root)
    assert [p.parent.parent.name for p, _ in train + val] == ["train", "val"]
    with pytest.raises(Ig65mError, match="--val-split would ignore"):
        datasets.load_splits(root, val_split=0.5)


def test_clip_starts():
    assert sampling.centre_start(100, 8) == 46
    assert sampling.centre_start(5, 8) == 0
    assert sampling.uniform_starts(100, 8, 10) == [0, 10, 20, 31, 41, 51, 61, 72, 82, 92]
    assert sampling.uniform_starts(8, 8, 3) == [0, 0, 0]
    assert sampling.uniform_starts(30, 8, 1) == [11]
    assert sampling.clip_indices(5, 8, 0) == [0, 1, 2, 3, 4, 4, 4, 4]
    rng = np.random.default_rng(0)
    starts = {sampling.random_start(20, 8, rng) for _ in range(500)}
    assert starts == set(range(13))


def test_crop_offsets():
    assert sampling.centre_crop(40, 53, 32) == (4, 10)
    assert sampling.three_crops(40, 53, 32) == [(4, 0), (4, 10), (4, 21)]
    assert sampling.three_crops(53, 40, 32) == [(0, 4), (10, 4), (21, 4)]
    assert sampling.three_crops(32, 32, 32) == [(0, 0)] * 3
    rng = np.random.default_rng(0)
    offsets = {sampling.random_crop(34, 35, 32, rng) for _ in range(500)}
    assert offsets == {(top, left) for top in range(3) for left in range(4)}


def _dataset(path, num_frames, mode, **kwargs):
    sample = datasets.Sample(path, 1, num_frames)
    transform = ClipTransform(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    return datasets.ClipDataset([sample], mode=mode, clip_frames=4, frame_size=None,
                                transform=transform, **kwargs)


def _frame_numbers(clip):
    return [int(round(value * 255 / 8)) for value in clip[0, :, 0, 0].tolist()]


def test_eval_modes_take_the_clips_and_crops_they_claim(tmp_path):
    frames = _indexed_frames(30)
    frames[:, :, :, 2] = np.arange(24, dtype=np.uint8)[None, None, :]  # blue = column
    path = _lossless(tmp_path / "v.mp4", frames)
    views, label = _dataset(path, 30, "clip")[0]
    assert views.shape == (1, 3, 4, 16, 16) and label == 1
    assert _frame_numbers(views[0]) == [13, 14, 15, 16]
    assert round(float(views[0, 2, 0, 0, 0]) * 255) == 4  # centre crop starts at column 4
    views, _ = _dataset(path, 30, "video", num_clips=3)[0]
    assert views.shape == (9, 3, 4, 16, 16)
    starts = [_frame_numbers(view)[0] for view in views]
    assert starts == [0, 0, 0, 13, 13, 13, 26, 26, 26]  # clip major
    lefts = [round(float(view[2, 0, 0, 0]) * 255) for view in views]
    assert lefts == [0, 4, 8] * 3


def test_training_clips_are_random_but_reproducible(tmp_path):
    path = _lossless(tmp_path / "v.mp4", _indexed_frames(30))
    dataset = _dataset(path, 30, "train", seed=5)
    first = [dataset[0][0] for _ in range(2)]
    assert torch.equal(first[0], first[1])  # same (seed, epoch, index): same clip
    drawn = []
    for epoch in range(12):
        dataset.set_epoch(epoch)
        clip, _ = dataset[0]
        numbers = _frame_numbers(clip)
        assert numbers == list(range(numbers[0], numbers[0] + 4))
        drawn.append((numbers[0], float(clip[1, 0, 0, 0]) > 0.5))  # green at left: not flipped
    assert len({start for start, _ in drawn}) > 3
    assert {flipped for _, flipped in drawn} == {True, False}
    dataset = _dataset(path, 30, "train", seed=5, flip=False)
    for epoch in range(6):
        dataset.set_epoch(epoch)
        assert float(dataset[0][0][1, 0, 0, 0]) > 0.5
