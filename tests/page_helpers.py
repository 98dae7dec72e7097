"""A small video collection for the search page tests: videos the tests make, features from
`--weights random:SEED` (the server loads the same weights for uploads), an index over them, a
server process and a headless Chromium."""

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from ig65m.index import build_index
from ig65m.sample import pattern_frame, write_video

MODEL = "r2plus1d_34_8_ig65m"
WEIGHTS = "random:7"
SIZE = {"frame_size": 56, "crop_size": 56}  # small clips: these tests are about the page
FPS = 16                                      # 8-frame clips of 0.5 s
TOKEN = "page-token"
SECRET = "marker: this file must never be served"
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMEDRIVER = "/usr/bin/chromedriver"


def frames(kind, count):
    """Three visibly different moving patterns, 64x48."""
    for number in range(count):
        frame = pattern_frame(number, 64, 48)
        if kind == "mirrored":
            frame = np.ascontiguousarray(frame[:, ::-1, ::-1])
        elif kind == "negative":
            frame = 255 - pattern_frame(3 * number + 40, 64, 48)
        yield frame


def h264(path, images):
    """Browser-playable H.264 (yuv420p, high quality)."""
    write_video(path, images, fps=FPS, codec="libx264", options={"crf": "10"})
    return path


def make_collection(root):
    """videos/long.mp4 (4 s), mirrored.mp4, negative.mp4 (2 s each) extracted into features/;
    queries/cut.mp4: seconds 1 to 3 of long.mp4; outside/secret.txt, the marker never served;
    two feature files whose recorded videos escape the roots (a symlink, a '..' path)."""
    from ig65m.extract import Extractor

    videos, features, queries, outside = (root / name for name in
                                          ("videos", "features", "queries", "outside"))
    for folder in (videos, features, queries, outside):
        folder.mkdir()
    all_long = list(frames("pattern", 64))
    h264(videos / "long.mp4", all_long)
    h264(videos / "mirrored.mp4", frames("mirrored", 32))
    h264(videos / "negative.mp4", frames("negative", 32))
    h264(queries / "cut.mp4", all_long[16:48])
    (outside / "secret.txt").write_text(SECRET)
    os.symlink(outside / "secret.txt", videos / "link.mp4")
    extractor = Extractor(MODEL, WEIGHTS, progress=False)
    cwd = os.getcwd()
    os.chdir(root)  # sources recorded as typed (relative), as a user's extract run does
    try:
        for name in ("long", "mirrored", "negative"):
            extractor.extract(f"videos/{name}.mp4", features / f"{name}.npy", **SIZE)
        escaping_sources(features)
        build_index([features], root / "idx", metric="cosine", progress=False)
    finally:
        os.chdir(cwd)
    return SimpleNamespace(root=root, index=root / "idx", videos=videos, queries=queries,
                           outside=outside, cut=queries / "cut.mp4", tmp=root / "server-tmp")


def escaping_sources(features):
    """link.npy (its video: a symlink out of the root) and dots.npy (a '..' path): random
    vectors, far from every real clip, so they never show among results."""
    rng = np.random.default_rng(3)
    meta = json.loads((features / "negative.json").read_text())
    for name, source in (("link", str(features.parent / "videos" / "link.mp4")),
                         ("dots", "videos/../outside/secret.txt")):
        np.save(features / f"{name}.npy", rng.standard_normal((2, 512)).astype(np.float32))
        other = {key: value for key, value in meta.items() if key != "features_sha256"}
        (features / f"{name}.json").write_text(json.dumps(
            dict(other, source=source, clips=[[0.0, 0.5], [0.5, 1.0]])))


def chrome_paths():
    """(chromium, chromedriver) or a pytest skip naming what is missing."""
    browser = next((path for path in CHROMIUM if Path(path).is_file()), None)
    driver = shutil.which("chromedriver") or (CHROMEDRIVER if Path(CHROMEDRIVER).is_file() else None)
    if browser is None or driver is None:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                    "(.ci/run does) to run the search page tests")
    return browser, driver


def start_chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = chrome_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,1000", "--autoplay-policy=no-user-gesture-required",
                     "--mute-audio"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)
