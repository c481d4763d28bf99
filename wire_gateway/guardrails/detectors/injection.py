"""Prompt-injection detectors: text that addresses the model instead of informing it, in tool
results, tool descriptions and schemas, and server instructions (docs/guardrails.md).

What fires is the *shape* of an injection, not its topic: an imperative aimed at the model's
instructions ("ignore all previous instructions"), a persona switch or a request for the system
prompt, characters a reader cannot see, and the markup of tool-poisoning attacks. Prose that
talks about these things ("you can ignore the previous warning", "the system prompt is set in
settings.yaml") is left alone; the lines drawn are written next to each rule.

The two phrase detectors share one scan of the string (`_phrases`, where their rules and the
lines they draw are written); the other two work on characters and markup and say their lines
below.
"""
from __future__ import annotations

import re
import unicodedata

from wire_gateway.guardrails.detectors._phrases import phrases
from wire_gateway.guardrails.detectors._text import lowered, merged
from wire_gateway.guardrails.detectors.base import Detector, Span

_rx = re.compile


def _instruction_override(text: str, key: str | None) -> list[Span]:
    return list(phrases(text)[0])


def _role_play(text: str, key: str | None) -> list[Span]:
    return list(phrases(text)[1])


# ---------------------------------------------------------------------------------------------
# invisible_unicode
#
# Tag characters (U+E0000-E007F), zero-width characters (U+200B-200D, U+2060, U+FEFF) and bidi
# embeddings, overrides and isolates (U+202A-202E, U+2066-2069). The span is the run. Allowed:
# a byte-order mark at position 0; a zero-width joiner inside an emoji sequence (between two
# pictographs, a skin tone or VS16 and a pictograph: the family emoji); a single ZWJ/ZWNJ between
# two non-ASCII letters or marks (Persian, Arabic, Indic conjuncts use them in ordinary words);
# an emoji subdivision flag (U+1F3F4 followed by tag letters and U+E007F, England's flag).
# The right-to-left marks U+200E/U+200F are not flagged: RTL text uses them legitimately.
_R_INVISIBLE = _rx("[\u200b-\u200d\u2060\ufeff\u202a-\u202e\u2066-\u2069\U000e0000-\U000e007f]+")
# The same characters in UTF-8, each class behind a literal first byte: on a long string, `re`
# walking the str with a character class costs ~10 ms/MiB, encoding it and searching the bytes
# for literal prefixes a fifth of that.
_B_INVISIBLE = (re.compile(rb"\xe2(?:\x80[\x8b-\x8d\xaa-\xae]|\x81[\xa0\xa6-\xa9])"),
                re.compile(rb"\xef\xbb\xbf"), re.compile(rb"\xf3\xa0[\x80\x81]"))
_TAG_FLAG = _rx("\U0001f3f4[\U000e0030-\U000e0039\U000e0061-\U000e007a]{2,7}\U000e007f")


def _pictographic(c: str) -> bool:
    return unicodedata.category(c) == "So" or "\U0001f3fb" <= c <= "\U0001f3ff" or c == "\ufe0f"


def _joiner_ok(text: str, start: int, end: int) -> bool:
    if end - start != 1 or start == 0 or end == len(text):
        return False
    c, before, after = text[start], text[start - 1], text[end]
    if c == "\u200d" and _pictographic(before) and unicodedata.category(after) == "So":
        return True
    return (c in "\u200c\u200d" and not before.isascii() and not after.isascii()
            and unicodedata.category(before)[0] in "LM" and unicodedata.category(after)[0] in "LM")


def _runs(text: str) -> list[tuple[int, int]]:
    """The runs of invisible characters, as (start, end) character offsets."""
    if len(text) < 4096:
        return [m.span() for m in _R_INVISIBLE.finditer(text)]
    data = text.encode("utf-8", "surrogatepass")
    hits = sorted(m.start() for rx in _B_INVISIBLE for m in rx.finditer(data))
    runs: list[tuple[int, int]] = []
    char, byte = 0, 0
    for hit in hits:
        if hit < byte:
            continue    # inside the run found last
        char += len(data[byte:hit].decode("utf-8", "surrogatepass"))
        m = _R_INVISIBLE.match(text, char)
        if m is None:
            byte = hit
            continue
        runs.append(m.span())
        byte = hit + len(m.group().encode("utf-8"))
        char = m.end()
    return runs


def _invisible_unicode(text: str, key: str | None) -> list[Span]:
    if text.isascii():
        return []
    out = []
    flags: list[tuple[int, int]] | None = None
    for start, end in _runs(text):
        if start == 0 and end == 1 and text[0] == "\ufeff":
            continue
        if _joiner_ok(text, start, end):
            continue
        if "\U000e0000" <= text[start] <= "\U000e007f":
            if flags is None:
                flags = [f.span() for f in _TAG_FLAG.finditer(text)] if "\U0001f3f4" in text else []
            if any(fs < start and end <= fe for fs, fe in flags):
                continue
        out.append(Span("invisible_unicode", start, end))
    return out


# ---------------------------------------------------------------------------------------------
# hidden_markup
#
# Chat-template tokens (<|im_start|>, [INST], <<SYS>>, <start_of_turn>) fire wherever they are,
# documentation about them included: a model reading them cannot tell either. Pseudo-tags of tool
# poisoning (<IMPORTANT>, <SYSTEM>, <instructions>, <secret>...) fire when the element holds prose
# (three words or more), so `<system>GitHub</system>` in a Maven POM passes. An HTML comment fires
# when it addresses the model or carries an override; inline-hidden elements (display:none,
# visibility:hidden, font-size:0, opacity:0, off-screen) fire when they hold prose, so the empty
# tag-manager iframe with display:none passes.
_CHAT = (r"<\|(?:im_start|im_end|im_sep|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id"
         r"|begin_of_text|end_of_text|fim_prefix|tool_call|eom_id)\|?>|<<\s*/?sys\s*>>|</?start_of_turn>|</?end_of_turn>")
_R_CHAT = _rx(_CHAT)
_R_BRACKET = _rx(r"\[/?inst\]|\[/?sys\]|\[system\]\(#[\w-]+\)|\[/?system[_ ]prompt\]")
_R_PSEUDO = _rx(r"<(important|system(?:[-_][a-z]+)?|instructions?|sys|secret|hidden|admin"
                r"|assistant[-_]?instructions|tool[-_]?instructions|ai[-_]?instructions|mandatory|critical)(?:\s[^<>]{0,60})?>")
_R_COMMENT = _rx(r"<!--(.{0,4000}?)-->", re.S)
_R_DIRECTIVE = _rx(
    r"\b(?:ai|assistant|llm|agent|claude|chatgpt|gpt|copilot|gemini|language\s+model|model)\s*[:,]"
    r"|\b(?:dear|hey|attention|note\s+to(?:\s+the)?)\s+(?:ai|assistant|llm|agent|model|claude|chatgpt|copilot)\b"
    r"|\b(?:if\s+you\s+are|you\s+are|as)\s+an?\s+(?:ai|llm|language\s+model|ai\s+assistant|ai\s+agent)\b"
    r"|\bignore\s+(?:all\s+|the\s+|any\s+)?(?:previous|prior|above)|\bdisregard\b"
    r"|\b(?:you\s+must|you\s+should|you\s+will|always|never)\s+(?:call|send|read|tell|respond|reply|say|forward|ignore"
    r"|execute|fetch|reveal|output|mention)\b|\bdo\s+not\s+(?:tell|reveal|mention|inform|show)\b|\bsystem\s+prompt\b"
    r"|\binstructions?\s+for\s+(?:the\s+)?(?:ai|assistant|llm|agent|model)\b|\bexfiltrat")
_R_HIDDEN_TAG = _rx(r"<([a-z][a-z0-9]*)\b([^<>]{0,400}?)>")
_R_HIDDEN_STYLE = _rx(r"\bstyle\s*=\s*[\"'][^\"']*(?:display\s*:\s*none|visibility\s*:\s*hidden"
                      r"|font-size\s*:\s*(?:0|1px|1pt)(?![.\d])"
                      r"|opacity\s*:\s*0(?:\.0+)?(?![.\d])|color\s*:\s*transparent|(?:left|top|text-indent)\s*:\s*-\d{3,}"
                      r"|(?:height|width|max-height)\s*:\s*0(?![.\d])[^\"']*overflow\s*:\s*hidden)|\shidden(?:\s|=|/|$)")
_VOID = frozenset(("img", "input", "br", "hr", "meta", "link", "source", "area", "base", "col", "embed", "track",
                   "wbr"))
_R_WORD = _rx(r"[^\W\d_]{2,}")


def _element(low: str, start: int, tag: str) -> int | None:
    """The end of the element whose opening tag ends at `start` (after its closing tag, or at the
    end of the paragraph when it is not closed within 2000 characters) if it holds prose: three
    words or more. The whole element is the span, so masking removes what it hides."""
    close = low.find("</" + tag, start, start + 2000)
    if close >= 0:
        gt = low.find(">", close)
        end = gt + 1 if gt >= 0 else close + len(tag) + 2
        body = low[start:close]
    else:
        para = low.find("\n\n", start, start + 2000)
        end = para if para >= 0 else min(len(low), start + 2000)
        body = low[start:end]
    if "<" in body:
        body = re.sub(r"<[^>]*>", " ", body)
    return end if sum(1 for _ in zip(range(3), _R_WORD.finditer(body))) == 3 else None


def _hidden_markup(text: str, key: str | None) -> list[Span]:
    has_lt, has_br = "<" in text, "[" in text
    if not has_lt and not has_br:
        return []
    low = lowered(text)
    found: dict[int, int] = {}
    if has_br:
        for m in _R_BRACKET.finditer(low):
            found[m.start()] = m.end()
    if has_lt:
        for m in _R_CHAT.finditer(low):
            found[m.start()] = m.end()
        for m in _R_PSEUDO.finditer(low):
            end = _element(low, m.end(), m.group(1))
            if end is not None:
                found[m.start()] = max(found.get(m.start(), 0), end)
        if "<!--" in low:
            for m in _R_COMMENT.finditer(low):
                if _R_DIRECTIVE.search(m.group(1)):
                    found[m.start()] = m.end()
        if "style" in low or "hidden" in low:
            for m in _R_HIDDEN_TAG.finditer(low):
                if m.group(1) not in _VOID and _R_HIDDEN_STYLE.search(m.group(2)):
                    end = _element(low, m.end(), m.group(1))
                    if end is not None:
                        found[m.start()] = max(found.get(m.start(), 0), end)
    return merged("hidden_markup", found)


DETECTORS: tuple[Detector, ...] = (
    Detector("instruction_override", "injection", _instruction_override,
             "imperatives that cancel or replace the model's instructions, or hide actions from the user"),
    Detector("role_play", "injection", _role_play,
             "persona switches and jailbreak framings; requests for the system prompt"),
    Detector("invisible_unicode", "injection", _invisible_unicode,
             "tag characters, zero-width characters and bidi overrides (emoji joiners allowed)"),
    Detector("hidden_markup", "injection", _hidden_markup,
             "chat-template tokens, <IMPORTANT>-style tags, directive HTML comments, hidden-text CSS"),
)
