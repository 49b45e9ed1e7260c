"""The OpenAI-compatible backend against real local servers on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from langchain_core.messages import HumanMessage
from PIL import Image

from agent.llm import LLMConfig, make_chat_model, weights
from agent.llm.messages import data_url_to_image
from prompts import NormalityRules
from prompts.multimodal import build_inspection_messages


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """llama-cpp-python's own OpenAI-compatible server, serving the SmolLM2 GGUF."""
    try:
        gguf = weights.model_path("smollm2-135m")
    except weights.WeightsError as exc:
        pytest.skip(str(exc))
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--n_threads", "1"],
            stdout=sink, stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server not ready within 90 s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_real_local_server_answers(llama_server):
    chat = make_chat_model(LLMConfig(backend="openai", model="smollm2", base_url=llama_server, max_tokens=12))
    reply = chat.invoke([HumanMessage("Name one colour.")])
    assert isinstance(reply.content, str) and reply.content.strip()
    assert 0 < reply.usage_metadata["output_tokens"] <= 12  # the server honoured the token limit


class _Recorder(BaseHTTPRequestHandler):
    """Records each chat-completion request and answers like an OpenAI server would."""

    requests: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body})
        answer = json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": '{"rules": [], "verdict": "normal"}'}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):  # keep test output quiet
        pass


def test_images_travel_as_data_urls():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        chat = make_chat_model(LLMConfig(backend="openai", model="any-vlm", base_url=base_url, max_tokens=50))
        rules = NormalityRules.from_strings(["Exactly two screws.", "One nut."], category="screw_bag")
        query, reference = Image.new("RGB", (30, 20), "red"), Image.new("RGB", (20, 30), "blue")
        messages = build_inspection_messages(rules, query, [reference], mode="images")
        reply = chat.invoke(messages)
        assert '"verdict": "normal"' in reply.content
    finally:
        server.shutdown()
    request = _Recorder.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["max_tokens"] == 50 and request["body"]["temperature"] == 0.0
    user = request["body"]["messages"][1]
    urls = [block["image_url"]["url"] for block in user["content"] if block["type"] == "image_url"]
    assert all(url.startswith("data:image/png;base64,") for url in urls)
    assert [data_url_to_image(url).size for url in urls] == [(20, 30), (30, 20)]  # reference, then query
