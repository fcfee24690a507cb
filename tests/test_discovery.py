"""Where a use case given by name is found (issue 19, item 1): ``--metadata-dir``, else ``$LOOM_METADATA``,
else ``./metadata`` of the current directory, and only then the bundled examples; an unknown name lists
where Loom looked and how to create it in the user's own folder, never in the package."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from common.errors import SpecError
from common.spec import load_usecase
from common.spec.loader import BUNDLED_METADATA, METADATA_ENV

REPO = Path(__file__).resolve().parent.parent


def _project(root: Path, name: str = "telco", version: int = 1) -> Path:
    """A user's project folder with ``metadata/<name>/``: the bundled churn use case under another name."""
    folder = root / "metadata" / name
    shutil.copytree(REPO / "metadata" / "churn", folder)
    usecase = folder / "usecase.yaml"
    text = usecase.read_text()
    assert "name: churn" in text
    usecase.write_text(text.replace("name: churn", f"name: {name}").replace("version: 1", f"version: {version}"))
    return root / "metadata"


@pytest.fixture()
def elsewhere(tmp_path, monkeypatch):
    """The current directory is a project folder outside the checkout; no $LOOM_METADATA."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.delenv(METADATA_ENV, raising=False)
    return project


def test_a_use_case_in_dot_metadata_of_the_current_directory_is_found_by_name(elsewhere):
    _project(elsewhere)
    spec = load_usecase("telco")
    assert spec.name == "telco"
    assert Path(spec.file_of("name")).parent == elsewhere / "metadata" / "telco"


def test_loom_metadata_wins_over_dot_metadata(elsewhere, tmp_path, monkeypatch):
    _project(elsewhere, version=1)
    other = _project(tmp_path / "other", version=2)
    monkeypatch.setenv(METADATA_ENV, str(other))
    assert load_usecase("telco").version == 2


def test_the_bundled_examples_come_last(elsewhere, tmp_path, monkeypatch):
    assert load_usecase("churn").name == "churn", "no ./metadata here: the bundled example is found"
    assert Path(load_usecase("churn").file_of("name")).parent == BUNDLED_METADATA.resolve() / "churn"
    mine = _project(elsewhere, name="churn", version=3)
    assert load_usecase("churn").version == 3, "the user's own churn shadows the bundled one"
    assert Path(load_usecase("churn").file_of("name")).parent == mine / "churn"


def test_an_unknown_name_lists_where_loom_looked_and_points_at_the_users_folder(elsewhere, tmp_path, monkeypatch):
    _project(elsewhere)
    with pytest.raises(SpecError) as caught:
        load_usecase("shop")
    message = str(caught.value)
    assert f"{elsewhere / 'metadata'} (./metadata of the current directory: ['telco'])" in message
    assert f"{BUNDLED_METADATA.resolve()} (Loom's bundled examples: ['churn', 'telco'])" in message
    assert f"Fix: create {elsewhere / 'metadata' / 'shop' / 'usecase.yaml'}" in message
    monkeypatch.setenv(METADATA_ENV, str(tmp_path / "mine"))
    with pytest.raises(SpecError, match=f"Fix: create {tmp_path / 'mine' / 'shop' / 'usecase.yaml'}"):
        load_usecase("shop")


def test_a_path_still_works(elsewhere):
    _project(elsewhere)
    assert load_usecase("metadata/telco").name == "telco"
    assert load_usecase(str(elsewhere / "metadata" / "telco")).name == "telco"


def test_metadata_dir_flag_on_the_cli_wins_over_the_environment(elsewhere, tmp_path, monkeypatch, capsys):
    import os

    from jobs.cli import main

    monkeypatch.setattr(os, "environ", dict(os.environ))  # the job exports the flag for its children
    flagged = _project(tmp_path / "flagged", version=4)
    monkeypatch.setenv(METADATA_ENV, str(_project(tmp_path / "env", version=5)))
    assert main(["validate", "--usecase", "telco", "--metadata-dir", str(flagged)]) == 0
    out = capsys.readouterr().out
    assert "use case telco v4: OK" in out and str(flagged / "telco") in out
    assert main(["validate", "--usecase", "telco", "--metadata-dir", str(tmp_path / "nope")]) == 2
    assert "--metadata-dir" in capsys.readouterr().err


def test_every_job_with_usecase_accepts_metadata_dir():
    from jobs.cli import JOBS, build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "job").choices
    with_usecase = [n for n in JOBS if "--usecase" in subparsers[n]._option_string_actions]
    assert {"validate", "ingest", "backfill", "materialize", "train", "serve", "demo"} <= set(with_usecase)
    missing = [n for n in with_usecase if "--metadata-dir" not in subparsers[n]._option_string_actions]
    assert not missing
