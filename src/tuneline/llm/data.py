"""LLM data: read chat/preference JSON Lines (formats: README, "LLM fine-tuning"; grpo/rloo read only the
prompts, so {"prompt": …} lines will do); an HH-RLHF transcript ("Human: …\\n\\nAssistant: …") becomes a list
of messages, any other string prompt one user message.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from tuneline.tables import DataError, text_key

ROLES = ("system", "user", "assistant")
FIELDS = {"chat_sft": ("messages", "prompt", "response"), "preference": ("prompt", "chosen", "rejected")}
EXPECTED = {"chat_sft": "'messages' (a list of {role, content}) or 'prompt' and 'response'",
            "preference": "'prompt', 'chosen' and 'rejected'"}
_TURN = re.compile(r"\n\n(?=(?:Human|Assistant):)")


class LLMDataError(DataError):
    """An LLM data file cannot be read; the message names the file, the line and the problem."""


def read_jsonl(path: Path, task: str) -> pd.DataFrame:
    """One row per line, with the task's fields kept as JSON text (faithful; decoded by `field_value`)."""
    path = Path(path)
    if not path.is_file():
        raise LLMDataError(f"{path}: file not found (data.source)")
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LLMDataError(f"{path}: line {line_no} is not valid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise LLMDataError(f"{path}: line {line_no} is a JSON {type(obj).__name__}, expected an object with {EXPECTED[task]}")
            rows.append({"line": line_no, **{k: json.dumps(obj[k], ensure_ascii=False) for k in FIELDS[task] if k in obj}})
    if not rows:
        raise LLMDataError(f"{path}: no JSON lines; expected objects with {EXPECTED[task]}")
    return pd.DataFrame(rows)


def field_value(text: Optional[str]) -> Any:
    """Decode a raw field (JSON text) back to its value; missing stays None."""
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return None
    return json.loads(text)


def transcript_to_messages(text: str) -> list[dict[str, str]]:
    """'Human: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:' -> user/assistant messages (trailing empty turn dropped)."""
    if not text.lstrip().startswith(("Human:", "Assistant:")):
        return [{"role": "user", "content": text.strip()}]
    messages = []
    for part in _TURN.split(text.strip()):
        speaker, _, content = part.partition(":")
        messages.append({"role": "user" if speaker.strip() == "Human" else "assistant", "content": content.strip()})
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def to_messages(value: Any) -> list[dict[str, str]]:
    """A prompt given as text, transcript or message list -> a message list."""
    if isinstance(value, str):
        return transcript_to_messages(value)
    return [{"role": m.get("role"), "content": m.get("content")} for m in value]


def response_text(value: Any) -> Any:
    """A response given as text or as [{'role': 'assistant', 'content': …}] -> its text."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        return value[0].get("content")
    return value


def conversation_problem(messages: Any, needs_final_assistant: bool) -> Optional[str]:
    """Why a message list can't be trained on, or None."""
    if not isinstance(messages, list) or not messages:
        return "not a non-empty list of messages"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"message {i}: role must be one of {list(ROLES)}, got {m.get('role') if isinstance(m, dict) else m!r}"
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            return f"message {i} ({m['role']}): empty content"
    if not any(m["role"] == "user" for m in messages):
        return "no user message"
    if needs_final_assistant and messages[-1]["role"] != "assistant":
        return "the last message must be the assistant's answer"
    if not needs_final_assistant and messages[-1]["role"] == "assistant":
        return "a prompt must end with a user message"
    return None


def sft_conversation(row: dict) -> Any:
    """The full conversation of an SFT row (messages, or prompt + response)."""
    messages = field_value(row.get("messages"))
    if messages is not None:
        return messages
    prompt, response = field_value(row.get("prompt")), response_text(field_value(row.get("response")))
    if prompt is None or not isinstance(response, str):
        return None
    return to_messages(prompt) + [{"role": "assistant", "content": response}]


def prompt_key(messages: list[dict]) -> str:
    return text_key(" ".join(f"{m['role']}: {m['content']}" for m in messages))


def last_user_turn(messages: list[dict]) -> list[dict]:
    """The shortest prompt a conversation can be cut to: system message (if any) + last user message."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return system + messages[last_user:]
