"""tools/chat_window.py, the Tkinter example, on a virtual display (Debian's xvfb): a typed message gets a streamed
reply, the window keeps handling events while the model generates, and Stop ends a reply. A screenshot of the window
is kept in the test's temporary directory. Skips, saying why, without Xvfb (.ci/run installs it)."""

import os
import shutil
import subprocess
import time

import pytest
from hf_models import load_tool

XVFB = shutil.which("Xvfb")
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def display():
    if XVFB is None:
        pytest.skip("needs Xvfb (apt install xvfb; .ci/run does)")
    for n in range(90, 110):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"):
            break
    proc = subprocess.Popen([XVFB, f":{n}", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if os.path.exists(f"/tmp/.X11-unix/X{n}"):
            break
        time.sleep(0.05)
    old = os.environ.get("DISPLAY")
    os.environ["DISPLAY"] = f":{n}"
    yield f":{n}"
    proc.terminate()
    proc.wait(10)
    if old is None:
        os.environ.pop("DISPLAY", None)
    else:
        os.environ["DISPLAY"] = old


def _pump(root, until, timeout: float) -> float:
    """Run the Tk event loop until `until()`; returns the longest gap between two event-loop turns (s)."""
    deadline, last, gap = time.monotonic() + timeout, time.monotonic(), 0.0
    while not until():
        assert time.monotonic() < deadline, "timed out"
        root.update()
        now = time.monotonic()
        gap, last = max(gap, now - last), now
        time.sleep(0.005)
    return gap


def test_window_streams_and_stops(display, model_path, tmp_path):
    import tkinter as tk

    from runtime import LLM

    chat_window = load_tool("chat_window")
    llm = LLM(model_path(MODEL), n_ctx=1024, n_threads=1)
    root = tk.Tk()
    try:
        app = chat_window.ChatWindow(root, llm, max_tokens=400)
        app.entry.insert(0, "Name three colours.")
        app.send_button.invoke()
        assert app.busy and str(app.stop_button["state"]) == "normal"
        gap = _pump(root, lambda: not app.busy, 120)
        assert app.reply.strip(), "no reply"
        assert f"you: Name three colours.\nmodel: {app.reply}" in app.log.get("1.0", tk.END)
        assert gap < 0.5, f"the window did not handle events for {gap:.2f} s while generating"

        llm.reset()
        app.entry.insert(0, "Write a very long story about the sea.")
        app.send_button.invoke()
        _pump(root, lambda: len(app.reply) > 40, 60)
        app.stop_button.invoke()
        _pump(root, lambda: not app.busy, 10)
        stopped = app.reply
        assert llm.last_stats.stop_reason == "cancelled"
        _pump(root, lambda: True, 1)
        time.sleep(0.3)
        root.update()
        assert app.reply == stopped and str(app.send_button["state"]) == "normal"

        from PIL import ImageGrab

        shot = ImageGrab.grab(xdisplay=display)
        shot.save(tmp_path / "chat_window.png")
        lo, hi = shot.convert("L").getextrema()
        assert hi - lo > 50  # the window drew something (text, buttons) on the empty screen
    finally:
        root.destroy()
