"""The parts of a CREATE TABLE statement a partial restore edits: its tokens, and the items of
its column list (the columns, then the table's constraints), so that a foreign key to a table
left behind can be cut out of it. SQLite and MySQL quote names and strings differently, so each
dialect's module tokenizes with its own pattern and shares the rest from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Token:
    """One token of a statement and where it stands in the statement's text."""

    text: str
    start: int
    end: int

    @property
    def word(self) -> str:
        return self.text.upper()

    @property
    def name(self) -> str:
        """The token as an identifier, without its quotes ("...", `...` or [...])."""
        text = self.text
        if text[:1] in '"`' and len(text) > 1:
            return text[1:-1].replace(text[0] * 2, text[0])
        if text[:1] == "[" and len(text) > 1:
            return text[1:-1]
        return text


def tokenize(sql: str, pattern: re.Pattern[str], skipped: tuple[str, ...]) -> list[Token]:
    """The tokens `pattern` finds in `sql`, without white space and the tokens that start with
    one of `skipped` (the dialect's comments)."""
    found = []
    for match in pattern.finditer(sql):
        text = match.group()
        if text.isspace() or text.startswith(skipped):
            continue
        found.append(Token(text, match.start(), match.end()))
    return found


def column_list_items(tokens: list[Token]) -> tuple[int | None, list[tuple[int, int]]]:
    """The index of the token that opens the column list, and its items as (first, last) token
    indexes, split at the commas outside parentheses; (None, []) for a statement without one
    (CREATE TABLE ... AS SELECT)."""
    opening = next((index for index, token in enumerate(tokens) if token.text == "("), None)
    if opening is None:
        return None, []
    items: list[tuple[int, int]] = []
    depth, start = 0, opening + 1
    for index in range(opening + 1, len(tokens)):
        text = tokens[index].text
        if text == "(":
            depth += 1
        elif text == ")" and depth > 0:
            depth -= 1
        elif text in (",", ")") and depth == 0:
            items.append((start, index - 1))
            start = index + 1
            if text == ")":
                break
    return opening, items


def is_table_foreign_key(tokens: list[Token], first: int, last: int) -> bool:
    """Whether the item is a table constraint `[CONSTRAINT name] FOREIGN KEY ...`."""
    words = [token.word for token in tokens[first : min(last, first + 2) + 1]]
    return words[:1] == ["FOREIGN"] or (len(words) > 2 and words[0] == "CONSTRAINT" and words[2] == "FOREIGN")


def item_with_its_comma(
    tokens: list[Token], opening: int, items: list[tuple[int, int]], number: int
) -> tuple[int, int]:
    """The characters of item `number` with the comma before it: what cutting a whole item out
    removes (a table constraint is never the first item: the columns come first)."""
    previous_end = tokens[items[number - 1][1]].end if number else tokens[opening].end
    return previous_end, tokens[items[number][1]].end


def cut(sql: str, spans: list[tuple[int, int]]) -> str:
    """`sql` without the character spans (start, end), which do not overlap."""
    for start, end in sorted(spans, reverse=True):
        sql = sql[:start] + sql[end:]
    return sql
