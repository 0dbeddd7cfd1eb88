"""Keep secrets out of everything lockstep writes: logs, notifications, errors, --json and hook output.

Two kinds of redaction, both replacing the secret with `***`:

- known values: passwords, tokens and secret files that lockstep has read (`add`), and the values of
  environment variables whose names say they are secret (`from_environment`). They are matched by one
  compiled regex, built as a trie of the escaped values so it is longest-first by construction (a
  secret that contains another is hidden whole) and rejects most positions on the first character;
- shapes that are secret wherever they appear, even when lockstep never saw the value: the password
  in `scheme://user:PASSWORD@host`, `NAME=value` where NAME looks like `*_SECRET`, `*_TOKEN`,
  `*_KEY` or `*PASSWORD*` (so `LOCKSTEP_PASSWORD=...`), and `Authorization:` header values. Those
  regexes run only on the lines that contain their keyword, found with plain substring search, so
  megabytes of hook output without secrets cost a few milliseconds.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

MASK = "***"
MINIMUM_SECRET_LENGTH = 4

# Values too common to be secrets: redacting them would mangle ordinary text (`FEATURE_KEY=true`).
_NOT_SECRETS = frozenset({"true", "false", "none", "null", "yes", "no", "on", "off"})

# `password_env`, `SMTP_PASSWORD_FILE`: these name where a secret is, they do not hold it.
_REFERENCE_NAME = re.compile(r"_(?:ENV|FILE)$", re.IGNORECASE)
_SECRET_NAME = re.compile(r"(?:^|_)(?:SECRET|TOKEN|KEY)$|PASSWORD|PASSWD|^SECRET$|^TOKEN$", re.IGNORECASE)

# scheme://user:PASSWORD@host: the password stops at "@", "/" or whitespace. Anchored on the literal "://"
# (not on the scheme) so the regex engine can skip to candidates instead of trying every letter.
_URL_PASSWORD = re.compile(r"(?P<keep>://[^\s:/?#@]*+:)(?P<secret>[^\s@/]++)(?=@)")

# NAME=value / NAME: value / "NAME": "value" where NAME looks secret; the value is quoted or one word.
_ASSIGNMENT = re.compile(
    r"""(?P<keep>\b(?:[A-Za-z0-9_]*(?:_SECRET|_TOKEN|_KEY)"""
    r"""|[A-Za-z0-9_]*PASSW(?:OR)?D(?![A-Za-z0-9_]*_(?:ENV|FILE)\b)[A-Za-z0-9_]*|SECRET|TOKEN)\b"""
    r"""["']?[ \t]*[:=][ \t]*)"""
    r"""(?P<secret>"[^"\r\n]*"|'[^'\r\n]*'|[^\s"',;]+)""",
    re.IGNORECASE,
)

# Authorization / Proxy-Authorization header values, up to the end of the line or a closing quote.
_AUTHORIZATION = re.compile(
    r"""(?P<keep>\b(?:proxy-)?authorization["']?[ \t]*[:=][ \t]*["']?)(?P<secret>[^"'\r\n]+)""",
    re.IGNORECASE,
)


_ASSIGNMENT_KEYWORDS = ("secret", "token", "_key", "passw")

# A line of a secret file that assigns a value: `NAME=value`, `export NAME="value"`, `name: value`.
_FILE_ASSIGNMENT = re.compile(r"(?:export\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)\s*(?:=|:\s)\s*(?P<value>.+)")
# Values and lines at least this long in a secret file are hidden whatever their name.
_LONG_SECRET = 16


def _trie_pattern(values: Iterable[str]) -> str:
    """One regex matching any of `values`, as a trie: `(?:ab(?:c|d)|x)`; greedy, so longest first."""
    root: dict[str, Any] = {}
    for value in values:
        node = root
        for character in value:
            node = node.setdefault(character, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        branches = []
        for character, child in sorted(node.items()):
            if not character:
                continue
            literal = [character]
            while len(child) == 1 and "" not in child:  # a chain without branches: no recursion, no group
                (next_character, child), *_ = child.items()
                literal.append(next_character)
            branches.append(re.escape("".join(literal)) + build(child))
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(root)


def _substitute_near(text: str, keywords: tuple[str, ...], pattern: re.Pattern[str]) -> str:
    """Apply `pattern` only to the lines of `text` that contain one of `keywords` (case-insensitively).

    The patterns never span lines, so the result equals `pattern.sub` on the whole text; a plain
    substring search is what keeps large outputs cheap.
    """
    lowered = text.lower() if not text.isascii() or any(keyword.isalpha() for keyword in keywords) else text
    if len(lowered) != len(text):  # a few characters change length when lowered: take the slow, exact path
        return pattern.sub(_mask_group, text)
    spans: list[tuple[int, int]] = []
    for keyword in keywords:
        position = lowered.find(keyword)
        while position != -1:
            start = text.rfind("\n", 0, position) + 1
            end = text.find("\n", position)
            end = len(text) if end == -1 else end
            spans.append((start, end))
            position = lowered.find(keyword, end)
    if not spans:
        return text
    spans.sort()
    pieces: list[str] = []
    done = 0
    for start, end in spans:
        if end <= done:
            continue
        start = max(start, done)
        pieces.append(text[done:start])
        pieces.append(pattern.sub(_mask_group, text[start:end]))
        done = end
    pieces.append(text[done:])
    return "".join(pieces)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable or document key is named like a secret (`*_TOKEN`, `*PASSWORD*`...)."""
    if _REFERENCE_NAME.search(name):
        return False
    return bool(_SECRET_NAME.search(name)) or name.lower() in ("authorization", "proxy-authorization")


def _mask_group(match: re.Match[str]) -> str:
    secret = match.group("secret")
    if secret.strip("\"'").rstrip(")]}.").lower() in _NOT_SECRETS:
        return match.group(0)  # MySQL's "(using password: YES)" names no password, and keeps its ")"
    if len(secret) >= 2 and secret[0] == secret[-1] and secret[0] in "\"'":
        return f"{match.group('keep')}{secret[0]}{MASK}{secret[0]}"
    return f"{match.group('keep')}{MASK}"


class Redactor:
    """Replaces known secret values and secret-shaped text with `***`. Safe to share between threads."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Redactor:
        """A redactor that knows the values of every variable named `*_SECRET`, `*_TOKEN`, `*_KEY`, `*PASSWORD*`."""
        redactor = cls()
        redactor.add_environment(environ)
        return redactor

    def add_environment(self, environ: Mapping[str, str]) -> None:
        """Learn the values of the secret-named variables in `environ`."""
        for name, value in environ.items():
            if is_secret_name(name):
                self.add(value)

    def add(self, value: str | None) -> None:
        """Learn a secret value. Values shorter than 4 characters are ignored: masking them would mangle text."""
        if value is None:
            return
        value = value.strip("\r\n")
        if len(value) < MINIMUM_SECRET_LENGTH or value.lower() in _NOT_SECRETS:
            return
        # The forms the same secret takes inside a JSON string and a URL, so serialised payloads are covered too.
        # A password that is not UTF-8 (read from a file: its bytes travel as surrogate escapes) too.
        variants = {
            value,
            json.dumps(value, ensure_ascii=False)[1:-1],
            quote(value, safe="", errors="surrogateescape"),
        }
        with self._lock:
            new = variants - self._values
            if new:
                self._values |= new
                self._pattern = None

    def known_values(self) -> list[str]:
        """The secret values this redactor hides (with their encoded forms), to teach another one."""
        with self._lock:
            return sorted(self._values)

    @property
    def secret_count(self) -> int:
        """How many distinct values (including their encoded forms) this redactor hides."""
        return len(self._values)

    def _values_pattern(self) -> re.Pattern[str] | None:
        with self._lock:
            if self._pattern is None and self._values:
                self._pattern = re.compile(_trie_pattern(self._values))
            return self._pattern

    def redact(self, text: str) -> str:
        """`text` with every known secret and every secret-shaped value replaced by `***`."""
        if not text:
            return text
        pattern = self._values_pattern()
        if pattern is not None:
            text = pattern.sub(MASK, text)
        text = _substitute_near(text, ("://",), _URL_PASSWORD)
        text = _substitute_near(text, _ASSIGNMENT_KEYWORDS, _ASSIGNMENT)
        return _substitute_near(text, ("authorization",), _AUTHORIZATION)

    def redact_bytes(self, data: bytes) -> bytes:
        """Like `redact` for output of unknown encoding (hook output): undecodable bytes survive as U+FFFD."""
        return self.redact(data.decode("utf-8", "replace")).encode("utf-8")

    def redact_document(self, document: Any) -> Any:
        """A copy of a JSON-able structure with every string redacted and every secret-named key's value masked."""
        if isinstance(document, str):
            return self.redact(document)
        if isinstance(document, Mapping):
            redacted: dict[Any, Any] = {}
            for key, value in document.items():
                if isinstance(key, str) and is_secret_name(key) and value not in (None, ""):
                    redacted[self.redact(key)] = MASK
                else:
                    redacted[self.redact(key) if isinstance(key, str) else key] = self.redact_document(value)
            return redacted
        if isinstance(document, list | tuple):
            return [self.redact_document(item) for item in document]
        return document


_process_redactor: Redactor | None = None
_process_lock = threading.Lock()


def process_redactor() -> Redactor:
    """The redactor everything this process prints or sends goes through.

    It knows the secret-named variables of the environment and LOCKSTEP_PASSWORD (read again on
    every call, so a variable set later is known too), and every secret a command taught it since:
    database passwords, the secret files' values, the repository's password file (see
    `lockstep.pipeline.notifications.teach_project_secrets`). One instance for the process, so a
    secret learned while a deploy ran is also hidden from the error line the CLI prints at the end.
    """
    global _process_redactor
    with _process_lock:
        if _process_redactor is None:
            _process_redactor = Redactor()
        redactor = _process_redactor
    redactor.add_environment(os.environ)
    redactor.add(os.environ.get("LOCKSTEP_PASSWORD"))
    return redactor


def secret_file_values(text: str) -> list[str]:
    """What to hide of a secret file (a key, a .env): the whole content, and the pieces a hook may
    print on their own: each `NAME=value` (or `NAME: value`) whose name looks secret or whose value
    is long, and each long line without spaces (a line of key material).

    Short values under ordinary names (`RAILS_ENV=production`) are left alone: masking them would
    turn every "production" lockstep prints into `***`.
    """
    values = [text.strip()]
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#") or line.startswith("-----"):  # PEM armour is not secret
            continue
        match = _FILE_ASSIGNMENT.match(line)
        if match is not None:
            value = match.group("value").strip().strip("\"'")
            if is_secret_name(match.group("name")) or len(value) >= _LONG_SECRET:
                values.append(value)
        elif len(line) >= _LONG_SECRET and not any(character.isspace() for character in line):
            values.append(line)
    return [value for value in values if value]
