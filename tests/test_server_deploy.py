"""The server as people deploy it: the chat page at `/` in a real headless browser (Debian's chromium and
chromium-driver, driven by Selenium), and two servers behind nginx (docs/nginx.conf) streaming through it.
Each test skips, saying why, where its program is absent; `.ci/run` installs them from Debian's packages."""

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from test_server import CHAT, MODEL, Server, free_port

ROOT = Path(__file__).parent.parent
CHROMIUM, DRIVER, NGINX = (shutil.which(p) or shutil.which(p, path="/usr/sbin:/usr/bin")
                           for p in ("chromium", "chromedriver", "nginx"))


@pytest.fixture(scope="module")
def server(model_path):
    s = Server(model_path(MODEL), "-np", 2, "-c", 512)
    yield s
    s.close()


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver (apt install chromium "
                                                      "chromium-driver; .ci/run does)")
def test_chat_page_streams_and_stops(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    try:
        driver.get(server.url + "/")
        box = driver.find_element(By.ID, "input")
        box.send_keys("Name three colours.")
        driver.find_element(By.ID, "send").click()
        replies = lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, ".assistant")]  # noqa: E731
        WebDriverWait(driver, 120).until(lambda d: d.find_element(By.ID, "send").is_enabled())
        first = replies(driver)[0]
        assert first.strip(), "no streamed reply"
        assert driver.find_elements(By.CSS_SELECTOR, ".user")[0].text == "> Name three colours."

        # a long reply, stopped while it streams: the text stops growing and the slot is freed. Each try starts a new
        # conversation (a long first reply can leave the 512-token context too little room for a story). The page
        # samples (no seed), so a story may still end before 20 characters: then try again, up to 3 times.
        for _ in range(3):
            driver.get(server.url + "/")
            driver.find_element(By.ID, "input").send_keys("Write a very long story about the sea.")
            driver.find_element(By.ID, "send").click()
            WebDriverWait(driver, 60, poll_frequency=0.1).until(
                lambda d: len(replies(d)[-1]) > 20 or d.find_element(By.ID, "send").is_enabled())
            if not driver.find_element(By.ID, "send").is_enabled():  # still streaming
                break
        else:
            pytest.fail(f"three stories ended before 20 characters: nothing to stop ({replies(driver)})")
        driver.find_element(By.ID, "stop").click()
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "send").is_enabled())
        stopped = replies(driver)[-1]
        time.sleep(1.0)
        assert replies(driver)[-1] == stopped  # nothing arrives after Stop
        driver.save_screenshot(str(tmp_path / "chat.png"))
        deadline = time.monotonic() + 10
        while httpx.get(server.url + "/health").json()["slots_idle"] < 2:
            assert time.monotonic() < deadline, "the stopped stream's slot stayed busy"
            time.sleep(0.1)
    finally:
        driver.quit()


@pytest.mark.skipif(not NGINX, reason="needs nginx (apt install nginx; .ci/run does)")
def test_two_servers_behind_nginx(server, model_path, tmp_path):
    import openai

    other = Server(model_path(MODEL), "-np", 2, "-c", 512)
    port = free_port()
    conf = (ROOT / "docs" / "nginx.conf").read_text()
    for key, value in {"prefix": tmp_path, "port_a": server.port, "port_b": other.port, "port": port}.items():
        conf = conf.replace("{{" + key + "}}", str(value))
    (tmp_path / "nginx.conf").write_text(conf)
    proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        direct = server.client().chat.completions.create(model="x", messages=CHAT, temperature=0, max_tokens=16)
        before = [httpx.get(s.url + "/health").json()["decoded_tokens"] for s in (server, other)]
        for _ in range(4):
            stream = client.chat.completions.create(model="x", messages=CHAT, temperature=0, max_tokens=16,
                                                    stream=True)
            chunks = [c for c in stream if c.choices]
            assert len(chunks) > 3  # streamed in pieces, not one buffered block
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == direct.choices[0].message.content
        after = [httpx.get(s.url + "/health").json()["decoded_tokens"] for s in (server, other)]
        assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)  # both servers served
    finally:
        proc.terminate()
        proc.wait(10)
        other.close()
