"""`floatctl app`: the page's checks without a browser, the run-watching tab, the command's refusals, and the
page itself in a real browser (Playwright driving the system's Chromium).

The browser test serves a tiny checkpoint (tests/test_sample.py's) with `floatctl app` in a subprocess,
uploads a portrait and speech made here, presses Animate, and checks that a playable video of the speech's
length appears; then that a non-image gets its message and the page still animates afterwards, this time
from a microphone recording (Chromium's fake microphone). Without Playwright, Gradio or Chromium it skips
saying which is missing, except under CI=true, where it fails.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from test_sample import face_png, run, speech_like, write_wav  # noqa: F401 (fixtures)
from trainer.app.animate import MIN_AUDIO_SECONDS, AppConfig, animate
from trainer.app.watch import view_run
from trainer.checkpoints import CHECKPOINT_VERSION, save_final
from trainer.run import MOTION_KIND

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Chromium's fake microphone (a beep every second) stands in for a person recording, without asking.
FAKE_MICROPHONE = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
SPEECH_SECONDS = 2.0


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, face_png) -> dict:  # noqa: F811
    folder = tmp_path_factory.mktemp("app-inputs")
    (folder / "notes.png").write_text("not an image, whatever the name says")
    stage1 = save_final(folder / "stage1" / "checkpoints", {"version": CHECKPOINT_VERSION, "kind": MOTION_KIND,
                                                            "step": 3, "model": {}, "config": {}})
    return {"portrait": face_png, "speech": write_wav(folder / "speech.wav", speech_like(SPEECH_SECONDS)),
            "short": write_wav(folder / "short.wav", speech_like(0.2)),
            "silent": write_wav(folder / "silent.wav", np.zeros(16000, np.float32)),
            "not_image": folder / "notes.png", "stage1": stage1}


def video_info(path: Path) -> dict:
    with av.open(str(path)) as c:
        return {"frames": sum(1 for _ in c.decode(video=0)), "audio": bool(c.streams.audio)}


# ---------------------------------------------------------------- the Animate button, without a browser
def test_animate_makes_the_video_and_plot_with_the_sample_code(run, inputs, tmp_path):  # noqa: F811
    result = animate(AppConfig(run["ckpt"], tmp_path), inputs["portrait"], inputs["speech"], nfe=2, seed=3)
    assert result.ok, result.message
    assert result.message.startswith("done") and "50 frames" in result.message
    info = video_info(Path(result.video))
    assert info == {"frames": int(SPEECH_SECONDS * 25), "audio": True}
    assert cv2.imread(result.plot) is not None
    assert result.details["metrics"]["settings"]["nfe"] == 2  # run_sample's own record of what it did
    assert Path(result.video).parent.parent == tmp_path  # each request in its own folder of the work dir


@pytest.mark.parametrize("case, expected", [
    ("not_image", "unreadable"),
    ("silent", "silent"),
    ("short", f"too short to animate; give at least {MIN_AUDIO_SECONDS:g} s"),
    ("too_big", "MB limit"),
    ("stage1", "stage-1 motion auto-encoder checkpoint"),
    ("nothing", "no portrait given"),
])
def test_bad_inputs_get_one_clear_message(run, inputs, tmp_path, case, expected):  # noqa: F811
    portrait, speech, checkpoint, limit = inputs["portrait"], inputs["speech"], None, 20.0
    if case == "not_image":
        portrait = inputs["not_image"]
    elif case in ("silent", "short"):
        speech = inputs[case]
    elif case == "too_big":
        limit = 0.01  # MB: the 2 s wav (64 kB) is over it
    elif case == "stage1":
        checkpoint = inputs["stage1"]
    else:
        portrait = None
    result = animate(AppConfig(run["ckpt"], tmp_path, max_upload_mb=limit), portrait, speech, nfe=2,
                     checkpoint=checkpoint)
    assert not result.ok and result.video is None
    assert result.message.startswith("error: ") and expected in result.message and "\n" not in result.message


# ---------------------------------------------------------------- the run tab
def test_watch_tab_draws_the_curves_and_finds_the_latest_samples(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    rows = [{"step": s, "split": "train", "total": 1.0 / s} for s in (10, 20, 30)]
    rows += [{"step": 30, "split": "val", "val_total": 0.5, "gen_l1_audio": 0.4, "gen_l1_no_audio": 0.6}]
    (run_dir / "samples" / "sample_step_20").mkdir(parents=True)
    (run_dir / "samples" / "sample_step_100").mkdir()
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    picture = np.zeros((8, 8, 3), np.uint8)
    for step in (20, 100):  # by step, not by name: 100 sorts before 20 as text
        cv2.imwrite(str(run_dir / "samples" / f"sample_step_{step}" / "clip.plot.png"), picture)
    (run_dir / "samples" / "sample_step_100" / "clip.mp4").write_bytes(b"")
    view = view_run(run_dir, tmp_path / "work")
    assert "4 logged rows, last at step 30" in view.message
    assert cv2.imread(view.curves).shape[0] > 100
    assert [Path(p).parent.name for p, _ in view.images] == ["sample_step_100"]
    assert view.video.endswith("sample_step_100/clip.mp4")
    assert "no such folder" in view_run(tmp_path / "nope", tmp_path).message
    assert "no metrics.jsonl" in view_run(tmp_path / "work", tmp_path).message


def test_a_page_served_beyond_this_machine_keeps_its_checkpoint_and_run(run, inputs, tmp_path):  # noqa: F811
    pytest.importorskip("gradio")
    from trainer.app.server import build_app

    run_dir = run["ckpt"].parent.parent
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "total": 1.0}) + "\n")
    handlers = {f.name: f.fn for f in build_app(AppConfig(run["ckpt"], tmp_path, run_dir, locked=True)).fns.values()}
    message = handlers["on_refresh"](str(tmp_path))[0]  # a visitor types another folder: the run's is shown
    assert message.startswith(str(run_dir))
    _, _, status = handlers["on_animate"](str(inputs["stage1"]), str(inputs["portrait"]), str(inputs["speech"]),
                                          "none", 2.0, 1.0, 2, "euler", 0, progress=lambda *a, **k: None)
    assert status.startswith("done"), status  # the command line's checkpoint, not the stage-1 one typed in


# ---------------------------------------------------------------- the command
@pytest.mark.parametrize("case, expected", [("stage1", "stage-1 motion auto-encoder checkpoint"),
                                            ("text", "unreadable checkpoint"), ("missing", "no such file")])
def test_app_command_refuses_an_unusable_checkpoint_before_serving(inputs, tmp_path, case, expected):
    pytest.importorskip("gradio")
    from typer.testing import CliRunner

    from cli import app

    path = {"stage1": inputs["stage1"], "text": tmp_path / "notes.pt", "missing": tmp_path / "gone.pt"}[case]
    if case == "text":
        path.write_text("hi\n")  # the weights-only unpickler raised a bare KeyError (a traceback) on this
    result = CliRunner().invoke(app, ["app", str(path)])
    assert result.exit_code == 2, result.output
    assert expected in result.output and str(path) in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------- the page in a browser
@pytest.fixture
def playwright_api():
    """Playwright's sync API, or a skip naming what is missing (a failure under CI=true: CI installs it all).

    A fixture listed before ``server``, so a machine without a browser skips before the server starts."""
    missing = []
    try:
        import gradio  # noqa: F401
    except ImportError:
        missing.append("gradio (pip install 'float-train[app]')")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("playwright (pip install 'float-train[app]')")
    if not Path(CHROMIUM).is_file():
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    if missing:
        message = "browser test needs " + ", ".join(missing)
        if os.environ.get("CI", "").lower() in ("1", "true"):
            pytest.fail(message + " -- CI installs these (.ci/run), so this is a broken CI set-up")
        pytest.skip(message)
    return sync_playwright


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(run, tmp_path):  # noqa: F811
    """`floatctl app` on the tiny checkpoint, in its own process; yields its URL."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", "from cli import main; main()", "app", str(run["ckpt"]),
                             "--port", str(port), "--work-dir", str(tmp_path / "work")],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"floatctl app did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


VIDEO_READY = """() => { const v = document.querySelector('#video video');
                        return v && v.readyState >= 1 && isFinite(v.duration) && v.duration > 0 }"""


def animate_in_page(page, portrait: Path, speech: Path | None = None) -> None:
    clear = page.locator("#portrait button[aria-label='Clear']")
    if clear.count():
        clear.click()
    page.locator("#portrait input[type=file]").set_input_files(str(portrait))
    if speech is not None:
        page.locator("#speech input[type=file]").set_input_files(str(speech))
    page.locator("#portrait button[aria-label='Clear']").wait_for()  # the upload is done
    page.click("#animate")


def test_the_page_animates_a_portrait_in_a_real_browser(playwright_api, server, inputs, tmp_path):
    with playwright_api() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + FAKE_MICROPHONE)
        try:
            context = browser.new_context(permissions=["microphone"], viewport={"width": 1280, "height": 1000})
            page = context.new_page()
            page.goto(server)
            page.wait_for_selector("#animate")
            animate_in_page(page, inputs["portrait"], inputs["speech"])
            page.wait_for_function(VIDEO_READY, timeout=60_000)
            status = page.locator("#status").inner_text()
            assert status.startswith("done"), status
            duration = page.evaluate("document.querySelector('#video video').duration")
            assert duration == pytest.approx(SPEECH_SECONDS, abs=0.1)  # the browser plays it, at full length
            src = page.evaluate("document.querySelector('#video video').src")
            fetched = tmp_path / "fetched.mp4"
            fetched.write_bytes(page.request.get(src).body())
            assert video_info(fetched) == {"frames": int(SPEECH_SECONDS * 25), "audio": True}
            assert page.locator("#plot img").count() == 1
            if os.environ.get("FLOAT_APP_SCREENSHOT"):  # a picture of the page, on request
                page.screenshot(path=os.environ["FLOAT_APP_SCREENSHOT"], full_page=True)

            # A non-image: its message on the page, and the page keeps working: now with a recording.
            animate_in_page(page, inputs["not_image"])
            page.locator("#status").get_by_text("unreadable").wait_for(timeout=30_000)
            assert inputs["not_image"].name in page.locator("#status").inner_text()
            speech = page.locator("#speech")
            speech.locator("button[aria-label='Record audio']").click()
            speech.get_by_role("button", name="Record").first.click()
            page.wait_for_timeout(2_500)
            speech.get_by_role("button", name="Stop").first.click()
            speech.locator("button[aria-label='Play']").wait_for()  # the recording is in
            animate_in_page(page, inputs["portrait"])
            page.locator("#status").get_by_text("done in").wait_for(timeout=60_000)
            page.wait_for_function(VIDEO_READY, timeout=30_000)
            recorded = page.evaluate("document.querySelector('#video video').duration")
            assert 1.5 < recorded < 6.0, recorded  # about the 2.5 s recorded
        finally:
            browser.close()
