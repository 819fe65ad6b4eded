"""A1111 v1.10.1's prompt-level syntax: comments, extra-network tags, ``AND``/weights, prompt editing.

Text in, text out; tokens and tensors come later (``prompts.py``, ``conditioning.py``). The order is A1111's:
``#`` comments are stripped, then ``<kind:args>`` tags are taken out of the positive prompt (the negative
keeps them as text), then the positive prompt is split at ``AND`` into weighted parts, and every part (and
the negative) becomes a schedule of texts over the sampling steps:

- ``[from:to:when]``, ``[to:when]``, ``[from::when]`` — prompt editing; ``when`` with a ``.`` is a fraction
  of the steps, otherwise a step number;
- ``[a|b|c]`` — alternation, one option per step;
- nested freely; a prompt the grammar rejects is used unchanged for every step.

Hires pass (A1111's default timelines): integer ``when`` counts on from the first pass's steps and fractions
run from 1.0 to 2.0 over the hires steps, so ``[a:b:0.5]`` is already ``b`` during the whole hires pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, lru_cache

import lark

# The prompt grammar (A1111's syntax). Expansion order matters: lark's Earley parser resolves ambiguous
# prompts by it, and the corpus tests pin the result to A1111's.
_GRAMMAR = r"""
!start: (text | /[][():]/+)*
text: (weighted | edit | alternation | literal | SPACE)*
!weighted: "(" text ")"
         | "(" text ":" text ")"
         | "[" text "]"
edit: "[" [text ":"] text ":" [SPACE] WHEN [SPACE] "]"
alternation: "[" text ("|" [text])+ "]"
SPACE: /\s+/
literal: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> WHEN
"""


class PromptSyntaxError(ValueError):
    """A prompt A1111 cannot use (A1111 itself fails on it); the message names the bad text."""


# ---- comments ----

_WHOLE_LINE_COMMENT = re.compile(r"(^|\n)#[^\n]*(\n|$)")
_TRAILING_COMMENT = re.compile(r"#[^\n]*(\n|$)")


def strip_comments(text: str) -> str:
    """A1111's ``enable_prompt_comments``: a ``#`` comment line, and ``#`` to the end of a line, become a
    line break (whole-line comments first, then the rest, as A1111 does)."""
    return _TRAILING_COMMENT.sub("\n", _WHOLE_LINE_COMMENT.sub("\n", text))


# ---- extra networks ----

_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class NetworkTag:
    """One ``<kind:arg1:arg2...>`` tag. An argument with exactly one ``=`` is named, any other positional."""

    kind: str
    items: tuple[str, ...]

    @property
    def positional(self) -> list[str]:
        return [item for item in self.items if item.count("=") != 1]

    @property
    def named(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.items if item.count("=") == 1)

    @property
    def text(self) -> str:
        return f"<{self.kind}:{':'.join(self.items)}>"


def extract_networks(prompt: str) -> tuple[str, list[NetworkTag]]:
    """Take every ``<kind:args>`` tag out of ``prompt`` (the positive prompt only: A1111 leaves the
    negative's tags in its text)."""
    tags: list[NetworkTag] = []

    def take(match: re.Match[str]) -> str:
        tags.append(NetworkTag(match.group(1), tuple(match.group(2).split(":"))))
        return ""

    return _NETWORK_TAG.sub(take, prompt), tags


@dataclass(frozen=True)
class LoraRequest:
    """A LoRA as A1111's Lora extension reads its tag: name, text-encoder/UNet multipliers, dyn dim."""

    name: str
    te: float
    unet: float
    dyn: int | None
    tag: str


def lora_requests(tags: list[NetworkTag]) -> list[LoraRequest]:
    """The ``lora``/``lyco`` tags' arguments as A1111 reads them: ``name[:te[:unet[:dyn]]]`` positionally,
    ``te=``/``unet=``/``dyn=`` by name (the name wins; keys are not trimmed, so ``<lora:x: te=1>`` sets
    nothing), unet defaulting to te and te to 1.0.

    Raises :class:`PromptSyntaxError` for an argument A1111 cannot read (``<lora:x:abc>``): A1111 then
    applies *none* of the prompt's LoRAs and still generates.
    """
    requests: list[LoraRequest] = []
    for tag in tags:
        if tag.kind not in ("lora", "lyco"):
            continue
        positional, named = tag.positional, tag.named
        try:
            name = positional[0]
            te = float(positional[1]) if len(positional) > 1 else 1.0
            te = float(named.get("te", te))
            unet = float(positional[2]) if len(positional) > 2 else te
            unet = float(named.get("unet", unet))
            dyn = int(positional[3]) if len(positional) > 3 else None
            dyn = int(named["dyn"]) if "dyn" in named else dyn
        except IndexError:
            raise PromptSyntaxError(f"{tag.text} names no LoRA (its first argument is named)") from None
        except ValueError as exc:
            raise PromptSyntaxError(f"{tag.text} has an argument that is not a number ({exc})") from None
        requests.append(LoraRequest(name, te, unet, dyn, tag.text))
    return requests


# ---- AND and weights ----

_AND = re.compile(r"\bAND\b")
_PART_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Composable-diffusion parts: split at the word ``AND``; each part's trailing ``:number`` is its
    weight (even with no ``AND`` at all: ``a cat:1.5`` is ``a cat`` at weight 1.5)."""
    parts = []
    for part in _AND.split(prompt):
        match = _PART_WEIGHT.search(part)
        assert match is not None  # the pattern matches every string
        text, weight = match.groups()
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


# ---- prompt editing and alternation ----


@dataclass(frozen=True)
class _Edit:
    before: _Node | None
    after: _Node
    when: str


@dataclass(frozen=True)
class _Alternation:
    options: tuple[_Node | None, ...]


_Node = str | tuple["_Node", ...] | _Edit | _Alternation


@cache
def _parser() -> lark.Lark:
    return lark.Lark(_GRAMMAR)


def _to_node(tree: lark.Tree[lark.Token] | lark.Token | None) -> _Node | None:
    """The parse tree as plain text, sequences, edits and alternations."""
    if tree is None or isinstance(tree, lark.Token):
        return None if tree is None else str(tree)
    if tree.data == "literal":
        return str(tree.children[0])
    if tree.data == "edit":
        before, after, _, when, _ = tree.children
        after_node = _to_node(after)
        assert after_node is not None
        return _Edit(_to_node(before), after_node, str(when))
    if tree.data == "alternation":
        return _Alternation(tuple(_to_node(child) for child in tree.children))
    return tuple(node for node in map(_to_node, tree.children) if node is not None)


@lru_cache(maxsize=1024)
def _parse(prompt: str) -> _Node | None:
    try:
        return _to_node(_parser().parse(prompt))
    except lark.exceptions.LarkError:
        return None


def _walk(node: _Node | None) -> list[_Edit | _Alternation]:
    found: list[_Edit | _Alternation] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, tuple):
            stack.extend(item)
        elif isinstance(item, _Edit):
            found.append(item)
            stack += [item.before, item.after]
        elif isinstance(item, _Alternation):
            found.append(item)
            stack.extend(item.options)
    return found


def _render(node: _Node | None, step: int, when: dict[int, int]) -> str:
    if node is None:
        return ""
    if isinstance(node, str):
        return node
    if isinstance(node, tuple):
        return "".join(_render(child, step, when) for child in node)
    if isinstance(node, _Edit):
        return _render(node.before if step <= when[id(node)] else node.after, step, when)
    return _render(node.options[(step - 1) % len(node.options)], step, when)


def prompt_schedule(
    prompt: str, steps: int, hires_steps: int | None = None, old_scheduling: bool = False
) -> list[tuple[int, str]]:
    """``[(end_at_step, text), ...]``: ``text`` is used up to and including step ``end_at_step``.

    ``steps`` is the pass's step count as A1111 counts it (doubled for second-order samplers); with
    ``hires_steps`` it is the first pass's and the schedule is the hires pass's. ``old_scheduling`` is
    A1111's ``use_old_scheduling`` (a ``when`` below 1 is a fraction, otherwise a step; no hires offset).
    """
    if hires_steps is None or old_scheduling:
        int_offset, fraction_offset, total = 0, 0.0, steps
    else:
        int_offset, fraction_offset, total = steps, 1.0, hires_steps
    tree = _parse(prompt)
    if tree is None:
        return [(total, prompt)]
    switch_at: set[int] = {total}
    when: dict[int, int] = {}
    for node in _walk(tree):
        if isinstance(node, _Alternation):
            switch_at.update(range(1, total + 1))
            continue
        value = float(node.when)
        if old_scheduling:
            value = value * total if value < 1 else value
        elif "." in node.when:
            value = (value - fraction_offset) * total
        else:
            value -= int_offset
        when[id(node)] = min(total, int(value))
        if when[id(node)] >= 1:
            switch_at.add(when[id(node)])
    return [(step, _render(tree, step, when)) for step in sorted(switch_at)]
