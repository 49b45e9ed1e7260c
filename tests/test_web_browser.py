"""The web chat UI, end to end in a real headless Chromium driven by Playwright.

The server runs in a subprocess on a free port; the browser uploads an image,
presses Inspect, reads the verdict, asks a follow-up in the chat and saves a
screenshot.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                       "(apt-get install chromium, or `make browser`); skipping the browser test"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


def _start(command: list[str], port: int):
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(f"http://127.0.0.1:{port}/", proc)
    except Exception:
        proc.kill()
        raise
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


def _inspect_in_page(browser, port: int, image: Path, rules: str, shots: Path, timeout_ms: int,
                     category: str | None = None, references: list[Path] | None = None):
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    # Gradio keeps a connection open, so "networkidle" never comes: wait for the app itself
    page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
    page.locator("#inspect").wait_for(timeout=60_000)
    page.locator("#image-input input[type=file]").set_input_files(str(image))
    if category:
        box = page.locator("#category input")
        box.click()
        box.fill(category)
        page.get_by_role("option", name=category, exact=True).click()
    if rules:
        page.locator("#rules textarea").fill(rules)
    if references:
        page.locator("#references input[type=file]").set_input_files([str(r) for r in references])
        page.locator(f'#references td.filename[aria-label="{references[-1].name}"]').wait_for(timeout=30_000)
    # wait for the upload to land before pressing Inspect
    page.locator("#image-input img").first.wait_for(timeout=30_000)
    page.locator("#inspect").click()
    verdict = page.locator("#verdict")
    verdict.get_by_text("Verdict:").wait_for(timeout=timeout_ms)
    text = verdict.inner_text()
    page.screenshot(path=str(shots / "verdict.png"), full_page=True)
    return text, page


def test_upload_inspect_and_chat_with_fake_perception(browser, tmp_path):
    """Fast path: the UI wiring, with the pixel-counting stand-in agent from ``surface_fakes``."""
    from tests.surface_fakes import draw

    image = draw(tmp_path / "three.png", 3, size=96, seed=2)
    port = _free_port()
    code = ("from agent.web import serve; from tests.surface_fakes import make_fake_agent; "
            f"serve({port}, agent_factory=make_fake_agent)")
    proc = _start([sys.executable, "-c", code], port)
    try:
        text, page = _inspect_in_page(browser, port, image, "There is exactly one red square.", tmp_path, 60_000)
        assert "ANOMALOUS" in text and "observed 3" in text
        assert "def check(scene, references)" in page.locator("#program").inner_text()
        assert "FAIL" in page.locator("#findings").inner_text()

        page.locator("#chat-input textarea").fill("why did rule 1 fail?")
        page.locator("#chat-send").click()
        page.locator("#chat").get_by_text("Expected 1; observed 3.").wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)
        assert (tmp_path / "verdict.png").stat().st_size > 10_000
        keep = os.environ.get("LOGISCAN_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for name in ("verdict.png", "chat.png"):
                (Path(keep) / f"fake-{name}").write_bytes((tmp_path / name).read_bytes())
    finally:
        _stop(proc)


def test_port_in_use_is_refused_with_a_message(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "agent.cli", "serve", "--port", str(port)], cwd=REPO,
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 1
    assert f"Port {port} on 127.0.0.1 is already in use" in res.stderr


@pytest.mark.slow
def test_upload_inspect_with_the_real_agent(browser, tmp_path):
    """`logiscan serve` with the real Agent: real perception, sandbox and fusion (pinned program, no LLM wait)."""
    from tests.surface_fakes import real_agent_config, synth_screw_bag

    cat = synth_screw_bag(tmp_path / "data")
    config = real_agent_config(tmp_path / "cfg")
    image = sorted((cat / "test" / "logical_anomalies").glob("*.png"))[0]
    refs = sorted((cat / "train" / "good").glob("*.png"))
    port = _free_port()
    proc = _start([sys.executable, "-m", "agent.cli", "serve", "--port", str(port), "--config", str(config)], port)
    try:
        text, page = _inspect_in_page(browser, port, image, "", tmp_path, 300_000, category="screw_bag",
                                      references=refs)
        assert "Verdict: ANOMALOUS" in text or "Verdict: NORMAL" in text
        findings = page.locator("#findings").inner_text()
        assert "The bag holds exactly two screws." in findings  # the screw_bag pack was used
        assert "composition" in findings and "structural" in findings
        assert "def check(scene, references)" in page.locator("#program").inner_text()
        page.locator("#chat-input textarea").fill("show me the program")
        page.locator("#chat-send").click()
        page.locator("#chat").get_by_text("LogiCode program (pinned").wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "real.png"), full_page=True)
        keep = os.environ.get("LOGISCAN_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            for name in ("verdict.png", "real.png"):
                (Path(keep) / f"real-{name}").write_bytes((tmp_path / name).read_bytes())
    finally:
        _stop(proc)
