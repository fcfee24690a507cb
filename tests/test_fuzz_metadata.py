"""Hostile metadata (issue 20): every mutant of the churn use case exits 0 or 2 with one short message.

`loom validate` runs in-process through the CLI entry point (``jobs.cli.main``) on mutants of
``metadata/churn`` that Hypothesis generates with a fixed seed: alias bombs, deep nesting,
bytes that are not UTF-8, duplicate keys, wrong types, huge values, bad crons and durations,
deleted keys and random edits. Each must exit 0 (valid) or 2 with a message under 1 KB,
within 5 s, and never print a traceback. A few real subprocesses check the same from outside.
"""

from __future__ import annotations

import contextlib
import copy
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from jobs.cli import main

CHURN = Path(__file__).resolve().parents[1] / "metadata" / "churn"
FILES = {path.name: path.read_text() for path in sorted(CHURN.glob("*.yaml"))}
DOCS = {name: yaml.safe_load(text) for name, text in FILES.items()}
MUTANTS = 500
BOMB = (
    "[&a [x,x,x,x,x,x,x,x,x], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], "
    "&d [*c,*c,*c,*c,*c,*c,*c,*c,*c], &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], &f [*e,*e,*e,*e,*e,*e,*e,*e,*e], "
    "&g [*f,*f,*f,*f,*f,*f,*f,*f,*f], [*g,*g,*g,*g,*g,*g,*g,*g,*g]]"
)
MARKER = "LOOM_FUZZ_MARKER_7c1d"
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: mutants are made fast


def _paths(node, prefix=()):
    """Every path to a value of a document (mapping keys and list indexes)."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


PATHS = [(name, path) for name, doc in DOCS.items() for path in _paths(doc) if path]
CRON_PATHS = [(n, p) for n, p in PATHS if p[-1] in ("cron", "schedule")]
DURATION_PATHS = [(n, p) for n, p in PATHS if p[-1] in ("window", "slide", "ttl", "watermark", "within", "cooldown")]


def _dump(doc) -> bytes:
    return yaml.dump(doc, Dumper=_DUMPER, allow_unicode=True, sort_keys=False).encode()


def _replace(doc, path, value):
    doc = copy.deepcopy(doc)
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


def _delete(doc, path):
    doc = copy.deepcopy(doc)
    node = doc
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return doc


def _with_raw(doc, path, raw: str) -> bytes:
    """``doc`` with the YAML text ``raw`` (an alias bomb, deep brackets) as the value at ``path``."""
    return _dump(_replace(doc, path, MARKER)).replace(MARKER.encode(), raw.encode(), 1)


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["x" * 1_000_000, "٣ days", "7\xa0days", "7 days\n", "1-0 * * * *", "@daily", "\u202e"])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
CRONS = st.one_of(
    st.sampled_from(
        [
            "0 3 30 2 *",
            "0 0 31 4 *",
            "* * * * * *",
            "0 0 3 * * *",
            "@daily",
            "@reboot",
            "1-0 * * * *",
            "0 0 * * 7-1",
            "*/0 * * * *",
            "0 0 L * *",
            "0\t3 * * *",
            "0 3 * * 0",
            "30 1 * * *",
            "0 0 29 2 *",
            "60 * * * *",
            "",
        ]
    ),
    st.lists(
        st.sampled_from(["*", "0", "5", "1-3", "3-1", "*/2", "1,2", "jan", "mon-fri", "fri-mon", "99", "?", "L"]),
        min_size=1,
        max_size=7,
    ).map(" ".join),
)
DURATIONS = st.one_of(
    st.builds(
        lambda digits, space, unit: f"{digits}{space}{unit}",
        st.text(st.characters(categories=["Nd"]), min_size=1, max_size=4),
        st.sampled_from([" ", "\xa0", "\t", "", "  ", "\u2009"]),
        st.sampled_from(["day", "days", "hour", "minutes", "week", "fortnight", "DAYS"]),
    ),
    st.sampled_from(["0 days", "99999999999 weeks", "-1 day", "1.5 hours", "7 days\n", "P7D"]),
)


class Mutant:
    """The churn files with one mutation; a short repr (Hypothesis prints failing examples)."""

    def __init__(self, kind: str, files: dict[str, bytes]) -> None:
        self.kind = kind
        self.files = files

    def __repr__(self) -> str:
        changed = {n: d for n, d in self.files.items() if d != FILES[n].encode()}
        return f"Mutant({self.kind!r}, {{{', '.join(f'{n!r}: {d[:300]!r}...' for n, d in changed.items())}}})"


@st.composite
def mutants(draw) -> Mutant:
    """The churn files with one mutation."""
    files = {name: text.encode() for name, text in FILES.items()}
    kind = draw(
        st.sampled_from(
            ["bomb", "deep", "bytes", "duplicate", "type", "cron", "duration", "delete", "edit", "huge", "params_bomb"]
        )
    )
    name, path = draw(st.sampled_from(PATHS))
    doc = DOCS[name]
    if kind == "bomb":
        files[name] = _with_raw(doc, path, BOMB)
    elif kind == "params_bomb":  # passed validate, then hung every job that compiled the model
        files["models.yaml"] = _with_raw(
            DOCS["models.yaml"], ("models", "churn", "estimator", "params"), "{p: " + BOMB + "}"
        )
    elif kind == "deep":
        depth = draw(st.integers(min_value=60, max_value=3000))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
        files[name] = _with_raw(doc, path, opener * depth + "1" + closer * depth)
    elif kind == "bytes":
        data = files[name]
        at = draw(st.integers(min_value=0, max_value=len(data)))
        junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80\x80", b"\xfe\xff", b"\xc0\xaf"]))
        files[name] = data[:at] + junk + data[at:]
    elif kind == "duplicate":
        lines = FILES[name].splitlines(keepends=True)
        candidates = [i for i, line in enumerate(lines) if ":" in line and not line.lstrip().startswith("#")]
        index = draw(st.sampled_from(candidates))
        other = draw(st.sampled_from(["", "0.9", "'x'", "[1]"]))
        copy = lines[index] if not other else lines[index].split(":", 1)[0] + ": " + other + "\n"
        files[name] = "".join([*lines[: index + 1], copy, *lines[index + 1 :]]).encode()
    elif kind == "type":
        files[name] = _dump(_replace(doc, path, draw(VALUES)))
    elif kind == "huge":
        files[name] = _dump(_replace(doc, path, "v" * 1_000_000))
    elif kind == "cron" and CRON_PATHS:
        name, path = draw(st.sampled_from(CRON_PATHS))
        files[name] = _dump(_replace(DOCS[name], path, draw(CRONS)))
    elif kind == "duration" and DURATION_PATHS:
        name, path = draw(st.sampled_from(DURATION_PATHS))
        files[name] = _dump(_replace(DOCS[name], path, draw(DURATIONS)))
    elif kind == "delete":
        files[name] = _dump(_delete(doc, path))
    else:  # edit: delete a span and insert printable junk
        data = files[name]
        at = draw(st.integers(min_value=0, max_value=len(data)))
        cut = draw(st.integers(min_value=0, max_value=40))
        junk = draw(st.text(st.sampled_from(list(":-[]{}&*!|>'\"#%@`, \n\tabc019")), max_size=12)).encode()
        files[name] = data[:at] + junk + data[at + cut :]
    return Mutant(kind, files)


def _validate(folder: Path) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["validate", "--usecase", str(folder)])
        except SystemExit as exit_:  # argparse
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue(), time.monotonic() - started


def _check(kind: str, code: int, err: str, seconds: float) -> None:
    assert code in (0, 2), f"{kind}: exit {code}: {err[:500]}"
    assert "Traceback" not in err, f"{kind}: {err[:1000]}"
    assert seconds < 5, f"{kind}: {seconds:.1f} s"
    if code == 2:
        assert err.startswith("loom validate: error: "), f"{kind}: {err[:300]}"
        assert len(err.encode()) < 1024, f"{kind}: {len(err.encode())} bytes: {err[:300]}"


def test_the_unmutated_use_case_validates():
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "churn"
        folder.mkdir()
        for name, text in FILES.items():
            (folder / name).write_text(text)
        code, out, err, _ = _validate(folder)
    assert code == 0, err
    assert "use case churn v1: OK" in out and "models: churn" in out


@pytest.mark.slow  # 500 validations: ~20 s at low load, a minute under load
def test_five_hundred_metadata_mutants_exit_0_or_2_with_one_short_message():
    kinds: dict[str, dict[int, int]] = {}
    test_the_unmutated_use_case_validates()  # warm: the first call imports the compiler (seconds, once)

    @seed(20)
    @settings(
        max_examples=MUTANTS,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],  # shrinking megabyte mutants takes minutes; the repr says enough
    )
    @given(mutants())
    def one_mutant(mutant):
        kind, files = mutant.kind, mutant.files
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "churn"
            folder.mkdir()
            for name, data in files.items():
                (folder / name).write_bytes(data)
            code, _, err, seconds = _validate(folder)
        _check(kind, code, err, seconds)
        counts = kinds.setdefault(kind, {})
        counts[code] = counts.get(code, 0) + 1

    one_mutant()
    assert sum(sum(c.values()) for c in kinds.values()) >= MUTANTS
    for kind in ("bomb", "params_bomb", "deep", "bytes"):
        assert kinds.get(kind, {}).get(0, 0) == 0, (kind, kinds)  # never accepted
        assert kinds.get(kind, {}).get(2, 0) > 0, (kind, kinds)  # and generated
    for kind in ("duplicate", "type", "cron", "duration", "delete", "edit", "huge"):  # a 1 MB description is valid
        assert sum(kinds.get(kind, {}).values()) > 0, (kind, kinds)


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("params_bomb", "expands to more than 100,000 values"),
        ("deep", "nesting deeper than 64 levels"),
        ("bytes", "is not UTF-8"),
    ],
)
def test_loom_validate_subprocess_gives_one_line_and_exit_2(tmp_path, kind, what):
    folder = tmp_path / "churn"
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(text)
    if kind == "params_bomb":
        (folder / "models.yaml").write_bytes(
            _with_raw(DOCS["models.yaml"], ("models", "churn", "estimator", "params"), "{p: " + BOMB + "}")
        )
    elif kind == "deep":
        (folder / "features.yaml").write_bytes(
            _with_raw(DOCS["features.yaml"], ("feature_groups",), "[" * 500 + "]" * 500)
        )
    else:
        (folder / "sources.yaml").write_bytes(FILES["sources.yaml"].encode() + b"\n# caf\xe9\n")
    done = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "validate", "--usecase", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert what in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and len(done.stderr.encode()) < 1024, done.stderr[:2000]
    assert "Traceback" not in done.stderr


def _folder_with(tmp_path: Path, name: str, data: bytes) -> Path:
    folder = tmp_path / "churn"
    folder.mkdir()
    for file, text in FILES.items():
        (folder / file).write_text(text)
    (folder / name).write_bytes(data)
    return folder


def test_a_duplicate_key_is_refused_not_last_one_wins(tmp_path):
    text = FILES["models.yaml"]
    assert "    threshold: 0.5 " in text
    doubled = text.replace("    threshold: 0.5 ", "    threshold: 0.9\n    threshold: 0.5 ", 1)
    code, _, err, _ = _validate(_folder_with(tmp_path, "models.yaml", doubled.encode()))
    assert code == 2
    assert "key 'threshold' appears twice in one mapping" in err and "models.yaml" in err


def test_a_one_megabyte_value_gives_a_short_error(tmp_path):
    doc = _replace(DOCS["sources.yaml"], ("sources", "events", "watermark"), "9" * 1_000_000 + " days")
    code, _, err, _ = _validate(_folder_with(tmp_path, "sources.yaml", _dump(doc)))
    assert code == 2 and len(err.encode()) < 1024
    assert "sources.events.watermark" in err and "is not a duration" in err


def test_validate_compiles_the_plan(tmp_path):
    """A spec that loads but does not compile (unknown SQL column) fails `loom validate`, not every job later."""
    from common.spec import load_usecase

    text = FILES["features.yaml"].replace("expr: amount_clipped,", "expr: no_such_column,", 1)
    folder = _folder_with(tmp_path, "features.yaml", text.encode())
    load_usecase(folder)  # the spec alone is valid
    code, _, err, _ = _validate(folder)
    assert code == 2
    assert "reads unknown column 'no_such_column'" in err and len(err.strip().splitlines()) == 1
