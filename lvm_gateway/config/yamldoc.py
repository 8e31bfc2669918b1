"""Policy file bytes -> one YAML document, strictly, or a ConfigError a person can act on.

Stricter than `yaml.safe_load` where leniency hides mistakes: a repeated key is an error with
both lines (PyYAML keeps the last silently), the text must be UTF-8 (or UTF-16 with a byte-order
mark), and the document must be a mapping. Nesting is bounded, so neither the parser nor what
validates the document afterwards can overflow the stack, and an integer too long for Python to
convert is an error at its line instead of a ValueError.
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.cyaml import CParser
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.resolver import Resolver

from lvm_gateway.errors import ConfigError

# A policy tree is a handful of levels deep; 64 leaves room for any real file and stays far
# below Python's recursion limit in the composer and in the validators after it.
MAX_DEPTH = 64
# Aliases share one object per anchor, but whatever validates the document walks every use:
# nine anchors of nine uses each would be 9**9 values. Real policy files hold a few hundred.
MAX_VALUES = 100_000
MAX_BYTES = 1 << 20  # a policy file is a few KiB; anything near a MiB is not one

_TOKEN_START = frozenset(" \t\r\n[{,:-?")

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _StrictLoader(Composer, CParser, SafeConstructor, Resolver):  # type: ignore[misc]
    """libyaml scans and parses (5x faster than PyYAML's Python scanner); composing and
    constructing stay in Python, where depth, duplicates and scalars are checked."""

    def __init__(self, stream: str) -> None:
        CParser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.duplicates: list[tuple[int, str]] = []  # (line, message)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # Composing recurses once per level: refuse before the stack runs out.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_DEPTH} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        # Only the mapping's own keys: a key that overrides one from a `<<` merge is intended.
        if not isinstance(node, MappingNode):
            return super().construct_mapping(node, deep)  # type: ignore[no-any-return]
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, ScalarNode):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                first = first_line[key]
                self.duplicates.append(
                    (line, f"line {line}: duplicate key {key_node.value!r} (first at line {first})")
                )
            else:
                first_line[key] = line
        return super().construct_mapping(node, deep)  # type: ignore[no-any-return]

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        # A scalar its tag cannot read (`!!float x`, an integer of more digits than int()
        # converts) raises ValueError & co. from inside PyYAML: report it at its line instead.
        try:
            value = super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, OverflowError) as exc:
            tag = node.tag.rsplit(":", 1)[-1]
            text = str(node.value) if isinstance(node, ScalarNode) else ""
            if "digits" in str(exc):
                problem = f"integer of {len(text)} digits is too large"
            else:
                problem = f"cannot read {text[:40]!r} as {tag}"
            raise ConstructorError(None, None, problem, node.start_mark) from exc
        # No setting needs more than 64 bits, and a hex literal of 5,000 digits would make
        # every later str() or repr() of the document raise.
        if isinstance(value, int) and value.bit_length() > 63:
            raise ConstructorError(None, None, "integer out of range (64 bits)", node.start_mark)
        return value


_BOMS = ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


def decode(raw: bytes) -> str:
    """UTF-8 (a BOM allowed) or UTF-16 with its BOM; anything else is one error naming the byte."""
    if raw.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        raise ConfigError(["(document): the file is UTF-32; save it as UTF-8"])
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                return raw[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                raise ConfigError(
                    [f"(document): invalid UTF-16 at byte offset {exc.start + len(bom)}"]
                ) from exc
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ConfigError(
            [f"(document): NUL byte at byte offset {nul}: UTF-16 without a byte-order mark, or "
             "not a text file? Save it as UTF-8"]
        )  # fmt: skip
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise ConfigError(
            [f"line {line}, column {column}: byte 0x{raw[exc.start]:02x} at byte offset "
             f"{exc.start} is not UTF-8; save the file as UTF-8"]
        ) from exc  # fmt: skip


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


def _check_flow_depth(text: str) -> None:
    """Refuse flow collections (`[`, `{`) nested deeper than MAX_DEPTH before parsing.

    PyYAML's scanner reads a whole flow collection ahead, re-checking every open level at each
    token: 3,000 nested `[` take seconds and 100,000 hours, long before the composer's depth
    check runs. Quoted scalars and comments are skipped, so brackets in strings do not count.
    """
    depth = line = 0
    quote = ""
    previous = "\n"
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if quote:
            if c == "\\" and quote == '"':
                i += 1
            elif c == quote:
                if quote == "'" and text.startswith("''", i):
                    i += 1  # '' is an escaped quote inside single quotes
                else:
                    quote = ""
        elif c in "'\"" and previous in _TOKEN_START:
            quote = c
        elif c == "#" and previous in " \t\r\n":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError([f"line {line + 1}: nested deeper than {MAX_DEPTH} levels"])
        elif c in "]}":
            depth = max(0, depth - 1)
        if c == "\n":
            line += 1
        previous = c
        i += 1


def load_document(raw: bytes, source: str) -> dict[Any, Any]:
    """The YAML mapping in `raw`; ConfigError with every duplicate key, or the one problem that
    stops reading (size, encoding, syntax with line and column, not a mapping)."""
    if len(raw) > MAX_BYTES:
        raise ConfigError(
            [f"(document): {len(raw):,} bytes; a policy file is at most {MAX_BYTES:,}"]
        )
    text = decode(raw)
    _check_flow_depth(text)
    loader: _StrictLoader | None = None
    try:
        loader = _StrictLoader(text)
        document = loader.get_single_data()
    except yaml.reader.ReaderError as exc:  # a control character YAML does not allow
        # libyaml counts the offset in the UTF-8 bytes it was given.
        before = text.encode()[: exc.position].decode(errors="ignore")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        raise ConfigError(
            [f"line {line}, column {column}: character U+{exc.character:04X} is not allowed in "
             "YAML"]
        ) from exc  # fmt: skip
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        problem = exc.problem or exc.context or "cannot parse"
        if exc.context and problem.startswith("but "):  # "expected a single document, but ..."
            problem = f"{exc.context}, {problem}"
        elif exc.context and exc.problem and exc.context_mark:  # where the open construct began
            begin = exc.context_mark
            problem += f" ({exc.context} at line {begin.line + 1}, column {begin.column + 1})"
        if isinstance(exc, yaml.scanner.ScannerError | yaml.parser.ParserError):
            problem = f"YAML syntax error: {problem}"
        raise ConfigError([f"{where}: {problem}"]) from exc
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # Raised inside PyYAML's collection constructors (e.g. `!!set 5`): no mark to point at.
        raise ConfigError([f"(document): cannot read the YAML: {exc}"]) from exc
    finally:
        if loader is not None:
            loader.dispose()
    if loader.duplicates:
        raise ConfigError([message for _, message in sorted(loader.duplicates)])
    if not isinstance(document, dict):
        found = "nothing (the file is empty)" if document is None else _kind(document)
        raise ConfigError(
            [f"(document): {source} must be a mapping of settings (variants:, routes:, ...), "
             f"found {found}"]
        )  # fmt: skip
    _check_expanded_size(document)
    return document


def _check_expanded_size(document: Any) -> None:
    """Bound the document as its validators will see it, aliases expanded (and so cycles)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    count = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError([f"(document): more than {MAX_VALUES:,} values once aliases are "
                               "expanded"])  # fmt: skip
        if depth > MAX_DEPTH:
            raise ConfigError([f"(document): nested deeper than {MAX_DEPTH} levels through "
                               "aliases"])  # fmt: skip
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def read_document(path: str | Path) -> dict[Any, Any]:
    """The policy file at `path` as a document; ConfigError when unreadable or not strict YAML."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror}"]) from exc
    return load_document(raw, str(p))
