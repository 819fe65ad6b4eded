"""The exact size of the JSON RunPod will send, without building it.

RunPod refuses a result above 20 MB (``/runsync``) and its own size tip measures the wrong thing
(``sys.getsizeof`` of the dict), so the output is measured here, string by string.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any

# Strings shorter than this are sized with the C encoder; longer ones take the copy-light path.
_LONG_STRING = 4096
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def serialized_size(output: Any) -> int:
    """Exact ``len(json.dumps(output).encode())`` without building the document.

    RunPod itself sends ``ensure_ascii=False`` JSON, which is never longer than this measure, so it
    is a safe upper bound. Long ASCII strings (base64 images) are sized with one C-speed pass that
    copies nothing bigger than the string itself; everything else goes through the C encoder.
    """
    if isinstance(output, str):
        return _string_size(output)
    if isinstance(output, dict):
        if not output:
            return 2
        size = 2 + 2 * (len(output) - 1)  # braces, ", " between items
        for key, value in output.items():
            size += _key_size(key) + 2 + serialized_size(value)  # ": "
        return size
    if isinstance(output, list | tuple):
        if not output:
            return 2
        return 2 + 2 * (len(output) - 1) + sum(serialized_size(item) for item in output)
    return len(json.dumps(output))  # numbers, bools, None: ASCII, one char per byte


def _key_size(key: Any) -> int:
    if isinstance(key, str):
        return _string_size(key)
    return len(json.dumps({key: 0})) - len("{: 0}")  # json's own coercion of int/float/bool keys


def _string_size(text: str) -> int:
    # isascii() is O(1) in CPython; the translate pass deletes the base64 alphabet at C speed.
    if (
        len(text) >= _LONG_STRING
        and text.isascii()
        and not text.encode("ascii").translate(None, _BASE64_ALPHABET)
    ):
        return len(text) + 2  # base64 needs no escaping
    return len(encode_basestring_ascii(text))
