"""The environment record (store/records.py) and the requirement-line check it
shares with ``init -r`` (build/requirements.py): every field checked on read,
damaged records listed and removable without harming their neighbours."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from venvoy.build.requirements import check_lines, hash_pins, read_requirements
from venvoy.core.errors import BadRequest, DamagedError, NotFound
from venvoy.store import records
from venvoy.store.layout import Store

LOCK = 'lock-version = "1.0"\ncreated-by = "uv"\nrequires-python = ">=3.11"\n'


def record_data(name: str = "e1", image: str = "11", **extra: Any) -> dict[str, Any]:
    return {"name": name, "python": "3.11", "requirements": "six\n", "identity": "ef" * 32,
            "image_id": "sha256:" + image * 32, "lock_hash": records.lock_hash(LOCK),
            "created": "2026-01-02T03:04:05Z", "packages": 1} | extra


def make(store: Store, name: str, image: str, **extra: Any) -> records.Environment:
    env = records.write_env(store, records.EnvRecord.from_dict(record_data(name, image, **extra),
                                                               "test", ""), LOCK)
    env.archive.parent.mkdir(parents=True, exist_ok=True)
    env.archive.write_bytes(b"image" * 100)
    return env


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "home")


# --------------------------------------------------------------------------- the record


def test_round_trip(store: Store) -> None:
    env = make(store, "e1", "11", imported_from={"file": "a.tar", "name": "x", "at": "now"})
    assert records.get("e1", store).record == env.record
    assert records.get("e1", store).lock_text == LOCK
    assert json.loads((env.dir / "env.json").read_text()) == env.record.to_dict()


@pytest.mark.parametrize(("change", "match"), [
    ({"created": "\x1b[2J\x1b[31mOK\ne2  3.11  fake"}, "'created' is not a time"),
    ({"created": "2026-01-02T03:04:05Z\n"}, "'created' is not a time"),
    ({"requirements": "--index-url http://127.0.0.1:9/simple\nsix\n"},
     "'requirements':1: options such as '--index-url'"),
    ({"requirements": "six --extra-index-url=http://x/\n"}, "options such as '--extra-index-url'"),
    ({"requirements": "six\n-e ./src\n"}, r"'requirements':2: options such as '-e'"),
    ({"requirements": "six\x1b[31m\n"}, "control characters"),
    ({"requirements": "six\x1c--index-url x\n"}, "control characters"),
    ({"image_id": "sha256:../../etc"}, "'image_id' is not sha256"),
    ({"image_id": "sha256:" + "A" * 64}, "'image_id' is not sha256"),
    ({"name": "../x"}, "'name' '../x' is not a valid environment name"),
    ({"name": 3}, "'name' is not text"),
    ({"python": "3.11\x1b"}, "'python'"),
    ({"identity": "x"}, "'identity' is not a sha256"),
    ({"packages": True}, "'packages' is not a count"),
    ({"packages": 10**9}, "'packages' is not a count"),
    ({"base": ["x"]}, "'base' is not text"),
    ({"base_source": "a\u202eb"}, "'base_source' holds control characters"),
    ({"built_with": "x" * 70000}, "'built_with' is not text"),
    ({"glibc": "2.36; rm"}, "'glibc'"),
    ({"arch": "sparc"}, "'arch' is not one of"),
    ({"imported_from": {"file": "a\nb"}}, "'imported_from'"),
    ({"imported_from": "x"}, "'imported_from'"),
])
def test_forged_fields_are_refused(change: dict[str, Any], match: str) -> None:
    with pytest.raises(DamagedError, match=match) as info:
        records.EnvRecord.from_dict(record_data() | change, "env.json", "hint")
    assert "\n" not in str(info.value) and "\x1b" not in str(info.value)
    assert str(info.value).startswith("env.json is damaged: ")


@pytest.mark.parametrize("data", [None, [1], "x", 3, {}, {"name": "e1"}])
def test_not_a_record(data: object) -> None:
    with pytest.raises(DamagedError, match=r"env\.json is damaged"):
        records.EnvRecord.from_dict(data, "env.json", "")


@pytest.mark.parametrize(("raw", "match"), [
    (b'{"name": "e1", "pyth', "not valid JSON"), (b"{}", "'name' is missing"),
    (b"[1]", "not a JSON object"), (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b"[" * 100000, "not valid JSON"), (b" " * (2 << 20), "larger than"),
])
def test_read_record_damaged(store: Store, raw: bytes, match: str) -> None:
    env = make(store, "e1", "11")
    (env.dir / "env.json").write_bytes(raw)
    with pytest.raises(DamagedError, match=match) as info:
        records.get("e1", store)
    assert "\n" not in str(info.value) and "venvoy remove e1" in str(info.value)


def test_record_naming_another_environment(store: Store) -> None:
    env = make(store, "e1", "11")
    (env.dir / "env.json").write_text(json.dumps(record_data("e2")))
    with pytest.raises(DamagedError, match="it names 'e2'"):
        records.get("e1", store)


def test_missing_record_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="no environment named 'nope'"):
        records.get("nope", store)
    assert records.find(store, "nope") is None


@pytest.mark.parametrize(("damage", "match"), [
    ("missing", "has no pylock.toml"), ("garbled", "not UTF-8 text"),
    ("edited", "does not match the environment's lock hash"), ("directory", "cannot read"),
])
def test_damaged_lock(store: Store, damage: str, match: str) -> None:
    env = make(store, "e1", "11")
    lock = env.dir / "pylock.toml"
    lock.unlink()
    if damage == "garbled":
        lock.write_bytes(b"\xff\x00[[[")
    elif damage == "edited":
        lock.write_text(LOCK + "\n[[packages]]\n")
    elif damage == "directory":
        lock.mkdir()
    with pytest.raises(DamagedError, match=match):
        _ = records.get("e1", store).lock_text


def test_lock_line_endings_are_not_damage(store: Store) -> None:
    """The lock hash is of normalised text: a lock written with CRLF is the same lock."""
    text = LOCK.replace("\n", "\r\n").rstrip("\r\n")
    env = records.write_env(store, records.EnvRecord.from_dict(record_data(), "t", ""), text)
    assert records.get("e1", store).lock_text == text and env.lock_hash == records.lock_hash(LOCK)


def test_safe_text() -> None:
    assert records.safe_text("a\x1b[31mb\nc\u202ed\x00") == "a\\x1b[31mb\\nc\\u202ed\\x00"
    assert len(records.safe_text("x" * 1000)) == 400


# --------------------------------------------------------------------------- list and remove


def test_list_shows_damaged_rows_and_every_neighbour(store: Store) -> None:
    make(store, "e1", "11")
    make(store, "e2", "22")
    make(store, "e3", "33")
    (store.env_dir("e1") / "env.json").write_text(json.dumps(record_data(created="\x1b[31m\nrow")))
    (store.env_dir("e3") / "pylock.toml").unlink()
    (store.envs / "e4").mkdir()  # a directory with no record
    (store.envs / ".tmp-e5-x").mkdir()  # an interrupted write: not an environment
    rows = {r["name"]: r for r in records.list_envs(store)}
    assert sorted(rows) == ["e1", "e2", "e3", "e4"]
    assert rows["e2"]["python"] == "3.11" and rows["e2"]["forms"] == ["archive"]
    assert "'created' is not a time" in rows["e1"]["damaged"]
    assert "has no pylock.toml" in rows["e3"]["damaged"]
    assert "has no env.json" in rows["e4"]["damaged"]
    for row in rows.values():
        assert all(str(v).isprintable() for v in row.values())


def test_remove_beside_a_damaged_record(store: Store) -> None:
    """`remove e2` with a damaged e1 removes e2 and its image, and leaves e1 alone."""
    e1 = make(store, "e1", "11")
    e2 = make(store, "e2", "22")
    (e1.dir / "env.json").write_text("[1]")
    before = sorted(p.name for p in e1.dir.iterdir())
    assert records.remove("e2", store) > 0
    assert not e2.dir.exists() and not e2.archive.exists()
    assert sorted(p.name for p in e1.dir.iterdir()) == before and e1.archive.exists()


def test_damaged_record_keeps_a_shared_image(store: Store) -> None:
    """e1 (damaged, its env.json truncated) and e2 share an image: removing e2 keeps it,
    since e1's directory still names it; removing e1 then frees it."""
    e1 = make(store, "e1", "11")
    make(store, "e2", "11")
    (e1.dir / "env.json").write_text('{"name": "e1", "ima')
    records.remove("e2", store)
    assert e1.archive.exists()
    records.remove("e1", store)
    assert not e1.archive.exists() and not e1.dir.exists()
    assert [p.name for p in store.envs.iterdir()] == []


def test_remove_damaged_record_with_a_traversal_id(store: Store, tmp_path: Path) -> None:
    e1 = make(store, "e1", "11")
    victim = tmp_path / "etc"
    victim.mkdir()
    (victim / "passwd").write_text("keep")
    (e1.dir / "env.json").write_text(json.dumps(record_data(image_id="sha256:../../etc")))
    (e1.dir / "image").write_text(f"sha256:../../../etc {'ef' * 32}\n")
    records.remove("e1", store)
    assert (victim / "passwd").read_text() == "keep" and not e1.dir.exists()


def test_remove_unknown(store: Store) -> None:
    with pytest.raises(NotFound):
        records.remove("nope", store)


# --------------------------------------------------------------------------- requirement lines


def test_read_requirements_uses_the_record_check(tmp_path: Path) -> None:
    req = tmp_path / "r.txt"
    req.write_text("# top\nsix  # why\n\n  numpy>=1\t; python_version >= '3'\nx @ https://h/x.whl#sha256=ab\n")
    assert read_requirements([req]) == ("six\nnumpy>=1 ; python_version >= '3'\n"
                                        "x @ https://h/x.whl#sha256=ab\n")
    # what init -r stores is exactly what a record read accepts
    text = read_requirements([req])
    records.EnvRecord.from_dict(record_data(requirements=text), "env.json", "")


@pytest.mark.parametrize(("line", "match"), [
    ("--index-url http://127.0.0.1:9/simple", r"r\.txt:2: options such as '--index-url'"),
    ("six --index-url http://x", "options such as '--index-url'"),
    ("-e .", "options such as '-e'"), ("-r other.txt", "options such as '-r'"),
    ("six\x1b[2J", r"r\.txt:2: a requirement holds control characters"),
    ("six --hash=md5:00", "is not sha256"),
])
def test_read_requirements_refuses(tmp_path: Path, line: str, match: str) -> None:
    req = tmp_path / "r.txt"
    req.write_text(f"six\n{line}\n")
    with pytest.raises(BadRequest, match=match) as info:
        read_requirements([req])
    assert "\n" not in str(info.value)


def test_read_requirements_bad_files(tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="does not exist"):
        read_requirements([tmp_path / "nope.txt"])
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(BadRequest, match="not UTF-8"):
        read_requirements([tmp_path / "bin.txt"])
    with pytest.raises(BadRequest, match="cannot read"):
        read_requirements([tmp_path])


def test_relative_wheel_path_is_read_from_the_requirements_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    (project / "wheels").mkdir(parents=True)
    wheel = project / "wheels" / "toy-1.0-py3-none-any.whl"
    wheel.write_bytes(b"x")
    (project / "requirements.txt").write_text(
        "./wheels/toy-1.0-py3-none-any.whl\ntoy2 @ wheels/toy-1.0-py3-none-any.whl --hash=sha256:"
        + "0" * 64 + "\n")
    monkeypatch.chdir(tmp_path)  # not the requirements file's directory
    text = read_requirements([Path("project/requirements.txt")])
    assert text == (f"{wheel}\ntoy2 @ {wheel} --hash=sha256:{'0' * 64}\n")
    assert check_lines(text, "r") == text  # absolute now: accepted by the lock step
    (project / "requirements.txt").write_text("./wheels/missing-1.0-py3-none-any.whl\n")
    with pytest.raises(BadRequest, match=r"does not exist .*requirements file's directory"):
        read_requirements([project / "requirements.txt"])


def test_hash_pins() -> None:
    digest = "ab" * 32
    assert hash_pins(f"Six_x==1 --hash=sha256:{digest.upper()}\nnumpy\n"
                     f"six.x --hash sha256:{'cd' * 32}\n") == {"six-x": {digest, "cd" * 32}}


def test_pyproject_dependencies_are_checked(tmp_path: Path) -> None:
    py = tmp_path / "pyproject.toml"
    py.write_text('[project]\nname = "x"\ndependencies = ["six", "numpy>=1"]\n')
    assert read_requirements(pyproject=py) == "six\nnumpy>=1\n"
    py.write_text('[project]\nname = "x"\ndependencies = ["six", "--index-url http://x"]\n')
    with pytest.raises(BadRequest, match="options such as"):
        read_requirements(pyproject=py)
    py.write_text('[project]\nname = "x"\ndependencies = [1]\n')
    with pytest.raises(BadRequest, match="dependencies list of strings"):
        read_requirements(pyproject=py)
    py.write_text("project = 3\n")
    with pytest.raises(BadRequest, match="no \\[project\\] dependencies"):
        read_requirements(pyproject=py)


@pytest.mark.parametrize("package", ["--index-url http://127.0.0.1:9/simple", "six\n-e .",
                                     "six --extra-index-url http://x", "./local-1.0-py3-none-any.whl",
                                     "six\x1b[2J"])
def test_library_packages_get_the_same_check(package: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """VenvoyEnvironment(packages=...) is checked like `init -r`, before anything is built."""
    from venvoy import VenvoyEnvironment
    from venvoy.build import environment

    monkeypatch.setattr(environment, "init", lambda *_a, **_kw: pytest.fail("init was called"))
    with pytest.raises(BadRequest) as info:
        VenvoyEnvironment("demo", packages=["six", package]).initialize()
    assert str(info.value).startswith("packages:") and "\n" not in str(info.value)


def test_continuation_lines_as_pip_compile_writes_them(tmp_path: Path) -> None:
    req = tmp_path / "r.txt"
    req.write_text(f"six==1.17.0 \\\n    --hash=sha256:{'ab' * 32} \\\n    --hash=sha256:{'cd' * 32}\n"
                   "numpy  # comment \\\n--index-url http://x\n")
    with pytest.raises(BadRequest, match=r"r\.txt:5: options such as '--index-url'"):
        read_requirements([req])  # a comment line does not continue onto the next
    req.write_text(f"six==1.17.0 \\\n    --hash=sha256:{'ab' * 32}\nnumpy\n")
    assert read_requirements([req]) == f"six==1.17.0 --hash=sha256:{'ab' * 32}\nnumpy\n"
    req.write_text("six \\\n--index-url http://x\n")  # joined: the option is still refused
    with pytest.raises(BadRequest, match=r"r\.txt:1: options such as '--index-url'"):
        read_requirements([req])
    with pytest.raises(DamagedError, match="line continuation"):
        records.EnvRecord.from_dict(record_data(requirements="six \\\n--hash=x\n"), "env.json", "")


def test_relative_path_with_a_marker(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"x")
    req = tmp_path / "r.txt"
    req.write_text("x @ x ; python_version >= '3'\n")
    assert read_requirements([req]) == f"x @ {tmp_path / 'x'} ; python_version >= '3'\n"


# --------------------------------------------------------------------------- the fast path's view


def fast(store: Store, name: str = "e1") -> tuple[str, str, str] | None:
    from venvoy.store.fastpath import env_image

    return env_image(name, {"VENVOY_HOME": str(store.root)})


def test_fast_path_trusts_only_the_record_it_was_written_with(store: Store) -> None:
    env = make(store, "e1", "11")
    record = store.env_dir("e1") / "env.json"
    assert fast(store) == (str(store.root), env.record.image_id, env.tag)
    for damage in (b"{}", record.read_bytes()[:-9], b"[1]"):  # emptied, truncated, replaced
        record.write_bytes(damage)
        assert fast(store) is None  # the full path reads it and says what is wrong
    record.unlink()
    assert fast(store) is None
    record.mkdir()
    assert fast(store) is None


def test_fast_path_reads_an_older_image_file(store: Store) -> None:
    env = make(store, "e1", "11")
    (store.env_dir("e1") / "image").write_text(f"{env.record.image_id} {env.record.identity}\n")
    assert fast(store) == (str(store.root), env.record.image_id, env.tag)
    assert records.named_images(store, "e1") == {env.record.image_id: env.record.identity}


def test_fast_path_never_opens_a_fifo_or_a_link(store: Store, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = make(store, "e1", "11")
    image = store.env_dir("e1") / "image"
    (tmp_path / "elsewhere").write_text(image.read_text())
    image.unlink()
    image.symlink_to(tmp_path / "elsewhere")
    assert fast(store) is None
    image.unlink()
    os.mkfifo(image)
    # In a child: a blocking open() of a FIFO with no writer would never return.
    code = ("import sys; from venvoy.store.fastpath import env_image; "
            "print(env_image('e1', {'VENVOY_HOME': sys.argv[1]}))")
    out = subprocess.run([sys.executable, "-c", code, str(store.root)], capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip() == "None"
    assert env.record.image_id  # the environment itself is untouched


def test_a_symlinked_environment_is_removed_as_a_link(store: Store, tmp_path: Path) -> None:
    """`envs/evil -> somewhere` is listed as damaged; `remove evil` drops the link
    itself and never touches what it points at."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "env.json").write_text("{}")
    store.envs.mkdir(parents=True, exist_ok=True)
    (store.envs / "evil").symlink_to(elsewhere)
    assert any(row.get("name") == "evil" and "damaged" in row for row in records.list_envs(store))
    assert records.remove("evil", store) == 0
    assert not os.path.lexists(store.envs / "evil")
    assert (elsewhere / "env.json").read_text() == "{}"
    with pytest.raises(NotFound):
        records.remove("evil", store)


def test_fast_path_never_takes_a_linked_charliecloud_directory(store: Store, tmp_path: Path) -> None:
    """cache/ch/<id> must be venvoy's own directory: a link to one elsewhere is not run."""
    from venvoy.runtime import adapter_class
    from venvoy.store.fastpath import cached_image

    env = make(store, "e1", "11")
    rt = adapter_class("charliecloud")("/x", {})
    target = store.ch_dir(env.image_id)
    target.parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "other-root").mkdir()
    target.symlink_to(tmp_path / "other-root")
    assert cached_image(str(store.root), rt, env.image_id, env.tag, {}) is None
    target.unlink()
    target.mkdir()
    assert cached_image(str(store.root), rt, env.image_id, env.tag, {}) == str(target)
