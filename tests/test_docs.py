"""The documentation is checked: README.md and docs/*.md.

* every docs/*.md is linked from the README, and every relative link of the README and the docs
  leads to a file that exists (and to a heading of it, when the link names an anchor);
* every ```yaml block parses, and says in an HTML comment just before it how it is checked
  (``<!-- yaml-check: KIND -->``):

  - ``usecase``: a complete use case; it passes what ``loom validate`` runs (load, compile, schedules);
  - ``churn [PATH]``: a fragment of the churn example (at a dotted PATH such as ``models.churn``, or at the
    top); merged into churn, the use case still passes ``loom validate``'s checks;
  - ``Class.field``: validates as that field of a spec model (``FeatureGroup.transforms``);
  - ``parse-only``: parsed, not validated (say why beside it);
* every ```json block parses;
* every ``loom ...`` command of a ```bash block parses with the ``loom`` console script's own argparse
  parser (``jobs.cli.build_parser``: real subcommands, real flags, valid values), and so do
  ``python -m jobs.<job> ...`` and ``spark-submit ... jobs/<job>.py ...``; a ``loom ...`` shown in
  inline code names a real job and real flags;
* every repository file (``common/spec/safe_yaml.py``) and every ``common.*`` module or name
  (``common.models.training_set.create_training_set``) shown in inline code exists, so a moved module
  cannot leave the docs behind.

Pure: no Spark session, no server; a few seconds.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import io
import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter

from jobs.cli import JOBS, build_parser
from tests.spec_helpers import churn_documents, write_usecase

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*yaml-check:\s*(.+?)\s*-->\s*$")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`\n]+`")
SHELL = {"bash", "sh", "shell", "console"}
SEPARATORS = {"&&", "||", ";", "|"}
REDIRECTS = re.compile(r"^\d?>>?|^<$|^\d?>&\d$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it starts (1-based line of its first content line), its language,
    its text (dedented by the fence's indentation) and the yaml-check marker before it, if any."""

    page: Path
    line: int
    lang: str
    text: str
    marker: str | None

    def __str__(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def fenced_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, lang = opening.group(1), opening.group(2).lower()
        previous = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        marker = MARKER.match(previous)
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = [line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[i + 1 : end]]
        blocks.append(Block(page, i + 2, lang, "\n".join(body), marker.group(1) if marker else None))
        i = end + 1
    return blocks


def prose(page: Path) -> str:
    """A page's text outside fenced code blocks (those lines blanked, so line numbers hold)."""
    out, inside = [], False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line) or (inside and line.strip() == "```"):
            inside = not inside
            out.append("")
            continue
        out.append("" if inside else line)
    return "\n".join(out)


def github_slug(title: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation removed, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Anchors of a page's headings (a repeated heading gets ``-1``, ``-2``, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(page).splitlines():
        heading = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = github_slug(heading.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link on a page that is not to another site."""
    links = []
    for number, line in enumerate(prose(page).splitlines(), start=1):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                links.append((number, target))
    return links


def broken_links(page: Path) -> list[str]:
    """Every relative link of ``page`` whose file or heading does not exist, as ``line: target (why)``."""
    problems = []
    for number, target in relative_links(page):
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            problems.append(f"{number}: {target} (no file {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{number}: {target} (no heading #{anchor} in {resolved.name})")
    return problems


# --- (a) links ---------------------------------------------------------------


def test_there_are_docs_and_the_readme_stays_short():
    assert len(DOCS) >= 8, "the reference lives in docs/<topic>.md"
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200, "README.md is the front door: ≤ 200 lines"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_doc_is_linked_from_the_readme(doc):
    linked = {(README.parent / target.partition("#")[0]).resolve() for _, target in relative_links(README)}
    assert doc.resolve() in linked, f"README.md has no link to docs/{doc.name}: add it to the Reference list"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    assert broken_links(page) == [], f"broken links in {page.relative_to(ROOT)}"


# --- (b) YAML and JSON blocks ------------------------------------------------

BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]
YAML_BLOCKS = [b for b in BLOCKS if b.lang in {"yaml", "yml"}]


def _spec_class(name: str) -> type:
    from common.spec.features import FeatureGroup
    from common.spec.models import Model
    from common.spec.schedules import Schedule
    from common.spec.sources import Source
    from common.spec.triggers import Trigger
    from common.spec.usecase import UseCase

    classes = {c.__name__: c for c in (FeatureGroup, Model, Schedule, Source, Trigger, UseCase)}
    if name not in classes:
        raise AssertionError(f"yaml-check names an unknown spec class {name!r}; known: {sorted(classes)}")
    return classes[name]


def _deep_merge(base: Any, fragment: Any) -> Any:
    """``fragment`` over ``base``: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(fragment, dict):
        merged = dict(base)
        for key, value in fragment.items():
            merged[key] = _deep_merge(base[key], value) if key in base else value
        return merged
    return fragment


def _merged_churn(fragment: Any, at: str | None) -> dict[str, dict[str, Any]]:
    """The churn example's files with ``fragment`` merged at the dotted path ``at`` (or the top)."""
    for part in reversed(at.split(".") if at else []):
        fragment = {part: fragment}
    assert isinstance(fragment, dict), "a churn fragment is a mapping of sections"
    documents = copy.deepcopy(churn_documents())
    for section, value in fragment.items():
        home = next((name for name, doc in documents.items() if section in doc), "usecase.yaml")
        documents[home] = _deep_merge(documents[home], {section: value})
    return documents


def _validate_like_loom_validate(folder: Path) -> None:
    """What ``loom validate`` checks (jobs/validate.py): load, compile the plan, build the schedules."""
    from common.compile import compile_usecase
    from common.spec import load_usecase
    from common.spec.schedules import usecase_schedules

    spec = load_usecase(folder)
    compile_usecase(spec)
    usecase_schedules(spec)


def check_yaml_block(block: Block, tmp_path: Path) -> None:
    """Parse a YAML block and validate it as its marker says; raises on any problem."""
    data = yaml.safe_load(block.text)
    if block.marker is None:
        raise AssertionError(f"{block}: a yaml block needs a <!-- yaml-check: ... --> line before it")
    kind, _, argument = block.marker.partition(" ")
    if kind == "parse-only":
        return
    if kind == "usecase":
        folder = tmp_path / "usecase"
        folder.mkdir()
        (folder / "usecase.yaml").write_text(block.text, encoding="utf-8")
        _validate_like_loom_validate(folder)
    elif kind == "churn":
        _validate_like_loom_validate(write_usecase(tmp_path / "churn", _merged_churn(data, argument or None)))
    elif re.fullmatch(r"[A-Z]\w*\.\w+", kind):
        class_name, field = kind.split(".")
        model = _spec_class(class_name)
        assert field in model.model_fields, f"{block}: {class_name} has no field {field!r}"
        TypeAdapter(model.model_fields[field].annotation).validate_python(data)
    else:
        raise AssertionError(f"{block}: unknown yaml-check {block.marker!r}")


def test_the_docs_show_yaml():
    assert YAML_BLOCKS, "no yaml block found: the parser of this test is broken"
    assert any(b.marker == "usecase" for b in YAML_BLOCKS), "the docs show a complete use case"


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=str)
def test_yaml_block_parses_and_validates(block, tmp_path):
    check_yaml_block(block, tmp_path)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "json"], ids=str)
def test_json_block_parses(block):
    json.loads(block.text)


# --- (c) commands --------------------------------------------------------------


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell snippet as token lists: continuation lines joined, comments dropped,
    split at ``&&``, ``||``, ``;`` and ``|``, redirections cut off."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        current: list[str] = []
        redirected = False
        for token in [*shlex.split(line, comments=True), ";"]:
            if token in SEPARATORS:
                if current:
                    commands.append(current)
                current, redirected = [], False
            elif REDIRECTS.match(token):
                redirected = True
            elif not redirected:
                current.append(token)
    return commands


def loom_arguments(command: list[str]) -> list[str] | None:
    """The arguments after ``loom`` of a command that runs a job (``loom``, ``python -m jobs.X``,
    ``spark-submit ... jobs/X.py``), with optional parts (``[--flag value]``) taken as given; else None."""
    program = Path(command[0]).name
    if program == "loom":
        args = command[1:]
    elif program.startswith("python") and command[1:2] == ["-m"] and command[2].startswith("jobs."):
        by_module = {module: job for job, module in JOBS.items()}
        assert command[2] in by_module, f"python -m {command[2]}: no such job module"
        args = [by_module[command[2]], *command[3:]]
    elif program == "spark-submit":
        script = next(i for i, token in enumerate(command) if token.endswith(".py"))
        assert (ROOT / command[script]).is_file(), f"spark-submit: no file {command[script]}"
        by_module = {module: job for job, module in JOBS.items()}
        module = command[script].removesuffix(".py").replace("/", ".")
        assert module in by_module, f"spark-submit {command[script]}: not a job"
        args = [by_module[module], *command[script + 1 :]]
    else:
        return None
    return [token.strip("[]") for token in args if token.strip("[]")]


def parse_error(args: list[str]) -> str | None:
    """What the ``loom`` parser says about ``args``: None when they parse, else its error message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(args)
    except SystemExit as exit_:
        return stderr.getvalue().strip().splitlines()[-1] if exit_.code else None
    return None


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of a parser and of its subcommands."""
    flags = {flag for action in parser._actions for flag in action.option_strings}
    for child in _subcommands(parser).values():
        flags |= _flags(child)
    return flags


def inline_loom_problems(page: Path) -> list[str]:
    """``loom <job> ...`` in inline code: the job must exist and every ``--flag`` must be one of its own."""
    jobs = _subcommands(build_parser())
    problems = []
    for number, line in enumerate(prose(page).splitlines(), start=1):
        for span in INLINE_CODE.findall(line):
            tokens = span.strip("`").replace("\\|", "|").split()
            # `loom <job> ...` is a template and `loom notebook: error: ...` a message, not commands
            if len(tokens) < 2 or tokens[0] != "loom" or not re.fullmatch(r"[a-z][a-z-]*", tokens[1]):
                continue
            if tokens[1] not in jobs:
                problems.append(f"{number}: {span}: no job {tokens[1]!r}")
                continue
            known = _flags(jobs[tokens[1]])
            for token in tokens[2:]:
                for choice in token.strip("[]").split("|"):  # [--write|--check]
                    flag = choice.split("=")[0]
                    if flag.startswith("--") and flag not in known:
                        problems.append(f"{number}: {span}: loom {tokens[1]} has no flag {flag}")
    return problems


SHELL_COMMANDS = [(block, command) for block in BLOCKS if block.lang in SHELL for command in shell_commands(block.text)]
JOB_COMMANDS = [(block, args) for block, command in SHELL_COMMANDS if (args := loom_arguments(command)) is not None]


def test_the_docs_show_commands():
    assert len(JOB_COMMANDS) >= 20, "the command finder of this test is broken"
    assert any(block.page == README for block, _ in JOB_COMMANDS), "README.md shows loom commands"


@pytest.mark.parametrize(("block", "args"), JOB_COMMANDS, ids=lambda x: str(x) if isinstance(x, Block) else "")
def test_shown_command_parses_with_the_loom_parser(block, args):
    assert parse_error(args) is None, f"{block}: loom {' '.join(args)}: {parse_error(args)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_inline_loom_commands_name_real_jobs_and_flags(page):
    assert inline_loom_problems(page) == []


# --- (d) files and modules named in the text ---------------------------------

REPO_PATH = re.compile(r"(?:common|jobs|tests|bench|metadata|notebooks|spark-conf)/[\w./-]*\w")
DOTTED = re.compile(r"common(?:\.\w+)+")


def _top_level_names(source: Path) -> set[str]:
    """Names a module defines or imports at its top level (read with ast: nothing is imported)."""
    names = set()
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


def dotted_exists(name: str) -> bool:
    """``common.a.b`` is a module or package of the repository, or a top-level name of one."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if source.is_file():
            rest = parts[cut:]
            return not rest or (len(rest) == 1 and rest[0] in _top_level_names(source))
    return False


def named_code_problems(page: Path) -> list[str]:
    """Repository files and ``common.*`` names in a page's inline code that do not exist."""
    problems = []
    for number, line in enumerate(prose(page).splitlines(), start=1):
        for span in INLINE_CODE.findall(line):
            for token in re.split(r"[\s(),:;`\[\]]+", span):
                if REPO_PATH.fullmatch(token) and not (ROOT / token).exists():
                    problems.append(f"{number}: {span}: no file {token}")
                elif (dotted := DOTTED.fullmatch(token)) and not dotted_exists(dotted.group(0)):
                    problems.append(f"{number}: {span}: no module or name {token}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_files_and_modules_exist(page):
    assert named_code_problems(page) == []


# --- the checks themselves catch what they are for ---------------------------


def test_the_checks_reject_broken_input(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](page.md#title) [gone](nowhere.md) [bad anchor](page.md#no-such)\n")
    assert [p.split(" ")[1] for p in broken_links(page)] == ["nowhere.md", "page.md#no-such"]

    def block(text: str, marker: str | None) -> Block:
        return Block(page, 1, "yaml", text, marker)

    with pytest.raises(yaml.YAMLError):
        check_yaml_block(block("a: [1, 2", "parse-only"), tmp_path)
    with pytest.raises(AssertionError, match="needs a <!-- yaml-check"):
        check_yaml_block(block("a: 1", None), tmp_path)
    with pytest.raises(Exception, match="estimatr"):
        check_yaml_block(block("estimatr: {class: x.Y}", "churn models.churn"), tmp_path)
    with pytest.raises(Exception, match=r"One year|One-year"):
        check_yaml_block(
            block("- {name: c, fn: one_hot, input: c, values: [One year, One-year]}", "FeatureGroup.transforms"),
            tmp_path,
        )

    assert parse_error(["ingest", "--usecase", "churn"]) is None
    assert "unrecognized arguments: --no-such-flag" in parse_error(["ingest", "--usecase", "churn", "--no-such-flag"])
    assert "invalid choice" in parse_error(["no-such-job"])
    assert loom_arguments(shell_commands("loom forget --usecase churn --entity C1 [--strict]  # x")[0]) == [
        "forget",
        "--usecase",
        "churn",
        "--entity",
        "C1",
        "--strict",
    ]
    named = tmp_path / "named.md"
    named.write_text(
        "`common/spec/loader.py`, `common.spec.loader.load_usecase`, `common/nope.py`, `common.spec.nope`\n"
    )
    assert named_code_problems(named) == [
        "1: `common/nope.py`: no file common/nope.py",
        "1: `common.spec.nope`: no module or name common.spec.nope",
    ]
    inline = tmp_path / "inline.md"
    inline.write_text("Run `loom ingest --usecase churn --mood batch` or `loom ingestt`.\n")
    assert inline_loom_problems(inline) == [
        "1: `loom ingest --usecase churn --mood batch`: loom ingest has no flag --mood",
        "1: `loom ingestt`: no job 'ingestt'",
    ]
