"""Schedules: metadata -> checked jobs -> crontab / Databricks bundle / `loom schedule run`.

No Spark: the jobs that really run here are `loom validate` (fast, no session).
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import importlib
import json
import os
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from croniter import croniter
from pydantic import Field, ValidationError

from common import schedules as schedule_lib  # the library; `scheduler` is the job
from common.errors import SpecError, SpecErrors
from common.spec import load_usecase
from common.spec.base import Name
from common.spec.loader import merge_documents, translate_errors
from common.spec.schedules import Schedule, usecase_schedules
from common.spec.usecase import UseCase
from jobs import schedule as scheduler
from jobs.cli import JOBS
from jobs.runner import build_parser
from tests.spec_helpers import churn_documents, write_usecase

REPO = Path(__file__).resolve().parent.parent

EXAMPLE = {
    "nightly_backfill": {"job": "backfill", "cron": "30 1 * * *"},
    "weekly_retrain": {"job": "train", "args": {"model": "churn"}, "cron": "0 3 * * 0"},
    "hourly_catch_up": {"job": "stream", "args": {"available-now": True}, "cron": "5 * * * *"},
    "daily_score": {"job": "score", "args": {"model": "churn@champion", "at": "now"}, "cron": "0 6 * * *"},
}

# UseCase gains `schedules` in its own change; until then the tests add the field in a subclass
# and load through the same merge and error translation as load_usecase.
if "schedules" in UseCase.model_fields:
    ScheduledUseCase = UseCase
else:

    class ScheduledUseCase(UseCase):
        schedules: dict[Name, Schedule] = Field(default_factory=dict)


def load_scheduled(folder: Path) -> UseCase:
    if ScheduledUseCase is UseCase:
        return load_usecase(folder)
    document, origins = merge_documents(sorted(folder.glob("*.yaml")))
    try:
        spec = ScheduledUseCase.model_validate(document)
    except ValidationError as err:
        raise SpecErrors(translate_errors(err, document, origins)) from None
    spec._origins = origins.as_dict()
    return spec


def churn_with(tmp_path: Path, schedules: dict | None, model_schedule: object = "keep") -> Path:
    """A copy of churn whose schedules.yaml holds ``schedules`` (None: no such file)."""
    documents = copy.deepcopy(churn_documents())
    documents.pop("schedules.yaml", None)
    if schedules is not None:
        documents["schedules.yaml"] = {"schedules": schedules}
    if model_schedule != "keep":
        documents["models.yaml"]["models"]["churn"]["schedule"] = model_schedule
    return write_usecase(tmp_path / "churn", documents)


def spec_with(tmp_path: Path, schedules: dict | None = None, model_schedule: object = "keep") -> UseCase:
    return load_scheduled(churn_with(tmp_path, schedules, model_schedule))


def parse_with_job(job: str, argv: list[str]):
    """Parse ``argv`` with the job's own argparse parser, as `loom <job>` would."""
    module = importlib.import_module(JOBS[job])
    try:
        return build_parser(job, module).parse_args(argv)
    except SystemExit:
        pytest.fail(f"loom {job} rejects {argv}")


def due_names(output: str) -> set[str]:
    return {line.split()[1] for line in output.splitlines() if line.strip().startswith("due ")}


# --- the spec ------------------------------------------------------------------


def test_example_schedules_load_and_replace_the_implied_retrain(tmp_path):
    spec = spec_with(tmp_path, EXAMPLE)
    entries = usecase_schedules(spec)
    assert sorted(entries) == sorted(EXAMPLE)  # weekly_retrain trains churn: no retrain_churn
    assert entries["hourly_catch_up"].schedule.args == {"available-now": True}
    assert entries["weekly_retrain"].file.endswith("schedules.yaml")


def test_model_schedule_implies_a_retrain(tmp_path):
    spec = spec_with(tmp_path, {"nightly_backfill": EXAMPLE["nightly_backfill"]})
    entries = usecase_schedules(spec)
    assert sorted(entries) == ["nightly_backfill", "retrain_churn"]
    implied = entries["retrain_churn"]
    assert implied.implied and implied.path == "models.churn.schedule"
    assert (implied.schedule.job, implied.schedule.args, implied.schedule.cron) == (
        "train",
        {"model": "churn"},
        "0 3 * * 0",
    )
    assert scheduler.plan(spec)[-1].argv == ("--model", "churn")


def test_the_retraining_policy_job_replaces_the_implied_retrain(tmp_path):
    policy = {"job": "retrain", "args": {"model": "churn"}, "cron": "0 3 * * *"}
    spec = spec_with(tmp_path, {"daily_retrain": policy})
    assert sorted(usecase_schedules(spec)) == ["daily_retrain"]  # `loom retrain` honours the model's schedule
    assert scheduler.plan(spec)[0].argv == ("--model", "churn")


def test_no_model_schedule_no_implied_retrain(tmp_path):
    spec = spec_with(tmp_path, None, model_schedule=None)
    assert usecase_schedules(spec) == {}


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("0 3 * *", "has 4 fields, not 5"),
        ("0 0 3 * * *", "has 6 fields: Loom's cron has no seconds field"),
        ("1-0 * * * *", "the minute range '1-0' runs backwards"),
        ("0 0 * * fri-mon", "the day-of-week range 'fri-mon' runs backwards"),
        ("0\t3 * * *", "use ASCII and plain spaces only"),
        ("61 * * * *", "is not a cron expression"),
        ("0 0 L * *", "day-of-month field 'L' is not portable cron"),
        ("0 0 * * 5#3", "day-of-week field '5#3' is not portable cron"),
        ("0 0 31 2 *", "never fires"),
    ],
)
def test_invalid_cron_names_file_path_and_fix(tmp_path, cron, says):
    with pytest.raises(SpecError) as caught:
        spec_with(tmp_path, {"nightly_backfill": {"job": "backfill", "cron": cron}})
    message = str(caught.value)
    assert "schedules.yaml: schedules.nightly_backfill.cron:" in message
    assert says in message
    assert "write 5 fields 'minute hour day-of-month month day-of-week'" in message


def test_arg_written_with_dashes_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as caught:
        spec_with(tmp_path, {"retrain": {"job": "train", "args": {"--model": "churn"}, "cron": "0 3 * * 0"}})
    assert "schedules.retrain.args:" in str(caught.value)
    assert "without leading dashes, e.g. model:" in str(caught.value)


def test_usecase_arg_is_reserved(tmp_path):
    with pytest.raises(SpecError, match=r"schedules\.b\.args: .*'usecase' is not allowed.*passes --usecase itself"):
        spec_with(tmp_path, {"b": {"job": "backfill", "args": {"usecase": "other"}, "cron": "0 1 * * *"}})


def test_unknown_key_in_a_schedule(tmp_path):
    with pytest.raises(SpecError, match=r"schedules\.b\.when: unknown key 'when'"):
        spec_with(tmp_path, {"b": {"job": "backfill", "when": "0 1 * * *", "cron": "0 1 * * *"}})


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("@weekly", "'@weekly' is a nickname Loom does not accept; write '0 0 * * 0'"),  # crontab and Quartz differ
        ("0 3 30 2 *", "'0 3 30 2 *' never fires"),  # passed before, then failed in croniter at schedule time
        ("*/1 * * * * *", "has 6 fields"),  # croniter reads a 6th field as seconds: it would tick every second
    ],
)
def test_model_schedule_that_is_not_portable_names_the_model(tmp_path, cron, says):
    with pytest.raises(SpecError) as caught:
        spec_with(tmp_path, None, model_schedule=cron)
    message = str(caught.value)
    assert "models.yaml: models.churn.schedule: " in message
    assert says in message


# --- jobs and arguments (checked with each job's parser) -----------------------


@pytest.mark.parametrize(
    ("body", "where", "says"),
    [
        (
            {"job": "trian", "args": {"model": "churn"}},
            "schedules.s.job",
            "unknown job 'trian'. Fix: did you mean 'train'?",
        ),
        ({"job": "smoke"}, "schedules.s.job", "job 'smoke' cannot be scheduled: it takes no --usecase"),
        (
            {"job": "train", "args": {"modle": "churn"}},
            "schedules.s.args.modle",
            "no flag --modle. Fix: did you mean 'model'?",
        ),
        ({"job": "train"}, "schedules.s.args", "the following arguments are required: --model"),
        ({"job": "train", "args": {"model": "nope"}}, "schedules.s.args.model", "unknown model 'nope'"),
        (
            {"job": "score", "args": {"model": "churn@champion", "at": "soon"}},
            "schedules.s.args",
            "'soon' is not a time",
        ),
        ({"job": "backfill", "args": {"start": "yesterday"}}, "schedules.s.args", "'yesterday' is not a date"),
        (
            {"job": "stream", "args": {"available-now": "yes"}},
            "schedules.s.args.available-now",
            "--available-now is a switch",
        ),
        ({"job": "stream"}, "schedules.s.args", "stream runs until stopped (got {}). Fix: add available-now: true"),
        ({"job": "ingest", "args": {"mode": "stream"}}, "schedules.s.args", "use mode: batch"),
        ({"job": "ingest", "args": {"mode": "sometimes"}}, "schedules.s.args", "invalid choice: 'sometimes'"),
        (
            {"job": "train", "args": {"model": ["churn", "churn"]}},
            "schedules.s.args.model",
            "takes one value, not a list",
        ),
        (
            {"job": "consistency", "args": {"tolerance": True}},
            "schedules.s.args.tolerance",
            "takes a value, not true/false",
        ),
    ],
)
def test_bad_job_or_arguments_name_the_yaml_path_and_the_fix(tmp_path, body, where, says):
    spec = spec_with(tmp_path, {"s": {**body, "cron": "0 1 * * *"}})
    with pytest.raises(SpecError) as caught:
        scheduler.plan(spec)
    message = str(caught.value)
    assert f"schedules.yaml: {where}:" in message
    assert says in message
    assert "Fix:" in message


def test_all_problems_are_reported_together(tmp_path):
    spec = spec_with(
        tmp_path,
        {
            "a": {"job": "trian", "cron": "0 1 * * *"},
            "b": {"job": "backfill", "args": {"grup": "x"}, "cron": "0 2 * * *"},
        },
    )
    with pytest.raises(SpecErrors) as caught:
        scheduler.plan(spec)
    assert [e.path for e in caught.value.errors] == ["schedules.a.job", "schedules.b.args.grup"]


def test_args_become_flags_in_order(tmp_path):
    spec = spec_with(
        tmp_path,
        {
            "s": {
                "job": "stream",
                "args": {"available-now": True, "only": ["ingest", "features"]},
                "cron": "5 * * * *",
            },
            "b": {"job": "backfill", "args": {"group": "activity", "start": "2026-01-01"}, "cron": "0 1 * * *"},
            "off": {"job": "ingest", "args": {"mode": "batch", "max-files-per-trigger": 10}, "cron": "0 2 * * *"},
        },
    )
    argv = {p.name: p.argv for p in scheduler.plan(spec)}
    assert argv["s"] == ("--available-now", "--only", "ingest", "--only", "features")
    assert argv["b"] == ("--group", "activity", "--start", "2026-01-01")
    assert argv["off"] == ("--mode", "batch", "--max-files-per-trigger", "10")
    assert parse_with_job("stream", ["--usecase", "churn", *argv["s"]]).only == ["ingest", "features"]


# --- Quartz --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "quartz"),
    [
        ("30 1 * * *", "0 30 1 * * ?"),
        ("0 3 * * 0", "0 0 3 ? * SUN"),
        ("0 3 * * 7", "0 0 3 ? * SUN"),
        ("5 * * * *", "0 5 * * * ?"),
        ("0 6 * * *", "0 0 6 * * ?"),
        ("*/15 9-17 * * 1-5", "0 0/15 9-17 ? * MON-FRI"),
        ("0 */6 1,15 * *", "0 0 0/6 1,15 * ?"),
        ("0 0 */2 */3 *", "0 0 0 1/2 1/3 ?"),
        ("10,20 0 * * 5-7", "0 10,20 0 ? * SUN,FRI-SAT"),
        ("0 0 * * mon,wed,fri", "0 0 0 ? * MON,WED,FRI"),
        ("0-4,30 0 1 jan *", "0 0-4,30 0 1 1 ?"),
    ],
)
def test_quartz_conversion(cron, quartz):
    assert schedule_lib.to_quartz(cron) == quartz


@pytest.mark.parametrize(
    "cron", ["30 1 * * *", "*/15 9-17 * * 1-5", "0 */6 1,15 * *", "0 0 */2 */3 *", "10,20 0 * * 5-7", "7 4 29 2 *"]
)
def test_quartz_fires_at_the_same_times_as_cron(cron):
    quartz = schedule_lib.to_quartz(cron)
    seconds, *fields = quartz.split()
    assert seconds == "0"
    back = " ".join("*" if f == "?" else f.lower() for f in fields)  # croniter reads Quartz's a/k and day names
    start = datetime(2026, 1, 1, tzinfo=UTC)
    original, converted = croniter(cron, start), croniter(back, start)
    for _ in range(200):
        assert original.get_next(datetime) == converted.get_next(datetime), (cron, quartz)


def test_quartz_refuses_both_day_fields(tmp_path):
    with pytest.raises(ValueError, match="restricts both day-of-month and day-of-week"):
        schedule_lib.to_quartz("0 0 1 * 1")
    spec = spec_with(tmp_path, {"odd": {"job": "backfill", "cron": "0 0 1 * 1"}})
    with pytest.raises(SpecError) as caught:
        schedule_lib.export_bundle(spec, scheduler.plan(spec), "churn")
    assert "schedules.yaml: schedules.odd.cron:" in str(caught.value)
    assert "Fix: split it into two schedules" in str(caught.value)
    assert schedule_lib.export_crontab(spec, scheduler.plan(spec), "churn")  # cron itself has no such limit


# --- export --------------------------------------------------------------------


def crontab_jobs(text: str) -> list[tuple[str, str]]:
    """(cron expression, command) of every job line; comments and VAR=value lines skipped."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or "=" in line.split()[0]:
            continue
        fields = line.split(maxsplit=5)
        out.append((" ".join(fields[:5]), fields[5]))
    return out


def test_crontab_lines_parse_and_call_the_loom_entry_points(tmp_path):
    spec = spec_with(tmp_path, EXAMPLE)
    text = schedule_lib.export_crontab(spec, scheduler.plan(spec), "churn", home=tmp_path / "home")
    lines = crontab_jobs(text)
    assert len(lines) == 4
    assert "CRON_TZ=UTC" in text.splitlines()
    assert f"LOOM_HOME={tmp_path / 'home'}" in text.splitlines()
    for cron, command in lines:
        assert croniter.is_valid(cron), cron
        assert command.startswith(f"cd {REPO} && ")
        tokens = shlex.split(command)
        lock = tokens.index("flock")
        assert tokens[lock + 1] == "-n" and tokens[lock + 2].endswith(".lock")
        assert tokens[lock + 3] == str(Path(sys.executable).parent / "loom")
        job, argv = tokens[lock + 4], tokens[lock + 5 : tokens.index(">>")]
        assert tokens[-1] == "2>&1" and tokens[-2].endswith(".log")
        parse_with_job(job, argv)
    by_cron = dict(lines)
    assert "loom train --usecase churn --model churn >>" in by_cron["0 3 * * 0"]
    assert "loom stream --usecase churn --available-now >>" in by_cron["5 * * * *"]
    assert "loom score --usecase churn --model churn@champion --at now >>" in by_cron["0 6 * * *"]


def test_crontab_line_runs_and_flock_prevents_overlap(tmp_path):
    spec = spec_with(tmp_path, {"check": {"job": "validate", "cron": "* * * * *"}}, model_schedule=None)
    home = tmp_path / "home"
    # the job loads `churn` from metadata/ (the subprocess sees the repository's use case)
    [(_, command)] = crontab_jobs(schedule_lib.export_crontab(spec, scheduler.plan(spec), "churn", home=home))
    env = {**os.environ, "LOOM_HOME": str(home)}
    done = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    log = home / "schedule" / "churn.check.log"
    assert "use case churn v1: OK" in log.read_text()
    size = log.stat().st_size
    with open(home / "schedule" / "churn.check.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a run still going
        skipped = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 1  # flock -n gave up; the job did not start
    assert log.stat().st_size == size


def test_crontab_escapes_percent(tmp_path):
    spec = spec_with(
        tmp_path,
        {"s": {"job": "score", "args": {"model": "churn@champion", "at": "now", "show": 5}, "cron": "0 6 * * *"}},
    )
    planned = scheduler.plan(spec)
    planned = [dataclasses.replace(planned[0], argv=(*planned[0].argv[:-1], "5%"))]  # cron's special %
    [(_, command)] = crontab_jobs(schedule_lib.export_crontab(spec, planned, "churn"))
    assert "5\\%" in command and "5%" not in command.replace("5\\%", "")


def test_databricks_bundle_loads_and_every_task_is_a_valid_entry_point(tmp_path):
    spec = spec_with(tmp_path, {**EXAMPLE, "catch_up_ingest": {"job": "ingest", "cron": "*/10 * * * *"}})
    out = REPO / "resources" / "loom.yml"  # where a bundle keeps resource files; never written here
    document = yaml.safe_load(schedule_lib.export_bundle(spec, scheduler.plan(spec), "churn", out.parent))
    jobs = document["resources"]["jobs"]
    notebooks = jobs.pop("loom_churn_churn_notebooks")  # the lifecycle notebooks: tests/test_notebooks.py
    assert "schedule" not in notebooks and notebooks["tasks"][0]["notebook_task"]["base_parameters"]["model"] == "churn"
    assert sorted(jobs) == sorted(f"loom_churn_{name}" for name in [*EXAMPLE, "catch_up_ingest"])
    assert "loom_cluster_id" in document["variables"]
    crons = {
        f"loom_churn_{name}": body["cron"]
        for name, body in {**EXAMPLE, "catch_up_ingest": {"cron": "*/10 * * * *"}}.items()
    }
    for key, job in jobs.items():
        assert job["schedule"]["timezone_id"] == "UTC"
        assert job["schedule"]["quartz_cron_expression"] == schedule_lib.to_quartz(crons[key])
        assert job["max_concurrent_runs"] == 1
        [task] = job["tasks"]
        assert task["existing_cluster_id"] == "${var.loom_cluster_id}"
        python_file = (out.parent / task["spark_python_task"]["python_file"]).resolve()
        assert python_file.is_file() and python_file.parent == REPO / "jobs", python_file
        job_name = next(name for name, module in JOBS.items() if module == f"jobs.{python_file.stem}")
        parameters = task["spark_python_task"]["parameters"]
        assert parameters[:2] == ["--usecase", "${workspace.file_path}/metadata/churn"]
        assert parameters[-2:] == ["--profile", "databricks"]
        parse_with_job(job_name, parameters)
        assert (out.parent / task["libraries"][0]["whl"]).parent.resolve() == REPO / "dist"
    assert jobs["loom_churn_daily_score"]["schedule"]["quartz_cron_expression"] == "0 0 6 * * ?"
    assert jobs["loom_churn_weekly_retrain"]["tasks"][0]["spark_python_task"]["python_file"] == "../jobs/train.py"


# --- run -----------------------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch):
    folder = tmp_path / "loom-home"
    monkeypatch.setenv("LOOM_HOME", str(folder))
    return folder


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2026-01-18T03:00:30", {"weekly_retrain"}),  # a Sunday; the first run looks back one minute
        ("2026-01-18T06:00:00", {"daily_score"}),  # a tick exactly at now is due
        ("2026-01-18T05:05:59", {"hourly_catch_up"}),
        ("2026-01-19T03:00:30", set()),  # a Monday
        ("2026-01-19T01:30:10", {"nightly_backfill"}),
    ],
)
def test_dry_run_first_time_picks_exactly_the_ticks_of_the_last_minute(tmp_path, home, capsys, now, expected):
    spec = spec_with(tmp_path, EXAMPLE)
    assert schedule_lib.run_due(spec, scheduler.plan(spec), "churn", at(now), dry_run=True) == 0
    assert due_names(capsys.readouterr().out) == expected
    assert not home.exists()  # a dry run records nothing


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2026-01-18T06:00:30", {"nightly_backfill", "weekly_retrain", "hourly_catch_up", "daily_score"}),
        ("2026-01-18T02:59:59", {"nightly_backfill", "hourly_catch_up"}),
        ("2026-01-18T00:04:59", set()),
        ("2026-01-17T12:00:00", set()),  # before the last check: nothing, and nothing twice
    ],
)
def test_dry_run_picks_ticks_since_the_last_check(tmp_path, home, capsys, now, expected):
    spec = spec_with(tmp_path, EXAMPLE)
    home.mkdir()
    checked = {name: {"checked": "2026-01-18T00:00:00Z"} for name in EXAMPLE}
    (home / schedule_lib.STATE_FILE).write_text(json.dumps({"version": 1, "usecases": {"churn": checked}}))
    schedule_lib.run_due(spec, scheduler.plan(spec), "churn", at(now), dry_run=True)
    output = capsys.readouterr().out
    assert due_names(output) == expected
    for name, command in [("weekly_retrain", "-m jobs.train --usecase churn --model churn")]:
        if name in expected:
            assert command in next(line for line in output.splitlines() if f"due  {name} " in line)


def test_run_runs_each_due_job_once_and_records_it(tmp_path, home, capsys):
    spec = spec_with(
        tmp_path,
        {"check": {"job": "validate", "cron": "*/10 * * * *"}, "later": {"job": "validate", "cron": "0 4 * * *"}},
        model_schedule=None,  # no implied retrain: only `validate` may really run here
    )
    planned = scheduler.plan(spec)
    now = at("2026-01-18T03:10:20")
    # the job loads `churn` from metadata/ in its own process, as a crontab line would
    assert schedule_lib.run_due(spec, planned, "churn", now) == 0
    output = capsys.readouterr().out
    assert due_names(output) == {"check"}
    assert "done check: exit 0" in output
    state = json.loads((home / schedule_lib.STATE_FILE).read_text())["usecases"]["churn"]
    assert state["check"]["last_tick"] == "2026-01-18T03:10:00Z"
    assert state["check"]["exit_code"] == 0
    assert state["later"] == {"checked": "2026-01-18T03:10:20Z"}

    assert schedule_lib.run_due(spec, planned, "churn", now) == 0  # same time again: idempotent
    assert due_names(capsys.readouterr().out) == set()
    assert schedule_lib.run_due(spec, planned, "churn", now + timedelta(minutes=5)) == 0
    assert due_names(capsys.readouterr().out) == set()

    schedule_lib.run_due(spec, planned, "churn", at("2026-01-18T04:00:05"), dry_run=True)  # both ticked meanwhile
    assert due_names(capsys.readouterr().out) == {"check", "later"}
    assert schedule_lib.run_due(spec, planned, "churn", at("2026-01-18T04:10:00")) == 0  # exactly on check's tick
    assert due_names(capsys.readouterr().out) == {"check", "later"}
    schedule_lib.run_due(spec, planned, "churn", at("2026-01-18T04:10:30"), dry_run=True)
    assert due_names(capsys.readouterr().out) == set()  # that tick ran; it is not due twice


def test_a_failing_job_is_recorded_and_fails_the_run(tmp_path, home, capsys):
    spec = spec_with(tmp_path, {"check": {"job": "validate", "cron": "* * * * *"}}, model_schedule=None)
    assert schedule_lib.run_due(spec, scheduler.plan(spec), "no_such_case", at("2026-01-18T03:10:20")) == 1
    assert "done check: exit 2" in capsys.readouterr().out
    state = json.loads((home / schedule_lib.STATE_FILE).read_text())["usecases"]["churn"]
    assert state["check"]["exit_code"] == 2


def test_a_second_scheduler_does_nothing_while_one_runs(tmp_path, home, capsys):
    spec = spec_with(tmp_path, {"check": {"job": "validate", "cron": "* * * * *"}}, model_schedule=None)
    home.mkdir()
    with open(home / "schedule-state.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert schedule_lib.run_due(spec, scheduler.plan(spec), "churn", at("2026-01-18T03:10:20")) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert not (home / schedule_lib.STATE_FILE).exists()


# --- the CLI on the repository's churn use case ----------------------------------


def cli(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOOM_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "jobs.schedule", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_exports_and_dry_runs_churn(tmp_path):
    home = tmp_path / "home"
    crontab, bundle = tmp_path / "loom.crontab", tmp_path / "bundle" / "loom.yml"
    done = cli(["export", "--usecase", "churn", "--target", "cron", "--out", str(crontab)], home)
    assert done.returncode == 0, done.stderr
    lines = crontab_jobs(crontab.read_text())
    assert lines and all(croniter.is_valid(cron) for cron, _ in lines)
    assert any("loom retrain --usecase churn --model churn >>" in command for _, command in lines)
    assert any("loom evaluate --usecase churn --model churn >>" in command for _, command in lines)
    # the offline history's compaction runs nightly, off the streaming hot path
    assert ("45 1 * * *", True) in [(cron, "loom compact --usecase churn >>" in command) for cron, command in lines]

    done = cli(["export", "--usecase", "churn", "--target", "databricks", "--out", str(bundle)], home)
    assert done.returncode == 0, done.stderr
    jobs = yaml.safe_load(bundle.read_text())["resources"]["jobs"]
    for job in jobs.values():
        if "notebook_task" in job["tasks"][0]:  # the lifecycle notebooks: tests/test_notebooks.py
            continue
        python_file = (bundle.parent / job["tasks"][0]["spark_python_task"]["python_file"]).resolve()
        assert python_file.is_file()
        name = next(n for n, m in JOBS.items() if m == f"jobs.{python_file.stem}")
        parse_with_job(name, job["tasks"][0]["spark_python_task"]["parameters"])
    assert jobs["loom_churn_nightly_compact"]["tasks"][0]["spark_python_task"]["python_file"].endswith(
        "jobs/compact.py"
    )

    # 03:00 runs the retraining policy for churn (declared in schedules.yaml; it honours models.churn.schedule)
    done = cli(["run", "--usecase", "churn", "--now", "2026-01-18T03:00:30Z", "--dry-run"], home)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.strip().startswith("due ")]
    assert line.endswith("-m jobs.retrain --usecase churn --model churn")
    done = cli(["run", "--usecase", "churn", "--now", "2026-01-18T01:45:10Z", "--dry-run"], home)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if line.strip().startswith("due ")]
    assert line.endswith("-m jobs.compact --usecase churn")
    assert not home.exists()


def test_cli_error_is_one_message(tmp_path):
    folder = churn_with(tmp_path, None, model_schedule="@weekly")  # a Model accepts it; schedules do not
    done = cli(["export", "--usecase", str(folder), "--target", "cron"], tmp_path / "home")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "loom schedule: error:" in done.stderr
    assert "models.yaml: models.churn.schedule:" in done.stderr


def test_implied_retrain_name_taken_by_another_schedule(tmp_path):
    spec = spec_with(tmp_path, {"retrain_churn": {"job": "backfill", "cron": "0 1 * * *"}})
    with pytest.raises(SpecError) as caught:
        usecase_schedules(spec)
    message = str(caught.value)
    assert "models.yaml: models.churn.schedule:" in message
    assert "would be named 'retrain_churn', which schedules already uses" in message
    assert "Fix: rename schedules.retrain_churn" in message
