"""The web demo as a user starts it (`python triton_repo/web_demo.py --engines BUILD`), on a real
Triton over loopback, used in a real headless browser: Debian's chromium driven by selenium through
chromium-driver (scripts/setup_browser.sh installs both). Every answer the page shows is checked
against the deployment's own client (`Any2AnyClient.chat`) on the same Triton, with the settings
the page sends by default."""
import io
import os
import shutil
import signal
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from runtime.conversation import Conversation, Medium, Turn
from front_end import start_front_end
from triton_repo.client import Any2AnyClient
from triton_repo.serve import free_port
from triton_repo.web_demo import AUTO, DEMO_MAX_NEW_TOKENS, WebDemo

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="Debian's chromium and chromium-driver are not installed and scripts/setup_browser.sh could not install them "
    "(it needs root and apt-get)",
)
ANSWER_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def demo(tiny_build, tmp_path_factory):
    """The page's URL and the gRPC address of the Triton the demo started."""
    tmp = tmp_path_factory.mktemp("web_demo")
    port = free_port()
    log = (tmp / "demo.log").open("w+")
    argv = [sys.executable, str(ROOT / "triton_repo" / "web_demo.py"), "--engines", str(tiny_build[0]), "--port", str(port)]
    url = f"http://127.0.0.1:{port}/"
    proc, grpc = start_front_end(argv, url, log)
    yield {"url": url, "grpc": grpc}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # root in a container: no sandbox; /dev/shm may be small
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def direct(demo):
    with Any2AnyClient(demo["grpc"], 300) as c:
        yield c


def page_defaults(client):
    """The settings the page sends when its controls are left alone."""
    return WebDemo.settings(AUTO, 1.0, 0.0, min(DEMO_MAX_NEW_TOKENS, client.limits().max_new_tokens), None, None, 0)


def bot_texts(driver):
    """The answers' texts, read in one script: the chat re-renders while it streams."""
    script = "return [...document.querySelectorAll('#chatbot .bot-row')].map(e => e.innerText.trim()).filter(t => t)"
    return driver.execute_script(script)


def ask(driver, text, expected_answers):
    """Type `text`, press Submit, and wait until the page shows `expected_answers` bot texts."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys(text)
    driver.find_element(By.CSS_SELECTOR, "#submit").click()
    WebDriverWait(driver, ANSWER_TIMEOUT_S).until(lambda d: bot_texts(d) == expected_answers)


def test_a_picture_is_described_a_follow_up_answered_and_a_picture_drawn(demo, browser, direct, sample_inputs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    settings = page_defaults(direct)
    browser.get(demo["url"])
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image_in input[type=file]"))

    # 1. upload a picture and read its description
    browser.find_element(By.CSS_SELECTOR, "#image_in input[type=file]").send_keys(str(sample_inputs["image"]))
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image_in img"))
    conversation = Conversation((Turn.user("describe this image", [Medium("image", sample_inputs["image"])]),))
    first = direct.chat(conversation, **settings)
    ask(browser, "describe this image", [first.text])
    assert first.text and not browser.find_elements(By.CSS_SELECTOR, "#image_in img")  # the upload box is cleared

    # 2. a follow-up about it: the whole conversation goes with it
    conversation = conversation.then(first.turn()).then(Turn.user("what colour is the background?"))
    second = direct.chat(conversation, **settings)
    ask(browser, "what colour is the background?", [first.text, second.text])
    assert "background" in second.text

    # 3. ask for a picture: the answer shows it inline
    next(label for label in browser.find_elements(By.CSS_SELECTOR, "#output label") if label.text.strip() == "image").click()
    prompt = "show me a red circle in the centre of a blue background"
    conversation = conversation.then(second.turn()).then(Turn.user(prompt))
    third = direct.chat(conversation, **{**settings, "output": "image"})
    ask(browser, prompt, [first.text, second.text, third.text])
    WebDriverWait(browser, ANSWER_TIMEOUT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chatbot .bot-row img"))
    src = browser.find_elements(By.CSS_SELECTOR, "#chatbot .bot-row img")[-1].get_attribute("src")
    picture = Image.open(io.BytesIO(httpx.get(src, timeout=30).content))
    assert picture.format == "PNG"
    np.testing.assert_array_equal(np.asarray(picture.convert("RGB")), third.media["image"])

    shot = Path(os.environ.get("WEB_DEMO_SCREENSHOT") or tmp_path / "web_demo.png")
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 0


def test_clear_empties_the_conversation_and_rerun_needs_one(demo, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.CSS_SELECTOR, "#clear").click()
    WebDriverWait(browser, 30).until(lambda d: not bot_texts(d))
    browser.find_element(By.CSS_SELECTOR, "#rerun").click()
    WebDriverWait(browser, 30).until(lambda d: "Nothing to rerun yet." in d.find_element(By.TAG_NAME, "body").text)
