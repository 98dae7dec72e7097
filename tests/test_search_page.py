"""The search page, media, thumbnails and uploads against one real `index-serve` process over an
index of videos this module makes (random:SEED weights, shared with the server for uploads), and
one real headless Chromium driving the page."""

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
from click.testing import CliRunner

from ig65m.cli import main
from tests.page_helpers import MODEL, SECRET, TOKEN, WEIGHTS, make_collection, start_chrome

AUTH = {"Authorization": f"Bearer {TOKEN}"}
# the README's picture: written when IG65M_SCREENSHOT=1 (tests do not write into the tree else)
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "search-page.png"


def start_server(collection):
    """index-serve (its lean server process) with uploads on: at most 1 MB, none queued."""
    collection.tmp.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "ig65m", "index-serve", str(collection.index), "--port", "0",
            "--model", MODEL, "--weights", WEIGHTS, "--max-upload-mb", "1", "--upload-queue", "0"]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, IG65M_TOKEN=TOKEN, TMPDIR=str(collection.tmp)))
    lines = []
    for line in process.stderr:
        lines.append(line)
        found = re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", line)
        if found:
            # keep draining stderr (logs) so the server never blocks on a full pipe
            threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
            return process, found.group(1), lines
    raise AssertionError(f"server did not start: {''.join(lines)}")


@pytest.fixture(scope="module")
def collection(tmp_path_factory, one_thread):
    return make_collection(tmp_path_factory.mktemp("page"))


@pytest.fixture(scope="module")
def server(collection):
    process, url, _ = start_server(collection)
    yield url
    process.terminate()  # a process holding torch takes a while to wind down on a loaded machine
    try:
        process.wait(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@pytest.fixture(scope="module")
def browser():
    driver = start_chrome()
    yield driver
    driver.quit()


def ids_of(server, name):
    """Clip ids of video `name` (a file name) in the collection."""
    videos = requests.get(f"{server}/videos", headers=AUTH, timeout=30).json()["videos"]
    video = next(video for video in videos if video["name"] == name)
    return list(range(video["first_id"], video["first_id"] + video["clips"]))


def upload(server, path, field="video", **form):
    with open(path, "rb") as handle:
        return requests.post(f"{server}/search/video", headers=AUTH, data=form,
                             files={field: (Path(path).name, handle)}, timeout=300)


def test_page_is_self_contained(server):
    page = requests.get(f"{server}/", timeout=30)
    assert page.status_code == 200 and "<title>ig65m search</title>" in page.text
    for name in ("app.js", "style.css"):
        asset = requests.get(f"{server}/assets/{name}", timeout=30)
        assert asset.status_code == 200
        assert not re.search(r"https?://|//cdn", asset.text), f"{name} fetches from elsewhere"
    assert not re.search(r"https?://", page.text)
    assert requests.get(f"{server}/videos", timeout=30).status_code == 401


def test_clip_search_groups_moments_by_video(server):
    long_ids = ids_of(server, "long.mp4")
    answer = requests.post(f"{server}/search/clip", headers=AUTH, json={"id": long_ids[3], "k": 5},
                           timeout=60).json()
    first = answer["videos"][0]
    assert first["name"] == "long.mp4" and first["best"]["id"] == long_ids[3]
    assert first["best"]["start"] == pytest.approx(1.5) and first["segments"][0]["id"] == long_ids[3]
    names = [video["name"] for video in answer["videos"]]
    assert "link.mp4" not in names and "secret.txt" not in names  # far-away vectors
    excluded = requests.post(f"{server}/search/clip", headers=AUTH, timeout=60,
                             json={"id": long_ids[3], "k": 5, "exclude_own": True}).json()
    assert "long.mp4" not in [video["name"] for video in excluded["videos"]]
    strict = requests.post(f"{server}/search/clip", headers=AUTH, timeout=60,
                           json={"id": long_ids[3], "min_score": 0.999999}).json()
    assert [video["name"] for video in strict["videos"]] == ["long.mp4"]


def test_search_group_by_video_over_json(server, collection):
    features = np.load(collection.root / "features" / "long.npy")[2:6]
    body = {"vectors": features.tolist(), "k": 20, "group_by": "video",
            "query_times": [[0.5 * n, 0.5 * n + 0.5] for n in range(4)]}
    answer = requests.post(f"{server}/search", headers=AUTH, json=body, timeout=60).json()
    first = answer["videos"][0]
    assert first["name"] == "long.mp4" and first["votes"] == 4
    assert (first["segments"][0]["start"], first["segments"][0]["end"]) == (1.0, 3.0)
    bad = requests.post(f"{server}/search", headers=AUTH, json=dict(body, group_by="file"),
                        timeout=60)
    assert bad.status_code == 400 and "group_by" in bad.json()["error"]


def test_remote_query_of_a_cut_finds_the_longer_video_and_the_moment(server, collection):
    """index-query VIDEO --remote: the server extracts the upload (seconds 1-3 of long.mp4)."""
    result = CliRunner().invoke(main, ["index-query", str(collection.cut), "--remote", "--url",
                                       server, "--token", TOKEN, "--k", "3", "--timeout", "300"])
    assert result.exit_code == 0, result.output
    videos = json.loads(result.output)["videos"]
    assert videos[0]["name"] == "long.mp4" and videos[0]["votes"] >= 3
    segment = videos[0]["segments"][0]
    assert abs(segment["start"] - 1.0) <= 0.5 and abs(segment["end"] - 3.0) <= 0.5


def test_bad_uploads_answer_json_and_leave_no_temp(server, collection, tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("not a video at all\n" * 50)
    (tmp_path / "truncated.mp4").write_bytes(collection.cut.read_bytes()[:1500])
    (tmp_path / "big.mp4").write_bytes(os.urandom(int(1.5 * (1 << 20))))
    (tmp_path / "wrong.npy").write_bytes(b"\x93NUMPY nonsense")
    cases = [("empty.mp4", "video", 400), ("text.mp4", "video", 400),
             ("truncated.mp4", "video", 400), ("big.mp4", "video", 413),
             ("wrong.npy", "features", 400)]
    for name, field, status in cases:
        answer = upload(server, tmp_path / name, field)
        assert answer.status_code == status, (name, answer.text)
        assert answer.json()["error"], name
    nothing = requests.post(f"{server}/search/video", headers=AUTH, data={"k": "3"}, timeout=30)
    assert nothing.status_code == 400 and "multipart" in nothing.json()["error"]
    for option in ({"k": "0"}, {"k": "x"}, {"nprobe": "-1"}, {"min_score": "high"}):
        # refused before the upload is read (it was after a whole extraction): even a non-video
        # gets the option's error, not "cannot read the uploaded video"
        answer = upload(server, tmp_path / "text.mp4", **option)
        assert answer.status_code == 400 and next(iter(option)) in answer.json()["error"], answer.text
    assert os.listdir(collection.tmp) == []


def test_second_upload_while_one_runs_is_503(server, collection):
    long_video = collection.videos / "long.mp4"
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(upload, server, long_video)
        # the first holds the only slot from before its temporary folder appears until after it
        # is removed, and extracting 5 s of video takes far longer than sending the second
        deadline = time.monotonic() + 120
        while not any(name.startswith("ig65m-upload-") for name in os.listdir(collection.tmp)):
            assert time.monotonic() < deadline and not first.done(), "the first upload never ran"
            time.sleep(0.005)
        second = upload(server, collection.cut)
        assert second.status_code == 503 and "busy" in second.json()["error"]
        assert first.result().status_code == 200
    assert os.listdir(collection.tmp) == []


def test_features_upload_with_sidecar(server, collection):
    """index-query FEATURES.npy --remote uploads the .npy and its sidecar (query times)."""
    result = CliRunner().invoke(main, ["index-query", str(collection.root / "features" / "long.npy"),
                                       "--remote", "--url", server, "--token", TOKEN, "--k", "2"])
    assert result.exit_code == 0, result.output
    first = json.loads(result.output)["videos"][0]
    assert first["name"] == "long.mp4" and first["votes"] == 8


def raw_get(server, path, headers=AUTH):
    """GET `path` exactly as written (no client-side normalisation of '..' or '%2e')."""
    address = urlparse(server)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def traversal_paths(collection, server):
    secret = collection.outside / "secret.txt"
    link_id, dots_id = ids_of(server, "link.mp4")[0], ids_of(server, "secret.txt")[0]
    return {
        "dot-dot": "/media/../outside/secret.txt",
        "encoded slash": "/media/..%2F..%2Foutside%2Fsecret.txt",
        "encoded dots": "/media/%2e%2e/%2e%2e/outside/secret.txt",
        "double encoded": "/thumbs/..%252F..%252Foutside%252Fsecret.txt",
        "absolute": f"/media/{secret}",
        "absolute, double slash": f"/media//{secret}",
        "NUL byte": "/media/0%00../../outside/secret.txt",
        "backslash": "/media/..%5C..%5Coutside%5Csecret.txt",
        "assets dot-dot": "/assets/..%2F..%2F..%2Foutside%2Fsecret.txt",
        "assets encoded dots": "/assets/%2e%2e/web.py",
        "negative id": "/media/-1",
        "unknown id": "/media/99999",
        "symlink out of the root": f"/media/{link_id}",
        "symlink thumbnail": f"/thumbs/{link_id}",
        "recorded '..' path": f"/media/{dots_id}",
    }


def test_path_traversal_is_refused(server, collection):
    paths = traversal_paths(collection, server)
    assert len(paths) >= 10
    for kind, path in paths.items():
        status, body = raw_get(server, path)
        assert status in (400, 403, 404), (kind, status)
        assert SECRET.encode() not in body, kind
    assert raw_get(server, paths["symlink out of the root"])[0] == 403


def test_media_ranges_thumbnails_and_signed_urls(server):
    long_ids = ids_of(server, "long.mp4")
    answer = requests.post(f"{server}/search/clip", headers=AUTH, json={"id": long_ids[2]},
                           timeout=60).json()
    video = answer["videos"][0]
    assert "sig=" in video["media"] and TOKEN not in video["media"]
    part = requests.get(server + video["media"], headers={"Range": "bytes=10-109"}, timeout=30)
    assert part.status_code == 206 and len(part.content) == 100
    assert part.headers["Content-Range"].startswith("bytes 10-109/")
    thumb = requests.get(server + video["segments"][0]["thumb"], timeout=60)
    assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"
    tampered = video["media"].replace("sig=", "sig=0")
    assert requests.get(server + tampered, timeout=30).status_code == 401
    assert requests.get(f"{server}/media/{long_ids[2]}", timeout=30).status_code == 401


def wait_for(browser, script, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = browser.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    status = browser.execute_script("return document.getElementById('status').textContent")
    raise AssertionError(f"timed out waiting for: {script} (status: {status})")


FIRST_CARD = "const c = document.querySelector('#results .card'); return c && c.dataset.path"


def test_browser_asks_the_token_then_searches_plays_and_uploads(server, collection, browser):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    wait_for(browser, "return document.getElementById('token-dialog').open")
    assert browser.execute_script("return document.querySelectorAll('#video-select option,"
                                  " #results .card').length") == 0
    browser.find_element(By.ID, "token-input").send_keys(TOKEN)
    browser.find_element(By.ID, "token-submit").click()
    wait_for(browser, "return document.querySelectorAll('#video-select option').length >= 3")
    assert TOKEN not in browser.current_url

    # a moment of the collection: long.mp4 at 1.6 s
    browser.execute_script("""
        const select = document.getElementById('video-select');
        select.value = [...select.options].find(o => o.text.startsWith('long.mp4')).value;
        select.dispatchEvent(new Event('change'));""")
    wait_for(browser, "return document.getElementById('moment').max === '4'")
    browser.execute_script("""const m = document.getElementById('moment'); m.value = '1.6';
                              m.dispatchEvent(new Event('change'));""")
    browser.find_element(By.ID, "search-clip").click()
    assert wait_for(browser, FIRST_CARD).endswith("videos/long.mp4")
    start = float(browser.execute_script(
        "return document.querySelector('#results .card').dataset.start"))
    assert start == pytest.approx(1.5)
    wait_for(browser, "return [...document.images].every(i => i.complete && i.naturalWidth > 0)")

    browser.find_element(By.CSS_SELECTOR, "#results .card").click()
    wait_for(browser, f"""const v = document.getElementById('player-video');
        return v.readyState >= 1 && Math.abs(v.currentTime - {start}) < 0.5""")

    # an uploaded video: seconds 1-3 of long.mp4
    browser.execute_script("document.querySelector('#results').replaceChildren()")
    browser.find_element(By.CSS_SELECTOR, "[data-tab=from-upload]").click()
    browser.find_element(By.ID, "upload-file").send_keys(str(collection.cut))
    browser.find_element(By.ID, "search-upload").click()
    assert wait_for(browser, FIRST_CARD, timeout=300).endswith("videos/long.mp4")
    browser.execute_script("document.getElementById('player').hidden = true; window.scrollTo(0, 0)")
    wait_for(browser, "return [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    shot = browser.get_screenshot_as_png()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("IG65M_SCREENSHOT"):
        SCREENSHOT.write_bytes(shot)


def test_append_while_serving_is_seen_without_restart(server, collection):
    """index-build --append while requests run: all answer 200, and the new video is found."""
    features = collection.root / "features"
    shutil.copy(collection.videos / "negative.mp4", collection.videos / "again.mp4")
    meta = json.loads((features / "negative.json").read_text())
    extra = collection.root / "extra"
    extra.mkdir()
    shutil.copy(features / "negative.npy", extra / "again.npy")  # the sidecar's hash holds
    (extra / "again.json").write_text(json.dumps(dict(meta, source=str(collection.videos / "again.mp4"))))
    before = requests.get(f"{server}/healthz", timeout=30).json()["count"]
    statuses, stop = [], threading.Event()

    def hammer():
        with requests.Session() as session:
            while not stop.is_set():
                statuses.append(session.post(f"{server}/search/clip", headers=AUTH, timeout=60,
                                             json={"id": 0, "k": 10}).status_code)

    with ThreadPoolExecutor(2) as pool:
        loops = [pool.submit(hammer) for _ in range(2)]
        try:  # the loops stop whatever happens, so a failure here fails instead of hanging
            result = CliRunner().invoke(main, ["index-build", str(extra), str(collection.index),
                                               "--append", "--quiet"])
            assert result.exit_code == 0, result.output
            deadline = time.monotonic() + 30
            while requests.get(f"{server}/healthz", timeout=30).json()["count"] == before:
                assert time.monotonic() < deadline, "the server did not see the appended clips"
                time.sleep(0.2)
            time.sleep(0.5)
        finally:
            stop.set()
        for loop in loops:
            loop.result()
    assert statuses and set(statuses) == {200}
    names = [video["name"] for video in requests.get(f"{server}/videos", headers=AUTH,
                                                     timeout=30).json()["videos"]]
    assert "again.mp4" in names
    again = ids_of(server, "again.mp4")
    answer = requests.post(f"{server}/search/clip", headers=AUTH, json={"id": again[0], "k": 10},
                           timeout=60).json()
    assert "again.mp4" in [video["name"] for video in answer["videos"][:2]]
