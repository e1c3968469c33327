"""The environment record check (``EnvRecord.from_dict``, ``read_record``), the
requirement-line reader (``read_requirements``) and the lock reader
(``build.lock.parse``), on generated input.

Records come as arbitrary JSON values, as good records with fields replaced by
arbitrary values, and as arbitrary bytes in ``env.json``; requirements files as
generated lines (options, hash pins, paths, comments, control characters);
locks as generated TOML (good locks with tables and values replaced) and as
arbitrary bytes.

The invariant, every time: a :class:`~venvoy.core.errors.VenvoyError` whose
message is one line, or a valid result (a record whose text fields are
printable; requirement text the record check accepts; a list of packages, each
file with a sha256); never another exception.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st

from venvoy.build import lock as locking
from venvoy.build.requirements import read_requirements
from venvoy.core.errors import VenvoyError
from venvoy.store import records
from venvoy.store.layout import Store

GOOD_LOCK = (
    'lock-version = "1.0"\ncreated-by = "uv"\nrequires-python = ">=3.11"\n\n'
    '[[packages]]\nname = "six"\nversion = "1.17.0"\n'
    'wheels = [{ url = "https://files.example/six-1.17.0-py2.py3-none-any.whl", size = 11, '
    f'hashes = {{ sha256 = "{"ab" * 32}" }} }}]\n'
)
GOOD: dict[str, Any] = {
    "name": "e1", "python": "3.11", "requirements": "six\nnumpy>=1 ; python_version >= '3'\n",
    "identity": "ef" * 32, "image_id": "sha256:" + "12" * 32, "lock_hash": "cd" * 32,
    "created": "2026-01-02T03:04:05Z", "packages": 2, "base": None, "glibc": "2.36",
    "arch": "x86_64", "inputs": "00" * 32, "venvoy_version": "0.1.0", "recipe": "1",
    "imported_from": {"file": "a.tar", "name": "e1", "at": "2026-01-02T03:04:05Z"},
}

TEXT = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from([
    "", "e1", "3.11", "sha256:../../etc", "sha256:" + "A" * 64, "\x1b[31m", "a\nb", "a\u202eb",
    "--index-url http://127.0.0.1:9/", "six --hash=sha256:" + "0" * 64, "2026-01-02T03:04:05Z",
    "x" * 70000, "2.36", "aarch64", "-e .", "six\x1c-r x",
])
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)


def one_line(exc: VenvoyError) -> None:
    event("refused")
    assert "\n" not in str(exc) and "\r" not in str(exc), repr(str(exc))
    assert exc.message


def check_record(record: records.EnvRecord) -> None:
    for key, value in record.to_dict().items():
        if isinstance(value, str):
            allowed = value.replace("\n", "").replace("\t", "") if key == "requirements" else value
            assert allowed.isprintable(), (key, value)
    records.check_requirement_lines(record.requirements, "r")


def from_dict(data: object) -> None:
    try:
        record = records.EnvRecord.from_dict(data, "env.json", "hint")
    except VenvoyError as exc:
        one_line(exc)
        return
    event("accepted")
    check_record(record)
    # what is written back reads back the same
    assert records.EnvRecord.from_dict(json.loads(json.dumps(record.to_dict())), "x", "") == record


@given(JSON)
def test_record_from_any_json(data: object) -> None:
    from_dict(data)


@given(st.dictionaries(st.sampled_from(sorted(GOOD)), JSON, max_size=4),
       st.lists(st.sampled_from(sorted(GOOD)), max_size=3))
def test_record_with_fields_replaced(changes: dict[str, Any], dropped: list[str]) -> None:
    data = GOOD | changes
    for key in dropped:
        data.pop(key, None)
    from_dict(data)


def _flip(raw: bytes, at: int, byte: int) -> bytes:
    return raw[:at % max(len(raw), 1)] + bytes([byte]) + raw[at % max(len(raw), 1) + 1:]


GOOD_BYTES = st.builds(lambda indent, changes: json.dumps(GOOD | changes, indent=indent).encode(),
                       st.sampled_from([None, 2]),
                       st.dictionaries(st.sampled_from(["packages", "base", "glibc"]),
                                       SCALARS, max_size=1))


@given(st.binary(max_size=2048) | GOOD_BYTES | st.builds(
    lambda good, cut, junk: good[:cut] + junk, GOOD_BYTES, st.integers(0, 600),
    st.binary(max_size=16)) | st.builds(_flip, GOOD_BYTES, st.integers(0, 600),
                                        st.integers(0, 255)))
def test_read_record_from_any_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        store.env_dir("e1").mkdir(parents=True)
        (store.env_dir("e1") / "env.json").write_bytes(raw)
        try:
            record = records.read_record(store, "e1")
        except VenvoyError as exc:
            one_line(exc)
        else:
            event("accepted")
            check_record(record)
        rows = records.list_envs(store)  # a damaged record is a row, never an exception
        assert [r["name"] for r in rows] == ["e1"]
        assert all(str(v).isprintable() for r in rows for v in r.values())


REQ_LINES = st.sampled_from([
    "six", "six==1.17.0", "numpy>=1 ; python_version >= '3.8'", "# comment", "six  # trailing",
    "", "   ", "x @ https://h.example/x-1.0-py3-none-any.whl#sha256=ab",
    "--index-url http://127.0.0.1:9/simple", "-e .", "-r other.txt", "six --extra-index-url x",
    "six --hash=sha256:" + "ab" * 32, "six --hash sha256:" + "ab" * 32, "six --hash=md5:00",
    "six --hash", "--hash=sha256:" + "ab" * 32, "./w/x-1.0-py3-none-any.whl", "w/x.whl",
    "x @ ../x.whl", "~/x.whl", "file:x.whl", "/abs/x.whl --hash=sha256:" + "ab" * 32,
    "six\x1b[31m", "six\ttab", "six\x00", "six\u202e", "six\r", "six\x1c--index-url x",
    "six \\", "\\", "  --hash=sha256:" + "cd" * 32 + " \\", "# c \\", "x @ w/x-1.0-py3-none-any.whl",
]) | st.text(st.characters(codec="utf-8"), max_size=30)


@given(st.lists(REQ_LINES, max_size=8), st.sampled_from(["\n", "\r\n", "\r"]),
       st.booleans())
def test_read_requirements_from_generated_files(lines: list[str], end: str, bom: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "requirements.txt"
        (Path(tmp) / "w").mkdir()
        (Path(tmp) / "w" / "x-1.0-py3-none-any.whl").write_bytes(b"x")
        path.write_bytes(("\ufeff" if bom else "").encode() + end.join(lines).encode())
        try:
            text = read_requirements([path])
        except VenvoyError as exc:
            one_line(exc)
            return
        event("accepted")
        # what init -r keeps, a record accepts, and the lock step's check too
        records.check_requirement_lines(text, "r")
        records.EnvRecord.from_dict(GOOD | {"requirements": text}, "env.json", "")
        assert all(line.strip() and not line.lstrip().startswith("#")
                   for line in text.splitlines())


@given(st.binary(max_size=4096))
def test_read_requirements_from_any_bytes(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.txt"
        path.write_bytes(raw)
        try:
            text = read_requirements([path])
        except VenvoyError as exc:
            one_line(exc)
            return
        records.check_requirement_lines(text, "r")


# --------------------------------------------------------------------------- pylock.toml


def toml_value(value: Any) -> str:
    """A TOML inline value (what the generated locks need: no dates)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) and "e" not in repr(value) else "1.5"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    return '""'


TOML_SCALARS = (st.booleans() | st.integers(min_value=-2**63, max_value=2**63 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | TEXT.filter(lambda s: len(s) < 200))
TOML_VALUES = st.recursive(TOML_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(TEXT.filter(lambda s: len(s) < 50), inner, max_size=3),
                           max_leaves=8)
ANY_FILE = st.fixed_dictionaries({}, optional={
    "url": st.sampled_from(["https://h/x-1-py3-none-any.whl", "file:///tmp/x.whl", "x.whl",
                            "https://h/", "https://h/..", "", "https://h/a%2Fb.whl"]) | TOML_VALUES,
    "path": st.sampled_from(["/abs/x.whl", "../x.whl", "."]) | TOML_VALUES,
    "name": st.sampled_from(["x-1-py3-none-any.whl", "..", "a/b", ""]) | TOML_VALUES,
    "hashes": st.fixed_dictionaries({"sha256": st.sampled_from(["ab" * 32, "AB" * 32, "x"])})
    | TOML_VALUES,
    "size": st.integers(-5, 2**40) | TOML_VALUES,
})
GOOD_FILE = st.fixed_dictionaries(
    {"url": st.sampled_from(["https://h/x-1-py3-none-any.whl", "/abs/y-1.tar.gz",
                             "file:///tmp/z-2-py3-none-any.whl"]),
     "hashes": st.fixed_dictionaries({"sha256": st.sampled_from(["ab" * 32, "CD" * 32])})},
    optional={"size": st.integers(0, 2**40), "name": st.sampled_from(["n-1-py3-none-any.whl"])})
FILE: st.SearchStrategy[Any] = GOOD_FILE | ANY_FILE
PACKAGE = st.fixed_dictionaries({"name": st.sampled_from(["six", "numpy"]),
                                 "version": st.sampled_from(["1.0", "2.1.3"]),
                                 "wheels": st.lists(GOOD_FILE, max_size=2)},
                                optional={"sdist": GOOD_FILE, "archive": GOOD_FILE,
                                          "marker": st.sampled_from(["python_version >= '3'"])}
                                ) | st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["six", "", "a b"]) | TOML_VALUES,
    "version": st.sampled_from(["1.0", ""]) | TOML_VALUES,
    "marker": st.sampled_from(["python_version >= '3'"]) | TOML_VALUES,
    "wheels": st.lists(FILE, max_size=3) | TOML_VALUES,
    "sdist": FILE | TOML_VALUES, "archive": FILE | TOML_VALUES,
    "vcs": TOML_VALUES, "directory": TOML_VALUES,
})
LOCK = st.fixed_dictionaries({}, optional={
    "lock-version": st.sampled_from(["1.0", "1.0", "1", "2.0", "1.x"]) | TOML_VALUES,
    "created-by": TOML_VALUES,
    "packages": st.lists(PACKAGE, max_size=3) | TOML_VALUES,
})


def parse(text: str) -> None:
    try:
        packages = locking.parse(text)
    except VenvoyError as exc:
        one_line(exc)
        return
    event(f"accepted, {min(len(packages), 2)}+ packages")
    for pkg in packages:
        assert isinstance(pkg.name, str) and pkg.name and isinstance(pkg.version, str)
        for f in [*pkg.wheels, *([pkg.sdist] if pkg.sdist else [])]:
            assert len(f.sha256) == 64 and "/" not in f.filename and f.filename not in (".", "..")
    locking.requirements_txt(packages)
    locking.files_to_fetch(packages)


@given(LOCK)
def test_parse_generated_locks(data: dict[str, Any]) -> None:
    parse("".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in data.items()))


@given(st.binary(max_size=2048) | st.just(GOOD_LOCK.encode()) | st.builds(
    lambda cut, junk: GOOD_LOCK.encode()[:cut] + junk, st.integers(0, len(GOOD_LOCK)),
    st.binary(max_size=32)) | st.builds(_flip, st.just(GOOD_LOCK.encode()),
                                        st.integers(0, len(GOOD_LOCK)), st.integers(0, 255)))
def test_parse_any_bytes(raw: bytes) -> None:
    parse(raw.decode("utf-8", errors="replace"))
