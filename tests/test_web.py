"""The web page end to end in a real headless Chromium: draw a digit, upload a file, screenshots.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). Without them the
test is skipped, except under CI (``$CI`` set), where a missing browser is a failure.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from imrec.serve import create_app

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROME_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--window-size=1200,900",
]  # fmt: skip
WAIT_S = 30


def _require_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if not missing:
        return
    message = (
        f"the browser test needs {', '.join(missing)}: apt-get install chromium chromium-driver"
    )
    if os.environ.get("CI"):
        pytest.fail(message)  # CI installs them: a missing browser there is a broken setup
    pytest.skip(message)


@pytest.fixture(scope="module")
def server(digits_run):
    """A live uvicorn on a free loopback port, serving a tiny digits classifier."""
    import uvicorn

    _require_browser()
    app = create_app(digits_run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not srv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield app, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(WAIT_S)


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver path given, Selenium Manager is skipped
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def _wait(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition, message=what)


def _text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text.strip()


def _draw_seven(driver) -> None:
    """Two strokes over the pad, as a person draws a 7: the top bar, then the long diagonal."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    pad = driver.find_element(By.ID, "pad")
    for stroke in ([(-80, -90), (80, -90)], [(80, -90), (-20, 100)]):
        (x0, y0), (x1, y1) = stroke
        actions = ActionChains(driver, duration=20)
        actions.move_to_element_with_offset(pad, x0, y0).click_and_hold()
        steps = 12
        for i in range(1, steps + 1):  # offsets are from the pad's centre
            actions.move_to_element_with_offset(pad, x0 + (x1 - x0) * i // steps,
                                                y0 + (y1 - y0) * i // steps)  # fmt: skip
            actions.pause(0.03)  # ~0.4 s a stroke: the throttled live predictions fire
        actions.release().perform()


def _screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    assert path.is_file() and path.stat().st_size > 0
    grey = np.asarray(Image.open(path).convert("L"))
    assert grey.std() > 10 and len(np.unique(grey)) > 20, f"{path} looks blank"
    return path


_READ_BARS = """
return [...document.querySelectorAll('#bars li')].map((li) => [
  li.querySelector('.name').textContent, li.querySelector('.pct').textContent,
  li.querySelector('.fill').style.width]);
"""


def _api_top(url: str, png: bytes) -> str:
    body = {"images": [base64.b64encode(png).decode("ascii")]}
    return httpx.post(f"{url}/v1/predict", json=body, timeout=WAIT_S).json()["results"][0]["top"]


def test_draw_a_digit_and_upload_a_file_in_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    app, url = server
    labels = app.state.model.classes
    browser.get(url + "/")
    _wait(browser, lambda d: "cnn" in _text(d, "model-name"), "the page shows the model")

    # Draw stroke by stroke; the answer appears while drawing and after each stroke.
    predict_calls = lambda: app.state.metrics.value(  # noqa: E731
        "imrec_requests_total", endpoint="/v1/predict", method="POST", status="200"
    )
    before = predict_calls()
    _draw_seven(browser)
    _wait(browser, lambda d: _text(d, "top-label") in labels, "a label after drawing")
    _wait(browser, lambda d: (d.find_element(By.ID, "cam").get_attribute("src") or "")
          .startswith("data:image/png"), "the Grad-CAM overlay")  # fmt: skip
    in_flight = lambda endpoint: app.state.metrics.value(  # noqa: E731
        "imrec_requests_in_flight", endpoint=endpoint
    )
    _wait(browser, lambda d: in_flight("/v1/predict") == 0 and in_flight("/v1/explain") == 0,
          "answers in")  # fmt: skip
    bars = browser.execute_script(_READ_BARS)  # in one go: a late answer may redraw the bars
    assert len(bars) == 5
    assert all(name in labels for name, _, _ in bars)
    assert all(pct.endswith("%") and width.endswith("%") for _, pct, width in bars)
    assert bars[0][0] == _text(browser, "top-label")
    assert predict_calls() - before >= 3  # live predictions during the strokes, not only after
    # What the page shows is what the API says about the drawing on the canvas.
    canvas = browser.execute_script("return document.getElementById('pad').toDataURL('image/png')")
    drawn = base64.b64decode(canvas.split(",", 1)[1])
    _wait(browser, lambda d: d.find_element(By.ID, "predictions").get_attribute("data-source") == "draw", "drawn")  # fmt: skip
    assert _text(browser, "top-label") == _api_top(url, drawn)[0]["label"]
    _screenshot(browser, "web-draw.png")

    # Upload a digit from the dataset through the file input.
    from sklearn.datasets import load_digits

    digit = (load_digits().images[7] * 255 / 16).astype(np.uint8)  # (8, 8), light on dark
    path = tmp_path / "digit.png"
    Image.fromarray(digit).resize((64, 64), Image.NEAREST).save(path)
    browser.find_element(By.ID, "file").send_keys(str(path))
    _wait(browser, lambda d: d.find_element(By.ID, "predictions").get_attribute("data-source")
          == "file", "a prediction for the uploaded file")  # fmt: skip
    assert _text(browser, "top-label") == _api_top(url, path.read_bytes())[0]["label"]
    assert _text(browser, "status") == ""
    shot = _screenshot(browser, "web-upload.png")
    assert Image.open(io.BytesIO(shot.read_bytes())).size[0] >= 800
