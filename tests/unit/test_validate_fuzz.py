"""`lvm-gateway validate` never raises: 3,000 generated documents (mutated valid policies, deep
nesting, huge integers, UTF-16 with and without a BOM, latin-1, corrupted bytes, ports out of
range, random and misspelt keys) each exit 0 or 2 with a message, never a traceback."""

from __future__ import annotations

import copy
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from lvm_gateway.serve import main

DATA = Path(__file__).parent.parent / "data"
DOCUMENTS = 3000
BASES = [
    yaml.safe_load((DATA / n).read_text()) for n in ("valid-composed.yaml", "valid-minimal.yaml")
]

JUNK: list[Any] = [
    None, True, False, "yes", "250", "10", "", "x" * 500, "é中\u202e", -1, 0, 1, 150, 65536,
    2**63 - 1, 2**63, -(2**70), 10**40, 1.5, -0.0, 1e308, float("nan"), float("inf"),
    [], {}, [1, "a", None], {"a": 1}, {"canary": None}, {"": ""}, "shadow", "/infer",
    "phase3", "http://127.0.0.1:99999", "http://127.0.0.1:0", "http://[::1", "ftp://x",
    "http://", "X-User-Id",
]  # fmt: skip


def _nested(rng: random.Random) -> Any:
    value: Any = rng.choice(["phase1", 1, None])
    for _ in range(rng.randint(1, 150)):
        value = [value] if rng.random() < 0.5 else {rng.choice(["canary", "a", "stable"]): value}
    return value


def _junk(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(JUNK))  # a fresh copy: a shared list could become a cycle


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if len(path) > 8:
        return out
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


def _mutate(doc: Any, rng: random.Random) -> Any:
    paths = [p for p in _paths(doc) if p]
    if not paths:
        return _junk(rng)
    path = rng.choice(paths)
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    what = rng.random()
    if what < 0.45:
        parent[path[-1]] = _junk(rng)
    elif what < 0.6:
        parent[path[-1]] = _nested(rng)
    elif what < 0.75 and isinstance(parent, dict):
        del parent[path[-1]]
    elif isinstance(parent, dict):
        key = str(path[-1])
        typo = (
            key[:-1] if len(key) > 1 and rng.random() < 0.5 else rng.choice(["on", "x", key + "s"])
        )
        parent[typo if rng.random() < 0.8 else rng.choice([1, True, None])] = _junk(rng)
    else:
        parent.append(_junk(rng))
    return doc


def _text(doc: Any, rng: random.Random) -> str:
    style = rng.choice([False, None, True])
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, default_flow_style=style)
    lines = text.splitlines(keepends=True)
    what = rng.random()
    if what < 0.08 and lines:
        # Repeat a line: at the top level a duplicate key, inside flow style a syntax error.
        i = rng.randrange(len(lines))
        lines.insert(rng.randrange(len(lines) + 1), lines[i])
    elif what < 0.14:
        cut = rng.randrange(len(text) + 1)
        return text[:cut]
    elif what < 0.18:
        return "a: " + "[" * rng.randint(50, 3000) + "]" * rng.randint(0, 3000)
    elif what < 0.21:
        return f"x: {rng.choice(['0x', ''])}{'9' * rng.randint(20, 9000)}\n" + text
    elif what < 0.24:
        return rng.choice(["- a\n- b\n", "just text", "", "~", "42", "!!set {a}", "&a [*a]",
                           "a: &x\n  b: *x\n", "{a: 1}}", "a: \x07\n", "\t- x"])  # fmt: skip
    return "".join(lines)


def _encode(text: str, rng: random.Random) -> bytes:
    what = rng.random()
    if what < 0.6:
        return text.encode()
    if what < 0.68:
        return text.encode("utf-16")  # with a BOM
    if what < 0.74:
        return text.encode(rng.choice(["utf-16-le", "utf-16-be"]))  # no BOM
    if what < 0.82:
        return text.encode("latin-1", errors="replace") + "é".encode("latin-1")
    if what < 0.86:
        return text.encode("utf-8-sig")
    if what < 0.9:
        return text.encode("utf-32")
    raw = bytearray(text.encode())
    for _ in range(rng.randint(1, 4)):
        if raw:
            raw[rng.randrange(len(raw))] = rng.randrange(256)
    return bytes(raw)


def generate(seed: int) -> bytes:
    rng = random.Random(seed)
    doc = copy.deepcopy(rng.choice(BASES))
    for _ in range(rng.randint(0, 3)):
        doc = _mutate(doc, rng)
    return _encode(_text(doc, rng), rng)


def test_validate_never_raises_on_generated_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    failures: list[str] = []
    outcomes = {0: 0, 2: 0}
    t0, cpu0 = time.perf_counter(), time.process_time()
    for seed in range(DOCUMENTS):
        raw = generate(seed)
        path = tmp_path / f"{seed}.yaml"  # a new file: rewriting one in place is 5x slower
        path.write_bytes(raw)
        as_json = seed % 5 == 0
        try:
            code = main(["validate", str(path), *(["--json"] if as_json else [])])
        except Exception as exc:  # the finding is the exception itself
            failures.append(f"seed {seed}: {type(exc).__name__}: {exc!s:.200} <- {raw[:120]!r}")
            capsys.readouterr()
            continue
        out, err = capsys.readouterr()
        outcomes[code] = outcomes.get(code, 0) + 1
        if as_json:
            report = json.loads(out)
            ok = report["valid"] == (code == 0) and all(e["message"] for e in report["errors"])
            ok = ok and (code == 0 or bool(report["errors"]))
        else:
            ok = (code == 0 and "valid" in out) or (code == 2 and err.strip() != "")
        if code not in (0, 2) or not ok or "Traceback" in out + err:
            failures.append(f"seed {seed}: exit {code}, out {out[:100]!r}, err {err[:100]!r}")
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print(f"{DOCUMENTS} documents in {elapsed:.1f} s ({cpu:.1f} s CPU): {outcomes[0]} valid, "
          f"{outcomes[2]} invalid")  # fmt: skip
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:20])
    assert outcomes[0] > 100 and outcomes[2] > 1000  # the generator reaches both outcomes
    # CPU time: the wall clock also counts whatever else shares the machine's cores.
    assert cpu < 30
