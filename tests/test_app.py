"""The web app (demo/app.py, ov2vss.web_app) in a real browser: headless Chromium drives the
page as a user would (upload, type, run, play), and its JSON equals demo/demo.py's."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from fractions import Fraction

import pytest

CHROMIUM = os.environ.get("OV2VSS_CHROMIUM", "/usr/bin/chromium")
# what the page's run must not do: no background traffic (this machine has no network)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NAMES = ["road", "person", "bicycle"]
FRAMES, FPS = 12, 10


def _browser_or_fail():
    """Playwright's driver with Debian's Chromium; the test fails (not skips) without them."""
    if not os.path.isfile(CHROMIUM):
        pytest.fail(
            f"the browser test needs Chromium at {CHROMIUM} (Debian: apt-get install chromium "
            "chromium-driver; tools/setup_env.sh installs it where it can): not found"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.fail(f"the browser test needs playwright (requirements.txt): {e}")
    return sync_playwright


@pytest.fixture(scope="module")
def clip12(bikes_video, tmp_path_factory) -> str:
    """The first 12 frames of bikes.mp4, 160x68, as an H.264 video."""
    import cv2

    from ov2vss.video_io import VideoFileSource
    from ov2vss.video_output import VideoWriter

    path = str(tmp_path_factory.mktemp("clip") / "clip12.mp4")
    writer = VideoWriter(path, Fraction(FPS), 160, 68)
    for frame in VideoFileSource(bikes_video, FRAMES):
        writer.write(cv2.resize(frame, (160, 68), interpolation=cv2.INTER_AREA))
    writer.close()
    return path


@pytest.fixture(scope="module")
def app_url(repo_root, tmp_path_factory):
    """demo/app.py served on a free local port (as `make app` starts it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("app") / "app.log", "w+")
    env = dict(os.environ, OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen(
        [sys.executable, "demo/app.py", "--port", str(port)],
        cwd=repo_root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            pytest.fail(f"demo/app.py did not start on {url}:\n{log.read()[-3000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


MESSAGE = "#status [data-testid=markdown]"  # the run's message (markdown)
TRACKER = "#status [data-testid=status-tracker]"  # Gradio's progress / queue display


def _message(page) -> str:
    return page.locator(MESSAGE).inner_text() if page.locator(MESSAGE).count() else ""


def _segment(page, vocabulary: str) -> str:
    """Type the names and press Segment; returns the message the page showed before."""
    before = _message(page)
    page.get_by_label("Class names (one per line, or comma separated)").fill(vocabulary)
    page.get_by_role("button", name="Segment").click()
    return before


def _wait_done(page, before: str, timeout_s: float = 180) -> str:
    """Wait until the run is over (no progress shown) and its message is in the page."""
    page.wait_for_function(
        """([message, tracker, before]) => {
             const m = document.querySelector(message), t = document.querySelector(tracker);
             return m && m.innerText !== before && t && t.classList.contains('hide'); }""",
        arg=[MESSAGE, TRACKER, before],
        timeout=timeout_s * 1000,
    )
    return _message(page)


PLAY_TO_THE_END = """async () => {
  const v = document.querySelector('#result-video video');
  await new Promise(r => { if (v.readyState >= 1) r(); else v.onloadedmetadata = r; });
  v.muted = true; v.playbackRate = 4;
  const ended = new Promise(r => v.addEventListener('ended', () => r(true), {once: true}));
  await v.play();
  const result = await Promise.race([ended, new Promise(r => setTimeout(() => r(false), 20000))]);
  return {ended: result, duration: v.duration, time: v.currentTime, error: v.error && v.error.code};
}"""


def test_the_app_in_a_real_browser(app_url, clip12, demo_main, tiny_config_file, tmp_path):
    sync_playwright = _browser_or_fail()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        outside = []  # the page must fetch nothing from elsewhere (fonts, scripts, analytics)
        page.on(
            "request",
            lambda r: (
                None if r.url.startswith((app_url, "data:", "blob:")) else outside.append(r.url)
            ),
        )
        page.goto(app_url)
        page.get_by_role("button", name="Segment").wait_for()  # the page has rendered
        page.locator("input[type=file]").first.set_input_files(clip12)
        page.locator("video").first.wait_for()  # the upload is in the input player
        before = _segment(page, "\n".join(NAMES))
        # progress: frames done / total while it runs
        page.wait_for_function(
            f"() => /[0-9]+\\/{FRAMES} frames/.test(document.querySelector('{TRACKER}').innerText)"
        )
        status = _wait_done(page, before)
        assert f"Segmented {FRAMES} of {FRAMES} frames" in status, status
        # no trained weights: the page says the labels are meaningless, as the command line
        assert "randomly initialised, so the predictions are meaningless" in status, status

        # the overlay video plays to its last frame
        played = page.evaluate(PLAY_TO_THE_END)
        assert played["error"] is None and played["ended"], played
        assert played["duration"] == pytest.approx(FRAMES / FPS, abs=0.05), played
        assert played["time"] == pytest.approx(played["duration"], abs=1e-3), played

        # the chart lists the names (with their shares)
        chart = page.locator("#pixel-share").inner_text()
        assert all(name in chart for name in NAMES), chart
        assert chart.count("%") == len(NAMES), chart

        # the JSON offered for download
        href = page.locator("#summary-json a").first.get_attribute("href")
        with urllib.request.urlopen(urllib.parse.urljoin(app_url, href)) as r:
            from_page = json.load(r)
        page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'app.png'}")

        # a bad vocabulary: one clear message in the page, and the page still works
        status = _wait_done(page, _segment(page, "road, Road"))
        assert status.startswith("Error:") and "duplicate class names" in status, status
        assert not outside, outside
        browser.close()

    # demo/demo.py on the same input gives the same JSON (paths aside)
    out = tmp_path / "cli" / "out.mp4"
    argv = ["--config-file", tiny_config_file, "--video-input", clip12]
    proc = demo_main([*argv, "--vocabulary", ", ".join(NAMES), "--output", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    from_cli = json.loads((tmp_path / "cli" / "out.json").read_text())
    for key in ("input", "output"):
        from_page.pop(key), from_cli.pop(key)
    assert from_page == from_cli
    assert list(from_cli["pixel_share"]) and from_cli["num_frames"] == FRAMES


def test_a_second_request_waits_in_the_queue(app_url, clip12):
    """Two pages segment at once: the app runs one, queues the other, and both finish."""
    sync_playwright = _browser_or_fail()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pages = [browser.new_page(viewport={"width": 1400, "height": 1100}) for _ in range(2)]
        for page in pages:
            page.goto(app_url)
            page.get_by_role("button", name="Segment").wait_for()
            page.locator("input[type=file]").first.set_input_files(clip12)
            page.locator("video").first.wait_for()
        pages[1].get_by_label("Frames: the first N (0: all)").fill("4")
        before = [_segment(page, names) for page, names in zip(pages, ("road, sky", "car, tree"))]
        # while the first runs, the second page shows its place in the queue
        pages[1].wait_for_function(
            f"() => /queue/.test(document.querySelector('{TRACKER}').innerText)", timeout=30000
        )
        statuses = [_wait_done(page, b) for page, b in zip(pages, before)]
        assert f"Segmented {FRAMES} of {FRAMES} frames" in statuses[0], statuses
        assert "Segmented 4 of 4 frames" in statuses[1], statuses
        charts = [page.locator("#pixel-share").inner_text() for page in pages]
        assert "sky" in charts[0] and "tree" in charts[1], charts
        browser.close()


def test_bad_input_is_one_message_and_nothing_is_raised(clip12, tmp_path, tiny_config_file):
    """The page's function turns every user error into its message (no browser needed)."""
    from ov2vss.web_app import OV2VSS_MODE, UPLOAD, run

    def fields(video, vocabulary="road, car", weights="", config=tiny_config_file):
        return (UPLOAD, video, None, vocabulary, OV2VSS_MODE, config, weights, "", False, 0, 1, 2)

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    mismatched = tmp_path / "other.pth"
    import torch

    torch.save({"model": {"backbone.nothing": torch.zeros(3)}}, mismatched)
    cases = [
        (fields(clip12, vocabulary=" , "), "the vocabulary is empty"),
        (fields(str(broken)), str(broken)),
        (fields(clip12, weights=str(mismatched)), str(mismatched)),
        (fields(None), "no input"),
        (fields(clip12, config="configs/nope.yaml"), "config file not found: configs/nope.yaml"),
    ]
    for values, expected in cases:
        video, shares, summary, status = run(*values)
        assert status.startswith("**Error:**") and expected in status, status
        assert video is None and shares is None and summary is None
