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
    yield from _serve(digits_run)


def _serve(run, access=None):
    import uvicorn

    _require_browser()
    app = create_app(run, access=access)
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
    driver = _browser(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def _browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver path given, Selenium Manager is skipped
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    return driver


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


def _api_answer(url: str, png: bytes) -> str:
    """What the page should show for ``png``: the API's top label, or "not sure" when the
    API answers unknown."""
    body = {"images": [base64.b64encode(png).decode("ascii")]}
    result = httpx.post(f"{url}/v1/predict", json=body, timeout=WAIT_S).json()["results"][0]
    return "not sure" if result["unknown"] else result["top"][0]["label"]


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
    _wait(
        browser, lambda d: _text(d, "top-label") in [*labels, "not sure"], "an answer after drawing"
    )
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
    assert _text(browser, "top-label") in (bars[0][0], "not sure")
    assert predict_calls() - before >= 3  # live predictions during the strokes, not only after
    # What the page shows is what the API says about the drawing on the canvas.
    canvas = browser.execute_script("return document.getElementById('pad').toDataURL('image/png')")
    drawn = base64.b64decode(canvas.split(",", 1)[1])
    _wait(browser, lambda d: d.find_element(By.ID, "predictions").get_attribute("data-source") == "draw", "drawn")  # fmt: skip
    assert _text(browser, "top-label") == _api_answer(url, drawn)
    _screenshot(browser, "web-draw.png")

    # Upload a digit from the dataset through the file input.
    from sklearn.datasets import load_digits

    digit = (load_digits().images[7] * 255 / 16).astype(np.uint8)  # (8, 8), light on dark
    path = tmp_path / "digit.png"
    Image.fromarray(digit).resize((64, 64), Image.NEAREST).save(path)
    browser.find_element(By.ID, "file").send_keys(str(path))
    _wait(browser, lambda d: d.find_element(By.ID, "predictions").get_attribute("data-source")
          == "file", "a prediction for the uploaded file")  # fmt: skip
    assert _text(browser, "top-label") == _api_answer(url, path.read_bytes())
    assert _text(browser, "status") == ""
    shot = _screenshot(browser, "web-upload.png")
    assert Image.open(io.BytesIO(shot.read_bytes())).size[0] >= 800


def _draw_strokes(driver, strokes, span: int = 220) -> None:
    """Draw a character on the pad stroke by stroke along its centre-lines (Hanzi Writer
    data: a 1024-unit box, y up), as a person writes it; offsets are from the pad's centre."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    pad = driver.find_element(By.ID, "pad")
    for stroke in strokes:
        points = [(round((x / 1024 - 0.5) * span), round(((900 - y) / 1024 - 0.5) * span))
                  for x, y in stroke]  # fmt: skip
        actions = ActionChains(driver, duration=10)
        actions.move_to_element_with_offset(pad, *points[0]).click_and_hold()
        for x, y in points[1:]:
            actions.move_to_element_with_offset(pad, x, y)
        actions.release().perform()


_CANDIDATES = (
    "return [...document.querySelectorAll('#candidates button')].map((b) => b.textContent);"
)


def test_handwriting_pad_mode_for_a_character_model(hanzi_run, tmp_path):
    """A model whose labels are Chinese characters gets the pad: draw one of them stroke by
    stroke, see it among the candidates, pick it into the text, undo, clear."""
    from selenium.webdriver.common.by import By

    from imrec.data.hanzi import load_strokes

    gen = _serve(hanzi_run)
    app, url = next(gen)
    try:
        driver = _browser(tmp_path)
        try:
            driver.get(url + "/")
            _wait(driver, lambda d: d.find_element(By.ID, "writer").is_displayed(), "the pad mode")
            labels = app.state.model.classes
            char = "国"
            _draw_strokes(driver, load_strokes(char)[0])
            _wait(driver, lambda d: len(d.execute_script(_CANDIDATES)) == len(labels),
                  "the candidates")  # fmt: skip
            in_flight = lambda: app.state.metrics.value(  # noqa: E731
                "imrec_requests_in_flight", endpoint="/v1/predict"
            )
            _wait(driver, lambda d: in_flight() == 0, "answers in")
            candidates = driver.execute_script(_CANDIDATES)
            assert set(candidates) == set(labels)  # 10 classes: all of them, best first
            assert char in candidates[:3], candidates
            _screenshot(driver, "web-hanzi-pad.png")
            # Pick the drawn character: it goes into the text, and the pad is cleared for the next.
            driver.find_elements(By.CSS_SELECTOR, "#candidates button")[
                candidates.index(char)
            ].click()
            assert driver.find_element(By.ID, "text").get_attribute("value") == char
            assert driver.execute_script(_CANDIDATES) == []
            # Undo takes back the last stroke only; undoing the only stroke leaves a blank pad.
            strokes = load_strokes("十")[0]
            _draw_strokes(driver, strokes)
            assert driver.execute_script("return state.strokes.length") == 2
            driver.find_element(By.ID, "undo").click()
            assert driver.execute_script("return state.strokes.length") == 1
            driver.find_element(By.ID, "undo").click()
            assert driver.execute_script("return state.strokes.length") == 0
            blank = driver.execute_script(
                "const d = ctx.getImageData(0, 0, pad.width, pad.height).data;"
                "for (let i = 0; i < d.length; i += 4) if (d[i] !== d[0]) return false; return true;"
            )
            assert blank
            assert driver.find_element(By.ID, "text").get_attribute("value") == char  # kept
        finally:
            driver.quit()
    finally:
        next(gen, None)


def test_the_page_asks_for_the_token_once_and_keeps_it_for_the_tab(digits_run, tmp_path):
    """A service that needs a token: the page asks for it, says when one is refused, then
    works; the token stays in the tab's sessionStorage, not in any URL or lasting storage."""
    from selenium.webdriver.common.by import By

    from imrec.serve import Access

    token = "page-token-0123456789abcdef"
    gen = _serve(digits_run, Access(tokens=(token,), rate=0))
    app, url = next(gen)
    try:
        driver = _browser(tmp_path)
        try:
            driver.get(url + "/")
            _wait(driver, lambda d: d.find_element(By.ID, "auth").is_displayed(), "the token form")
            assert "loading" in _text(driver, "model-name")  # nothing served without the token
            driver.find_element(By.ID, "token").send_keys("wrong-token-0123456789")
            driver.find_element(By.ID, "auth-submit").click()
            _wait(driver, lambda d: "refused" in _text(d, "auth-status"), "the refusal")
            driver.find_element(By.ID, "token").send_keys(token)
            driver.find_element(By.ID, "auth-submit").click()
            _wait(driver, lambda d: "cnn" in _text(d, "model-name"), "the model, with the token")
            assert not driver.find_element(By.ID, "auth").is_displayed()
            _draw_seven(driver)
            _wait(driver, lambda d: d.find_element(By.ID, "predictions").get_attribute(
                "data-source") == "draw", "a prediction with the token")  # fmt: skip
            kept = driver.execute_script(
                "return [sessionStorage.getItem('imrec-token'), localStorage.length, location.href]"
            )
            assert kept == [token, 0, url + "/"]
            refused = app.state.metrics.value(
                "imrec_rejected_requests_total", reason="invalid_token"
            )
            assert refused >= 1
            _screenshot(driver, "web-token.png")
        finally:
            driver.quit()
    finally:
        next(gen, None)
