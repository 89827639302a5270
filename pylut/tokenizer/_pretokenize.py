"""Pre-tokenizers for byte-level BPE vocabularies, without the third-party ``regex`` module.

Byte-level BPE tokenizers first cut text into "words" with a regular expression written for
engines that understand Unicode properties (``\\p{L}`` letters, ``\\p{N}`` numbers, ...).
Python's ``re`` does not, so we translate such patterns into plain ``re`` syntax by
expanding every property into an explicit character class, built once per process from
``unicodedata``. The classes cover only the Basic Multilingual Plane, which ``re`` stores as
a bitmap, so matching stays in C and fast; characters above U+FFFF are swapped for BMP
stand-ins of the same general category before matching and swapped back afterwards (so a
pattern naming an astral character literally is not supported).

Some families cut the text with several patterns in a row. Each pattern is applied to every
piece produced by the previous one, and both the matches and the unmatched gaps between
them become pieces (llama.cpp and Hugging Face "Isolated" split semantics). A lookahead such
as ``(?!\\S)`` therefore never sees past the end of the piece it runs on.
"""
from __future__ import annotations

import functools
import logging
import re
import unicodedata
from typing import Dict, List, Sequence

logger = logging.getLogger("pylut")

# Unicode White_Space property (what \s means in PCRE/Oniguruma/llama.cpp). Python's own \s
# differs slightly (it also accepts U+001C..U+001F), so we spell it out.
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


@functools.lru_cache(maxsize=None)
def _category_class_body(spec: str) -> str:
    """Class body (no brackets) matching every Basic Multilingual Plane code point whose
    general category starts with one of the comma-separated prefixes in ``spec``.

    Astral characters are left out on purpose: ``re`` keeps code points above U+FFFF as a
    list of ranges that it scans linearly on every failed test, which made matching several
    times slower (docs/benchmarks.md). :meth:`PreTokenizer.split` maps astral characters onto BMP stand-ins of
    the same category instead (see ``_astral_stand_ins``)."""
    prefixes = tuple(spec.split(","))
    category = unicodedata.category
    ranges: List[List[int]] = []
    for cp in range(0x10000):
        if category(chr(cp)).startswith(prefixes):
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])
    parts = []
    for lo, hi in ranges:
        parts.append("\\u%04x" % lo if lo == hi else "\\u%04x-\\u%04x" % (lo, hi))
    return "".join(parts)


@functools.lru_cache(maxsize=None)
def _category_stand_ins() -> Dict[str, str]:
    """For each general category, one BMP character of that category. They are taken from
    U+A000 upwards, far from the ASCII, CJK and Hangul ranges that rules name literally,
    so a stand-in matches exactly the classes its astral original would."""
    found: Dict[str, str] = {}
    for cp in list(range(0xA000, 0xD800)) + list(range(0xE000, 0x10000)) + list(range(0xA0, 0xA000)):
        found.setdefault(unicodedata.category(chr(cp)), chr(cp))
    return found


def _astral_stand_ins(text: str) -> Dict[int, str]:
    stand_in = _category_stand_ins()
    category = unicodedata.category
    return {ord(c): stand_in.get(category(c), "\uffff") for c in set(text) if c > "\uffff"}


# Property names accepted in \p{...}; LC ("cased letter") is used by the DeepSeek LLM rules.
_PROPERTIES: Dict[str, str] = {
    "L": "L", "Letter": "L", "N": "N", "Number": "N", "P": "P", "Punctuation": "P",
    "S": "S", "M": "M", "Z": "Z", "C": "C",
    "Lu": "Lu", "Ll": "Ll", "Lt": "Lt", "Lm": "Lm", "Lo": "Lo", "LC": "Lu,Ll,Lt",
    "Nd": "Nd", "Nl": "Nl", "No": "No",
}


# The case-insensitive contractions of tokenizer.json files (Llama 3, Qwen, GPT-4o) spelled
# out: under re.IGNORECASE Python would also fold U+017F LATIN SMALL LETTER LONG S into 's'.
_CONTRACTIONS_I = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
_CONTRACTIONS_SPELLED = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"


def translate_pattern(pattern: str) -> str:
    """Rewrite a PCRE-style pattern with ``\\p{X}``, ``\\s``, ``\\S`` and ``$`` into
    an equivalent pattern for Python's ``re``."""
    pattern = pattern.replace(_CONTRACTIONS_I, _CONTRACTIONS_SPELLED)
    out: List[str] = []
    in_class = False
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt in "pP" and i + 2 < n and pattern[i + 2] == "{":
                end = pattern.index("}", i + 3)
                name = pattern[i + 3:end]
                if name not in _PROPERTIES:
                    raise ValueError(f"unsupported Unicode property \\{nxt}{{{name}}} in pattern")
                body = _category_class_body(_PROPERTIES[name])
                negated = nxt == "P"
                if in_class:
                    if negated:
                        raise ValueError("\\P{...} inside a character class is not supported")
                    out.append(body)
                else:
                    out.append(("[^" if negated else "[") + body + "]")
                i = end + 1
                continue
            if nxt == "s":
                out.append(_WHITESPACE if in_class else "[" + _WHITESPACE + "]")
            elif nxt == "S":
                if in_class:
                    raise ValueError("\\S inside a character class is not supported")
                out.append("[^" + _WHITESPACE + "]")
            else:
                out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
        elif ch == "[":
            in_class = True
            out.append(ch)
            # a ']' right after '[' or '[^' is a literal, copy it so it does not close
            j = i + 1
            if j < n and pattern[j] == "^":
                out.append("^")
                j += 1
            if j < n and pattern[j] == "]":
                out.append("\\]")
                j += 1
            i = j
            continue
        elif ch == "$":
            ch = r"\Z"  # PCRE '$' without multiline: only the very end (Python's '$' also
            #             matches before a final newline)
        out.append(ch)
        i += 1
    return "".join(out)


# --- the rules of each family, written in PCRE syntax --------------------------------------

# GPT-2's rule. The final "\s+" only catches a lone whitespace char before a non-space,
# which would otherwise be an unmatched gap and a piece of its own anyway; having every
# character matched lets split() take its findall fast path.
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# Llama 3: case-insensitive contractions, letters may carry one leading non-letter, numbers
# in groups of up to three, newlines glued to the preceding punctuation.
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
          r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen2: like Llama 3 but every digit is its own piece.
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")

# Qwen3.5: like Qwen2 but combining marks (\p{M}) stay inside the letter run they follow.
QWEN35 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
          r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# GPT-4o / Llama 4 (o200k): a word is an optional non-letter, upper-case letters, then
# lower-case ones (or an all-capitals run), with an English contraction glued on; numbers
# in groups of up to three; '/' glued to the punctuation run. The case-insensitive
# contractions of the original are spelled out ('[sS]'): Python's re.IGNORECASE would also
# fold U+017F LATIN SMALL LETTER LONG S into 's'.
_UPPER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]"
_LOWER = r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_CONTRACTION = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
GPT4O = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTION}?"
         rf"|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTION}?"
         r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Mistral's Tekken (Mistral Nemo, Small 3.x, Ministral): GPT-4o's word shape without the
# contractions, and every digit its own piece.
TEKKEN = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# Gemma 4's BPE runs over whole lines (spaces already escaped to U+2581): only runs of
# newlines are cut apart from the rest.
NEWLINES = r"[^\n]+|\n+"

_CJK = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"

PRETOKENIZER_RULES: Dict[str, List[str]] = {
    # llama.cpp's family default for BPE vocabularies that name no pre-tokenizer
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "gpt-2": [GPT2],
    "llama-bpe": [LLAMA3],
    "qwen2": [QWEN2],
    "qwen35": [QWEN35],
    "gpt-4o": [GPT4O],
    "tekken": [TEKKEN],
    "gemma4": [NEWLINES],
    # digits split one by one, then the GPT-2 rule
    "starcoder": [r"\p{N}", GPT2],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
    "deepseek-llm": [r"[\r\n]", r"\s?\p{LC}+", r"\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
                     r"\s+$", _CJK, r"\p{N}+"],
    "deepseek-coder": [r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", _CJK, r"\p{N}"],
}

# Names found in ``tokenizer.ggml.pre`` that share one of the rule sets above (the
# grouping of llama.cpp's llama-vocab.cpp).
PRETOKENIZER_ALIASES: Dict[str, str] = {
    "llama3": "llama-bpe", "llama-v3": "llama-bpe", "falcon3": "llama-bpe",
    "falcon-h1": "llama-bpe", "pixtral": "llama-bpe", "midm-2.0": "llama-bpe",
    "lfm2": "llama-bpe", "dbrx": "llama-bpe", "smaug-bpe": "llama-bpe",
    "stablelm2": "qwen2", "deepseek-r1-qwen": "qwen2", "megrez": "qwen2", "kormo": "qwen2",
    "hunyuan": "qwen2", "solar-open": "qwen2",
    "llama4": "gpt-4o", "kanana2": "gpt-4o", "minimax-m2": "gpt-4o",
    "gpt2": "gpt-2", "mpt": "gpt-2", "olmo": "gpt-2", "jais": "gpt-2", "phi-2": "gpt-2",
    "roberta-bpe": "gpt-2", "jina-v2-code": "gpt-2", "exaone4": "gpt-2", "trillion": "gpt-2",
    "refact": "starcoder", "smollm": "starcoder", "command-r": "starcoder",
    "codeshell": "starcoder", "exaone": "starcoder", "minerva-7b": "starcoder",
    "mellum2": "starcoder",
}


def known_pretokenizers() -> List[str]:
    return sorted(set(PRETOKENIZER_RULES) | set(PRETOKENIZER_ALIASES))


class PreTokenizer:
    """Cuts text into the pieces that BPE then encodes independently."""

    def __init__(self, patterns: Sequence[str], name: str = "custom") -> None:
        self.name = name
        self.source_patterns = list(patterns)
        self._compiled = [re.compile(translate_pattern(p)) for p in patterns]

    @classmethod
    def by_name(cls, name: str) -> "PreTokenizer":
        key = PRETOKENIZER_ALIASES.get(name, name)
        if key not in PRETOKENIZER_RULES:
            # llama.cpp refuses the file; a wrong split only degrades the text, so we go on
            # with GPT-2's rules and say so.
            logger.warning("unknown pre-tokenizer %r: falling back to the gpt-2 rules (known: "
                           "%s)", name, ", ".join(known_pretokenizers()))
            key = "gpt-2"
        return cls(PRETOKENIZER_RULES[key], key)

    def split(self, text: str) -> List[str]:
        astral = text and max(text) > "\uffff"
        pieces = [text.translate(_astral_stand_ins(text)) if astral else text]
        for pattern in self._compiled:
            pieces = self._split_all(pattern, pieces)
        if astral:  # same lengths, so cut the original text at the same places
            out, pos = [], 0
            for piece in pieces:
                out.append(text[pos:pos + len(piece)])
                pos += len(piece)
            pieces = out
        return pieces

    @staticmethod
    def _split_all(pattern: "re.Pattern[str]", pieces: List[str]) -> List[str]:
        out: List[str] = []
        for piece in pieces:
            if not pattern.groups:
                found = pattern.findall(piece)
                # Fast path: the matches tile the whole piece, so there are no gaps to keep.
                if sum(map(len, found)) == len(piece):
                    out.extend(found if "" not in found else [f for f in found if f])
                    continue
            pos = 0
            for m in pattern.finditer(piece):
                start, end = m.span()
                if start == end:
                    continue
                if start > pos:
                    out.append(piece[pos:start])
                out.append(piece[start:end])
                pos = end
            if pos < len(piece):
                out.append(piece[pos:])
        return out
