"""Conversion of LangChain messages (with image content blocks) for each backend.

Images may arrive in any of the shapes LangChain uses: the OpenAI form
``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``, the
standard form ``{"type": "image", "base64": ..., "mime_type": ...}`` / ``{"url": ...}``,
or, for in-process backends, ``{"type": "image", "image": <PIL.Image>}``.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from PIL import Image

from detectors.images import ImageInputError, load_image

log = logging.getLogger(__name__)

#: What a text-only model reads where the prompt had an image.
IMAGE_OMITTED_NOTE = "[image omitted: this model reads text only; rely on the scene description]"


class MessageFormatError(ValueError):
    """A message or content block cannot be converted for the chosen backend."""


def image_to_data_url(image: Any, *, fmt: str = "PNG") -> str:
    """Encode any accepted image input (path, PIL, array, bytes) as a base64 data URL."""
    pil = load_image(image)
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt)
    mime = "image/jpeg" if fmt.upper() in ("JPG", "JPEG") else f"image/{fmt.lower()}"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def data_url_to_image(url: str) -> Image.Image:
    """Decode a ``data:image/...;base64,`` URL. Remote URLs are refused: nothing is fetched."""
    if not url.startswith("data:"):
        raise MessageFormatError(
            f"image URL {url[:60]!r} is not a data URL; in-process models accept only inline images "
            "(data URLs, base64 blocks or PIL images)"
        )
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise MessageFormatError("image data URL is not base64-encoded")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageFormatError(f"image data URL has invalid base64: {exc}") from exc
    try:
        return load_image(raw)
    except ImageInputError as exc:
        raise MessageFormatError(f"image data URL does not hold a readable image: {exc}") from exc


def block_image(block: dict) -> Image.Image | None:
    """The image of one content block, or None when the block is not an image."""
    kind = block.get("type")
    if kind == "image_url":
        ref = block.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(url, str):
            raise MessageFormatError("image_url block without a url")
        return data_url_to_image(url)
    if kind == "image":
        if isinstance(block.get("image"), Image.Image):
            return load_image(block["image"])
        data = block.get("base64") or (block.get("data") if block.get("source_type") == "base64" else None)
        if data:
            mime = block.get("mime_type") or "image/png"
            return data_url_to_image(f"data:{mime};base64,{data}")
        url = block.get("url") or (block.get("data") if block.get("source_type") == "url" else None)
        if url:
            return data_url_to_image(url)
        raise MessageFormatError(f"image block has no image, base64 or url: keys {sorted(block)}")
    return None


def iter_parts(content: str | list) -> list[tuple[str, Any]]:
    """Split message content into ("text", str) and ("image", PIL.Image) parts, in order."""
    if isinstance(content, str):
        return [("text", content)] if content else []
    parts: list[tuple[str, Any]] = []
    for block in content:
        if isinstance(block, str):
            parts.append(("text", block))
        elif isinstance(block, dict):
            if block.get("type") == "text":
                parts.append(("text", str(block.get("text", ""))))
            elif block.get("type") in ("image_url", "image"):
                parts.append(("image", block))
            else:
                raise MessageFormatError(f"unsupported content block type {block.get('type')!r}")
        else:
            raise MessageFormatError(f"unsupported content block of type {type(block).__name__}")
    return parts


def role_of(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ToolMessage):
        return "tool"
    raise MessageFormatError(f"unsupported message type {type(message).__name__}")


def to_text_only_dicts(messages: list[BaseMessage]) -> list[dict]:
    """OpenAI-style dicts with plain string content; image blocks become a short note."""
    out: list[dict] = []
    dropped = 0
    for message in messages:
        pieces: list[str] = []
        for kind, value in iter_parts(message.content):
            if kind == "text":
                pieces.append(value)
            else:
                dropped += 1
                pieces.append(IMAGE_OMITTED_NOTE)
        entry: dict[str, Any] = {"role": role_of(message), "content": "\n".join(pieces)}
        if isinstance(message, AIMessage) and message.tool_calls:
            entry["tool_calls"] = [
                {"id": call.get("id") or f"call_{i}", "type": "function",
                 "function": {"name": call["name"], "arguments": json.dumps(call["args"])}}
                for i, call in enumerate(message.tool_calls)
            ]
        if isinstance(message, ToolMessage):
            entry["tool_call_id"] = message.tool_call_id
        out.append(entry)
    if dropped:
        log.info("text-only model: dropped %d image block(s) from the prompt", dropped)
    return out


def to_vlm_conversation(messages: list[BaseMessage]) -> tuple[list[dict], list[Image.Image]]:
    """A processor chat-template conversation plus the images, in the order they appear."""
    conversation: list[dict] = []
    images: list[Image.Image] = []
    for message in messages:
        content: list[dict] = []
        for kind, value in iter_parts(message.content):
            if kind == "text":
                content.append({"type": "text", "text": value})
            else:
                image = block_image(value)
                images.append(image)
                content.append({"type": "image"})
        conversation.append({"role": role_of(message), "content": content})
    return conversation, images


def content_text(content: str | list) -> str:
    """The text of a message's content (text blocks joined; other blocks ignored)."""
    if isinstance(content, str):
        return content
    return "".join(
        b if isinstance(b, str) else str(b.get("text", ""))
        for b in content
        if isinstance(b, str) or (isinstance(b, dict) and b.get("type") == "text")
    )
