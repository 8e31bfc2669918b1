"""Strict YAML reading: duplicate keys with their lines, encodings, non-mapping documents,
syntax errors with line and column, bounded nesting and sizes; `validate --json`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lvm_gateway.config.yamldoc import MAX_DEPTH, load_document, read_document
from lvm_gateway.errors import ConfigError
from lvm_gateway.serve import main as gateway_main

DATA = Path(__file__).parent.parent / "data"


def errors_of(raw: bytes) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_document(raw, "p.yaml")
    return info.value.errors


def test_duplicate_keys_are_errors_with_both_lines() -> None:
    raw = b"""rollouts:
  phase2:
    route: /infer
  other: {}
variants: {}
rollouts:
  phase2:
    route: /x
    route: /y
"""
    assert errors_of(raw) == [
        "line 6: duplicate key 'rollouts' (first at line 1)",
        "line 9: duplicate key 'route' (first at line 8)",
    ]
    # Siblings in different mappings and a key overriding a `<<` merge are not duplicates.
    doc = load_document(b"a: {x: 1}\nb: {x: 2}\nbase: &b {x: 1}\nc:\n  <<: *b\n  x: 3\n", "p")
    assert doc["c"] == {"x": 3}


def test_encodings() -> None:
    text = "variants: {é: 1}\n"
    assert load_document(text.encode("utf-16"), "p") == {"variants": {"é": 1}}  # BOM: decoded
    assert load_document(text.encode("utf-16-be")[:0] + b"\xfe\xff" + text.encode("utf-16-be"),
                         "p") == {"variants": {"é": 1}}  # fmt: skip
    assert load_document(text.encode("utf-8-sig"), "p") == {"variants": {"é": 1}}
    assert errors_of("a: 1\nb: é\n".encode("latin-1")) == [
        "line 2, column 4: byte 0xe9 at byte offset 8 is not UTF-8; save the file as UTF-8"
    ]
    (no_bom,) = errors_of(text.encode("utf-16-le"))
    assert no_bom.startswith("(document): NUL byte at byte offset 1: UTF-16 without a byte-order")
    assert errors_of(text.encode("utf-32")) == ["(document): the file is UTF-32; save it as UTF-8"]
    assert errors_of(b"\xff\xfe" + b"\x00\xd8") == ["(document): invalid UTF-16 at byte offset 2"]


@pytest.mark.parametrize(
    ("raw", "found"),
    [(b"- a\n- b\n", "a list"), (b"just text", "a string"), (b"42", "a number"),
     (b"", "nothing (the file is empty)"), (b"# only a comment\n", "nothing (the file is empty)")],
)  # fmt: skip
def test_a_document_that_is_not_a_mapping_is_one_error(raw: bytes, found: str) -> None:
    assert errors_of(raw) == [
        f"(document): p.yaml must be a mapping of settings (variants:, routes:, ...), found {found}"
    ]


def test_syntax_errors_have_line_and_column() -> None:
    assert errors_of(b"variants:\n  a: {url: x\nroutes: [\n") == [
        "line 3, column 7: YAML syntax error: did not find expected ',' or '}' (while parsing a "
        "flow mapping at line 2, column 6)"
    ]
    assert errors_of(b"a: 1\n\tb: 2\n")[0].startswith("line 2, column 1: YAML syntax error:")
    assert errors_of(b"a: 1\n---\nb: 2\n") == [
        "line 2, column 1: expected a single document in the stream, but found another document"
    ]
    assert errors_of(b"a: *nope\n") == ["line 1, column 4: found undefined alias 'nope'"]
    assert errors_of(b"a: \x07\n") == ["line 1, column 4: character U+0007 is not allowed in YAML"]
    assert errors_of(b"a: !!float x\n") == ["line 1, column 4: cannot read 'x' as float"]
    assert errors_of(b"a: !!python/name:os.system x\n")[0].startswith(
        "line 1, column 4: could not determine a constructor"
    )


def test_huge_integers_and_deep_nesting_are_bounded_errors() -> None:
    assert errors_of(b"weight: " + b"9" * 5000) == [
        "line 1, column 9: integer of 5000 digits is too large"
    ]
    assert errors_of(b"weight: 0x" + b"f" * 5000) == [
        "line 1, column 9: integer out of range (64 bits)"
    ]
    assert load_document(b"n: 9223372036854775807", "p") == {"n": 2**63 - 1}
    t0 = time.perf_counter()
    assert errors_of(b"a: " + b"[" * 200_000) == [f"line 1: nested deeper than {MAX_DEPTH} levels"]
    assert time.perf_counter() - t0 < 1  # PyYAML alone takes hours on this
    block = b"a:\n" + b"".join(b"  " * i + b"b:\n" for i in range(1, 100))
    assert errors_of(block)[0].endswith(f"nested deeper than {MAX_DEPTH} levels")
    assert errors_of(b"a: &x [*x]\n") == [
        f"(document): nested deeper than {MAX_DEPTH} levels through aliases"
    ]
    laughs = b"a: &a [1,1,1,1,1,1,1,1,1,1]\n" + b"".join(
        b"%c: &%c [" % (c, c) + b", ".join([b"*%c" % (c - 1)] * 10) + b"]\n"
        for c in range(ord("b"), ord("g"))
    )
    assert errors_of(laughs) == ["(document): more than 100,000 values once aliases are expanded"]
    assert errors_of(b"a: 1\n" + b" " * (1 << 20)) == [
        "(document): 1,048,581 bytes; a policy file is at most 1,048,576"
    ]


def test_brackets_in_strings_and_comments_do_not_count_as_nesting() -> None:
    deep = "[" * 100
    raw = f"a: '{deep}'\nb: \"\\\"{deep}\"\nc: don't [1]  # {deep}\n".encode()
    assert load_document(raw, "p") == {"a": deep, "b": f'"{deep}', "c": "don't [1]"}


def test_read_document_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read: No such file"):
        read_document(tmp_path / "nope.yaml")
    assert read_document(DATA / "valid-minimal.yaml")["routes"]


def test_validate_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway_main(["validate", "--json", str(DATA / "valid-minimal.yaml")]) == 0
    assert json.loads(capsys.readouterr().out) == {"valid": True, "errors": []}
    assert gateway_main(["validate", "--json", str(DATA / "invalid-steps.yaml")]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    assert {"path": "rollouts.lvm.steps[2]", "message": "must be > 20"} in report["errors"]
    dup = tmp_path / "dup.yaml"
    dup.write_text("variants: {}\nvariants: {}\n")
    assert gateway_main(["validate", "--json", str(dup)]) == 2
    assert json.loads(capsys.readouterr().out)["errors"] == [
        {"path": "line 2", "message": "duplicate key 'variants' (first at line 1)"}
    ]
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("variants: {é: 1}\n".encode("latin-1"))
    assert gateway_main(["validate", str(latin)]) == 2  # was a UnicodeDecodeError traceback
    assert "is not UTF-8" in capsys.readouterr().err
