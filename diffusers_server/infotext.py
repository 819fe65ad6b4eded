"""A1111 "parameters" infotext: writing it (``create_infotext``) and reading it back (``png-info``)."""

from __future__ import annotations

import json
import re
from typing import Any

_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def quote(value: object) -> str:
    """A1111's ``infotext_utils.quote``: json-quote values that contain ``,``, ``:`` or newlines."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def create(prompt: str, negative_prompt: str, params: dict[str, Any]) -> str:
    """``<prompt>\\nNegative prompt: <neg>\\n<key: value, ...>`` with ``None`` values left out."""
    text = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{text}".strip()


def parse(infotext: str) -> dict[str, Any]:
    """A1111's ``parse_generation_parameters`` (without its option-default filling)."""
    result: dict[str, Any] = {}
    prompt, negative = "", ""
    *lines, last = infotext.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    done_with_prompt = False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[len("Negative prompt:") :].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    result["Prompt"] = prompt
    result["Negative prompt"] = negative
    for key, raw in _PARAM.findall(last):
        value: str = raw
        if raw.startswith('"') and raw.endswith('"'):
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        size = _SIZE.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    result.setdefault("Clip skip", "1")
    return result
