"""Chat rendering with the base's template (transformers' tokenizers only): token counts, prompt cutting, the training template."""
from __future__ import annotations

from typing import Optional

# ChatML as written by SmolLM2 (and many others): one expression renders every message.
_CHATML_MESSAGE = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
# The same output, with the assistant's answer and its end-of-turn token inside {% generation %}, so
# that `return_assistant_tokens_mask` marks exactly what the model must learn to say (and to stop).
_CHATML_MESSAGE_TRAINING = (
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}" + _CHATML_MESSAGE + "{% endif %}"
)


class ChatTemplateError(ValueError):
    """The base model's tokenizer has no usable chat template."""


def training_chat_template(tokenizer) -> Optional[str]:
    """A template that renders like the base's and marks assistant tokens; None if it already does."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if not template:
        raise ChatTemplateError("the base model's tokenizer has no chat template; use an instruct/chat model as llm.base_model")
    if isinstance(template, dict):
        template = template["default"]
    if has_generation_markers(template):
        return None
    if _CHATML_MESSAGE in template:
        return template.replace(_CHATML_MESSAGE, _CHATML_MESSAGE_TRAINING)
    try:
        return get_training_chat_template(tokenizer)
    except ValueError as exc:
        raise ChatTemplateError(f"cannot mark assistant tokens in this chat template for loss masking: {exc}") from None


def n_tokens(tokenizer, messages: list[dict], generation_prompt: bool = False) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def cut_prompt(tokenizer, messages: list[dict], max_tokens: int) -> list[dict]:
    """Drop the oldest turns (never a system message or the last user turn) until the prompt fits.

    May still be longer than `max_tokens` when the last user turn alone is; the caller decides.
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    while n_tokens(tokenizer, system + turns, generation_prompt=True) > max_tokens:
        users = [i for i, m in enumerate(turns) if m["role"] == "user"]
        if len(users) < 2:
            break
        turns = turns[users[1]:]  # from the next user turn on
    return system + turns


def pair_tokens(tokenizer, prompt: list[dict], responses: list[str]) -> int:
    """Tokens of the prompt plus the longest response, as the trainers render them."""
    return max(n_tokens(tokenizer, prompt + [{"role": "assistant", "content": r}]) for r in responses)
