"""The web chat UI (Gradio): upload an image, pick a category or paste rules, read the verdict, ask follow-ups.

One agent serves every browser session (models load once); each session keeps
its own :class:`agent.chat.ChatSession` (rules, references, last verdict).
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Callable, Optional

from .text import format_value

HOST = "127.0.0.1"
CUSTOM = "(custom rules below)"


class PortInUseError(OSError):
    """The requested port is taken."""


def check_port_free(port: int, host: str = HOST) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"Port {port} on {host} is already in use ({exc.strerror or exc}); "
                f"stop the other server or choose another with --port."
            ) from exc


class _SharedAgent:
    """Builds the agent on first use, once, even when two sessions ask at the same time."""

    def __init__(self, factory: Callable[[], Any]):
        self._factory = factory
        self._agent = None
        self._lock = threading.Lock()

    def __call__(self):
        with self._lock:
            if self._agent is None:
                self._agent = self._factory()
        return self._agent


def _findings_rows(verdict) -> list[list[str]]:
    return [[f.rule_id, f.rule_text, "pass" if f.passed else "FAIL", format_value(f.expected), format_value(f.observed),
             f.explanation] for f in verdict.findings]


def verdict_markdown(verdict) -> str:
    """The verdict as Markdown: a bold decision line, the explanation, then one bullet per finding."""
    from .chat import verdict_text

    head, *rest = verdict_text(verdict).splitlines()
    prose = [ln for ln in rest if not ln.startswith("- ")]
    bullets = [ln for ln in rest if ln.startswith("- ")]
    return "\n\n".join([f"**{head}**", *prose, "\n".join(bullets)]).strip()


def build_app(agent_factory: Optional[Callable[[], Any]] = None):
    import gradio as gr

    from detectors.images import ImageInputError
    from prompts import RulesError, builtin_categories

    from .audit import default_agent_factory
    from .chat import ChatSession, verdict_text

    shared = _SharedAgent(agent_factory or default_agent_factory)
    categories = builtin_categories()

    def new_session() -> ChatSession:
        return ChatSession(agent_factory=shared, allow_server_paths=False)

    def on_inspect(image, category, rules_text, references, session, history):
        session = session or new_session()
        history = list(history or [])
        empty = ("", None, [], "", session, history)
        if not image:
            return ("**Error:** upload an image first.", *empty[1:])
        try:
            cat = None if category in (None, "", CUSTOM) else category
            if rules_text and rules_text.strip():
                session.set_rules(rules_text, category=cat)
            elif cat:
                session.set_rules(None, category=cat)
            else:
                return ("**Error:** pick a category or paste rules.", *empty[1:])
            session.clear_references()
            if references:
                session.add_references([str(getattr(r, "name", r)) for r in references])
            reply = session.inspect(image)
        except (RulesError, ImageInputError) as exc:
            return (f"**Error:** {exc}", *empty[1:])
        v = reply.verdict
        if v is None:
            return (reply.text, *empty[1:])
        history += [{"role": "user", "content": "inspect the uploaded image"},
                    {"role": "assistant", "content": verdict_text(v)}]
        program = v.program.source if v.program else "# no program: " + (v.logic_note or "logic unavailable")
        return (verdict_markdown(v), reply.overlay, _findings_rows(v), program, session, history)

    def on_chat(message, session, history):
        session = session or new_session()
        history = list(history or [])
        if not message or not message.strip():
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), session, history, ""
        reply = session.handle(message)
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": reply.text}]
        if reply.verdict is not None:  # 'inspect PATH' typed in the chat
            v = reply.verdict
            return (verdict_markdown(v), reply.overlay, _findings_rows(v),
                    v.program.source if v.program else "", history, session, history, "")
        return gr.update(), gr.update(), gr.update(), gr.update(), history, session, history, ""

    with gr.Blocks(title="logiscan") as demo:
        gr.Markdown("# logiscan\nFind logical anomalies — missing parts, wrong counts, wrong colours — and see why.")
        session = gr.State(None)
        history = gr.State([])
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", label="Image", elem_id="image-input")
                category = gr.Dropdown(choices=[CUSTOM, *categories], value=categories[0] if categories else CUSTOM,
                                       label="Category", elem_id="category")
                rules = gr.Textbox(lines=5, label="Rules (optional; one per line — replaces the category's pack)",
                                   elem_id="rules")
                refs = gr.File(file_count="multiple", file_types=["image"], type="filepath",
                               label="Reference images of normal products (optional)", elem_id="references")
                run = gr.Button("Inspect", variant="primary", elem_id="inspect")
            with gr.Column(scale=2):
                verdict = gr.Markdown("Upload an image and press **Inspect**.", elem_id="verdict")
                overlay = gr.Image(label="Overlay: heat-map, parts, failed findings", elem_id="overlay",
                                   interactive=False)
                findings = gr.Dataframe(headers=["rule", "text", "result", "expected", "observed", "why"],
                                        label="Findings", elem_id="findings", interactive=False, wrap=True)
                program = gr.Code(label="LogiCode program", language="python", elem_id="program", interactive=False)
        chatbot = gr.Chatbot(label="Ask about the verdict", elem_id="chat", height=320)
        with gr.Row():
            msg = gr.Textbox(placeholder="why did rule 2 fail? · how many screws? · show me the program",
                             show_label=False, scale=4, elem_id="chat-input")
            send = gr.Button("Send", scale=1, elem_id="chat-send")

        # One shared agent: every listener that can run it joins one concurrency group, so an
        # inspection and a chat "inspect PATH" never interleave on the agent's last verdict.
        run.click(on_inspect, [image, category, rules, refs, session, history],
                  [verdict, overlay, findings, program, session, history],
                  concurrency_id="agent", concurrency_limit=1).then(
            lambda h: h, history, chatbot)
        for trigger in (msg.submit, send.click):
            trigger(on_chat, [msg, session, history],
                    [verdict, overlay, findings, program, chatbot, session, history, msg],
                    concurrency_id="agent", concurrency_limit=1)
    return demo


def serve(port: int = 7860, *, agent_factory: Optional[Callable[[], Any]] = None, block: bool = True):
    """Serve the UI on 127.0.0.1:``port``; :class:`PortInUseError` when the port is taken."""
    check_port_free(port)
    demo = build_app(agent_factory)
    demo.queue(default_concurrency_limit=1)  # one CPU agent: inspections run one at a time
    demo.launch(server_name=HOST, server_port=port, prevent_thread_lock=not block, quiet=False, show_error=True,
                footer_links=[], ssr_mode=False)
    return demo
