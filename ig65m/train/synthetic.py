"""A toy action dataset that needs motion to be told apart: a square moving up, moving down, or
blinking in place, on a random background. Written with PyAV, so `finetune` and `evaluate` can be
tried (and tested) offline: `python -m ig65m.train.synthetic OUT_DIR [--per-class N]`.

Up and down differ only in time order, so a model must use motion; all three classes are
unchanged by a horizontal flip, so the training augmentation stays valid.
"""

import argparse
from pathlib import Path

import numpy as np

from ig65m.sample import write_video

CLASSES = ("blink", "down", "up")


def toy_frames(kind, rng, *, size=48, num_frames=20):
    """uint8 frames (num_frames, size, size, 3) of one toy video of class `kind`."""
    side = int(rng.integers(size // 6, size // 4 + 1))
    background = np.full(3, rng.integers(0, 60))  # grey levels: the class is in the motion only
    colour = np.full(3, rng.integers(190, 256))
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    frames[:] = background.astype(np.uint8)
    left = int(rng.integers(0, size - side + 1))
    travel = size - side
    speed = travel / (num_frames - 1) * rng.uniform(0.7, 1.0)
    origin = rng.uniform(0, travel - speed * (num_frames - 1))
    period, phase = int(rng.integers(2, 4)), int(rng.integers(0, 2))
    still_top = int(rng.integers(0, size - side + 1))
    for index in range(num_frames):
        if kind == "blink":
            if (index // period + phase) % 2:
                continue
            top = still_top
        else:
            offset = origin + speed * index
            top = int(round(travel - offset)) if kind == "up" else int(round(offset))
        frames[index, top:top + side, left:left + side] = colour.astype(np.uint8)
    noise = rng.integers(-12, 13, size=frames.shape)
    return np.clip(frames.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def write_toy_dataset(root, *, splits=None, size=48, num_frames=20, seed=0, fps=15):
    """Write `root/[SPLIT/]CLASS/NAME.mp4` -> root. `splits`: {"train": n, "val": m} videos per
    class and split, or {"": n} for one folder of class folders (default {"train": 6, "val": 3})."""
    root, rng = Path(root), np.random.default_rng(seed)
    for split, count in (splits or {"train": 6, "val": 3}).items():
        for kind in CLASSES:
            folder = root / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(count):
                frames = toy_frames(kind, rng, size=size, num_frames=num_frames)
                write_video(folder / f"{kind}_{number:03d}.mp4", frames, fps=fps)
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--train", type=int, default=6, help="training videos per class")
    parser.add_argument("--val", type=int, default=3, help="validation videos per class")
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_toy_dataset(args.output, splits={"train": args.train, "val": args.val}, size=args.size,
                      num_frames=args.frames, seed=args.seed)
    print(args.output)


if __name__ == "__main__":
    main()
