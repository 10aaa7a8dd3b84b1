"""Command-line mistakes answered with one sentence that says what to type instead.

Hydra's override grammar reports a trailing comma as ``mismatched input '<EOF>' expecting {':',
BRACKET_OPEN, ...}`` and a path split at a space by the shell as ``missing EQUAL``: true, but no help
to a user. ``parse_error`` finds the override that fails and names the likely fix; ``closest``
proposes the known key or option nearest a mistyped one (difflib); ``hydra_message`` folds Hydra's
multi-line composition errors into one line.
"""
from __future__ import annotations

import difflib
import re
from typing import Iterable

QUOTE_FIX = "quote a value with spaces or any of = , [ ] { } ( ) ; ' \" inside the override, e.g. " \
            "\"dataset.root='/my data/tree'\""


def closest(word: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest known word, or nothing."""
    candidates = sorted(k for k in set(known) if not str(word).startswith(f"{k}."))  # not its own parent
    match = difflib.get_close_matches(str(word), candidates, n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""


def parse_error(texts: list[str], parse_one) -> str:
    """The sentence for the first override of ``texts`` that ``parse_one`` cannot parse."""
    for i, text in enumerate(texts):
        try:
            parse_one(text)
        except Exception as exc:  # noqa: BLE001 - the grammar raises several kinds
            return _sentence(text, texts[i - 1] if i else None, str(exc))
    return "cannot parse the command line"


def _sentence(text: str, previous: str | None, error: str) -> str:
    key, eq, value = text.partition("=")
    if not eq:
        if previous is not None and "=" in previous:
            return (f"'{text}' is not an override (key=value): if it continues the value of '{previous}', the shell "
                    f"split that value at a space; quote the whole override, e.g. \"{previous} {text}\"")
        return f"'{text}' is not an override: write key=value, e.g. campaign.trials=5"
    if not key.strip():
        return f"'{text}' has no key before '='; write key=value, e.g. campaign.trials=5"
    if value.rstrip().endswith(","):
        fixed = f"{key}={value.rstrip().rstrip(',')}"
        return f"'{text}' ends with a comma: a sweep lists its values separated by commas, none after the last " \
               f"(e.g. {fixed})"
    if value.lstrip().startswith(","):
        return f"'{text}' starts its value with a comma: a sweep lists values separated by commas (e.g. {key}=a,b)"
    if ",," in value:
        return f"'{text}' has an empty value between two commas: remove one comma"
    if value.count("[") != value.count("]") or value.count("{") != value.count("}"):
        return f"'{text}' has an unclosed bracket: a list is written [a,b] (quote the override for the shell: " \
               f"'{key}=[a,b]')"
    if value.count("'") % 2 or value.count('"') % 2:
        return f"'{text}' has an unmatched quote: close it, e.g. \"{key}='a b'\""
    if "LexerNoViableAlt" in error or "extraneous input" in error or "mismatched input" in error:
        return f"'{text}' has a character the override grammar reserves; {QUOTE_FIX}"
    return f"cannot parse '{text}' ({error.splitlines()[0]}); {QUOTE_FIX}"


def hydra_message(exc: BaseException) -> str:
    """One line from Hydra's composition error: its first line, the cause of a merge error, the
    available options of a missing group option."""
    text = str(exc)
    lines = [line for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    if first.startswith("Error merging override") and exc.__cause__ is not None:
        cause = str(exc.__cause__).splitlines()[0]
        return f"{first.replace('Error merging override', 'cannot set')}: {cause}"
    options = re.search(r"Available options in '([^']+)':\n((?:\t.*\n?)+)", text)
    if options:
        names = [o.strip() for o in options.group(2).splitlines() if o.strip()]
        missing = re.search(r"Could not find '([^']+)'", text)
        wanted = missing.group(1).rsplit("/", 1)[-1] if missing else ""
        return f"unknown {options.group(1)} '{wanted}'{closest(wanted, names)}; choose one of: {', '.join(names)}"
    could_not = re.match(r"Could not override '([^']+)'", first)
    if could_not:
        return f"unknown config option '{could_not.group(1)}'"
    return first
