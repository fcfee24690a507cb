"""The lifecycle notebooks (notebooks/*.py): Databricks source format, the local runner
(`loom notebook run`), and every notebook run end to end, in order, on a small generated lake,
in this test session's SparkSession (no new JVM per notebook)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.notebooks import NotebookCellError, NotebookFormatError, parse_notebook, parse_source, run_notebook
from common.notebooks.source import HEADER, SEPARATOR

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
EXPECTED = ["01_features", "02_training", "03_scoring", "04_streaming", "05_monitoring", "06_privacy"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.py"))


# --- format --------------------------------------------------------------------------------


def test_one_notebook_per_stage_in_order():
    assert [p.stem for p in notebook_paths()] == EXPECTED


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_parses_as_a_databricks_source_notebook(path):
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == HEADER
    separators = [i for i, line in enumerate(lines) if line.startswith("# COMMAND")]
    assert separators and all(lines[i] == SEPARATOR for i in separators)
    # Databricks writes a blank line on each side of a separator
    assert all(lines[i - 1] == "" and lines[i + 1] == "" for i in separators)
    cells = parse_notebook(path)
    assert len(cells) == len(separators) + 1
    markdown = [c for c in cells if c.kind == "markdown"]
    assert cells[0].kind == "markdown" and cells[0].source.splitlines()[1].startswith("# "), "title first"
    for cell in markdown:
        raw = lines[cell.line - 1 : cell.line - 1 + len(cell.source.splitlines())]
        assert all(line == "# MAGIC" or line.startswith("# MAGIC ") for line in raw), cell.number
        assert raw[0] == "# MAGIC %md"
        body = cell.source.split("\n", 1)[1]
        assert body.strip() and not body.startswith(" "), f"cell {cell.number}: empty or indented markdown"
        assert body.count("`") % 2 == 0, f"cell {cell.number}: unbalanced code span"
    python = [c for c in cells if c.kind == "python"]
    assert all(c.kind in ("markdown", "python") for c in cells)
    assert len(python) >= 3 and len(markdown) >= 3
    for cell in python:
        ast.parse(cell.source)
        assert "# MAGIC" not in cell.source


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_takes_widgets_and_calls_only_the_library(path):
    tree = ast.parse(path.read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    assert not [m for m in modules if m.split(".")[0] == "jobs"], "notebooks call the library, not the jobs"
    # the REST service only through its in-process client (started for one call, like the demo does)
    serving = [m for m in modules if ".".join(m.split(".")[:2]) == "common.serving"]
    assert serving in ([], ["common.serving.local_client"]), modules
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("common")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert not private, f"private functions: {private}"
    [call] = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "notebook"
    ]
    assert ast.unparse(call.args[0]) == "globals()" and call.args[1].value == path.stem
    assert sorted(k.arg for k in call.keywords) == ["date", "model", "usecase"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("print(1)\n", "line 1"),
        (f"{HEADER}\n# COMMAND -------\n\nx = 1\n", "not a cell separator"),
        (f"{HEADER}\nx = 1\n\n{SEPARATOR}\n\n# MAGIC %md\nx = 2\n", "cell 2 (line 6) mixes"),
        (f"{HEADER}\n# MAGIC ## no magic command\n", "cell 1 (line 2) is a '# MAGIC' cell without"),
        (f"{HEADER}\n# MAGIC %md\n", "markdown cell 1 (line 2) has no text"),
        (f"{HEADER}\nx = 1\n\n{SEPARATOR}\n\n{SEPARATOR}\n\ny = 2\n", "cell 2 (line 6) is empty"),
        (f"{HEADER}\nx = 1\n\n{SEPARATOR}\n\ndef f(:\n", "cell 2 (line 6) is not valid Python"),
    ],
)
def test_malformed_notebooks_are_refused_with_the_cell(text, expected):
    with pytest.raises(NotebookFormatError, match=r"^bad\.py: ") as caught:
        parse_source(text, "bad.py")
    assert expected in str(caught.value)


# --- the runner ------------------------------------------------------------------------------

BROKEN = f"""{HEADER}
# MAGIC %md
# MAGIC # A notebook with a broken cell

{SEPARATOR}

from common.notebooks import notebook

nb = notebook(globals(), "broken", usecase="churn", model="churn", date="now")
total = int(nb.params["model"] == "churn")

{SEPARATOR}

def ratio(a, b):
    return a / b


value = ratio(total, 0)

{SEPARATOR}

after = True
"""


def test_a_broken_cell_stops_the_run_with_the_notebook_and_cell(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(BROKEN)
    with pytest.raises(NotebookCellError) as caught:
        run_notebook(path, out=tmp_path / "out")
    message = str(caught.value)
    # cell 3 starts at line 14; the error is raised in ratio(), line 15, called from line 18: the deepest line
    assert message.startswith("broken.py: cell 3 (line 15) failed: ZeroDivisionError: division by zero")
    assert caught.value.cell.number == 3


def test_widgets_have_local_defaults_and_params_override_them(tmp_path):
    path = tmp_path / "params.py"
    path.write_text(BROKEN.split(f"\n{SEPARATOR}\n\ndef")[0] + "\n")
    assert run_notebook(path).namespace["total"] == 1
    assert run_notebook(path, {"model": "other"}).namespace["total"] == 0
    with pytest.raises(NotebookCellError, match=r"cell 2 .*no widget 'customer'. Fix: use one of \['date'"):
        run_notebook(path, {"customer": "C1"})


def test_on_databricks_parameters_are_widgets_and_spark_is_the_clusters():
    from common.notebooks import notebook

    class Widgets:  # dbutils.widgets as Databricks has it: text() declares, get() reads the value set in the UI
        def __init__(self):
            self.declared, self.values = {}, {"model": "churn_v2"}

        def text(self, name, default, label):
            self.declared[name] = default

        def get(self, name):
            return self.values.get(name, self.declared[name])

    cluster_session = object()
    dbutils = type("DBUtils", (), {"widgets": Widgets()})()
    nb = notebook({"dbutils": dbutils, "spark": cluster_session}, "x", usecase="churn", model="churn", date="now")
    assert dbutils.widgets.declared == {"usecase": "churn", "model": "churn", "date": "now"}
    assert nb.params == {"usecase": "churn", "model": "churn_v2", "date": "now"} and nb.on_databricks
    assert nb.spark is cluster_session


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LOOM_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", "notebook", "run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_runs_cell_by_cell_and_a_failure_is_a_user_error(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(BROKEN)
    done = _cli(str(path), "--param", "model=churn", home=tmp_path / "home")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("loom notebook: error: broken.py: cell 3 (line 15) failed: ZeroDivision")
    assert "-- cell 2/4" in done.stdout and "-- cell 3/4" in done.stdout and "cell 4/4" not in done.stdout

    done = _cli(str(path), "--param", "model", home=tmp_path / "home")
    assert done.returncode == 2 and "--param 'model' is not key=value" in done.stderr
    done = _cli(str(tmp_path / "missing.py"), home=tmp_path / "home")
    assert done.returncode == 2 and "missing.py does not exist" in done.stderr


# --- what the notebooks needed from the library ----------------------------------------------


def test_explanation_contributions_are_the_score_minus_the_score_at_the_median():
    from types import SimpleNamespace

    import numpy as np
    import pandas as pd

    from common.models.explain import contributions

    weights = {"a": 0.5, "b": -2.0, "c": 0.0}
    model = SimpleNamespace(
        feature_spec=SimpleNamespace(lookup_features=tuple(weights)),
        predict_features=lambda frame: frame[list(weights)].fillna(0).to_numpy() @ np.array(list(weights.values())),
    )
    background = pd.DataFrame({"a": [0.0, 1.0, 2.0], "b": [1.0, 1.0, 5.0], "c": [3.0, 4.0, 5.0]})
    one = pd.DataFrame({"customer_id": ["C1"], "a": [4.0], "b": [0.0], "c": [9.0]})
    score, baseline, rows = contributions(model, one, background)
    assert score == pytest.approx(2.0) and baseline == pytest.approx(0.5 * 1 - 2.0 * 1)
    assert rows["feature"].tolist() == ["b", "a", "c"]  # largest |contribution| first
    assert rows["contribution"].tolist() == pytest.approx([2.0, 1.5, 0.0])  # (x - median) * weight
    assert rows["baseline"].tolist() == pytest.approx([1.0, 1.0, 4.0])


def test_feature_origins_trace_pii_through_transforms_to_the_policy():
    from common.compile.lineage import feature_origins
    from common.spec import load_usecase

    spec = load_usecase("churn")
    origins = {(o.feature, o.origin.source, o.origin.column): o for o in feature_origins(spec, "profile")}
    birth = origins[("birth_year", "customers", "date_of_birth")]
    assert birth.policy == "generalize (rule year)" and birth.trail.endswith("-> feature birth_year")
    tenure = origins[("tenure_days", "customers", "signup_date")]
    assert tenure.policy is None and "transform tenure_days" in tenure.trail
    activity = feature_origins(spec, "activity")
    assert all(o.policy is None for o in activity)  # no PII behind any activity feature
    assert {o.origin.column for o in activity if o.feature == "payment_sum_30d"} >= {"amount", "event_type"}


def test_the_date_widget():
    from datetime import UTC, datetime

    from common.errors import ConfigError
    from common.notebooks import parse_at

    assert parse_at("2026-01-14") == datetime(2026, 1, 15, tzinfo=UTC)  # the whole day counts
    assert parse_at("2026-01-14T06:30") == datetime(2026, 1, 14, 6, 30, tzinfo=UTC)
    assert abs((parse_at("now") - datetime.now(UTC)).total_seconds()) < 5
    with pytest.raises(ConfigError, match="widget date 'yesterday'"):
        parse_at("yesterday")


# --- every notebook, end to end -------------------------------------------------------------

CUSTOMERS, DAYS = 300, 8


@pytest.fixture(scope="module")
def notebook_lake(spark, tmp_path_factory):
    """A small lake ending today in its own LOOM_HOME (so REST sees fresh online features), its own
    Redis, landing files generated, streamed into bronze, Redis and the feature history, backfilled."""
    from common.compile import compile_usecase
    from common.generate import generate_landing
    from common.generate.options import demo_options
    from common.pipeline import catch_up
    from common.runtime.redis_server import RedisServer
    from common.runtime.tracking import configure
    from common.settings import paths
    from common.spec import load_usecase

    home = tmp_path_factory.mktemp("notebook-home")
    with pytest.MonkeyPatch.context() as patch, RedisServer() as redis:
        patch.setenv("LOOM_HOME", str(home))
        patch.setenv("REDIS_URL", redis.url)
        work = paths()
        plan = compile_usecase(load_usecase("churn"))
        generate_landing(plan.spec, work, demo_options(customers=CUSTOMERS, days=DAYS))
        # the feature stream writes Redis and the Delta history (`loom backfill` would add nothing)
        catch_up(spark, plan, work, redis.url, parts=("ingest", "features"))
        yield work
    configure(paths())  # MLflow back to the session's store


def check_features(ran, out, work):
    assert (out / "feature_history.png").is_file()
    assert ran["consistent"] and set(ran["consistency"]) == {"activity", "profile"}
    assert ran["consistency"]["activity"].entities_checked > CUSTOMERS // 2
    # birth_year reads date_of_birth, generalized to its year at ingestion
    pii = ran["pii_lineage"]
    assert pii.loc[pii["feature"] == "profile.birth_year", "policy"].tolist() == ["generalize (rule year)"]


def check_training(ran, out, work):
    from common.models import registry

    outcome = ran["outcome"]
    assert {p.stem for p in ran["curve_plots"]} == {"roc_curve", "pr_curve", "feature_importance"}
    assert (out / "label_balance.png").is_file()
    client = registry.client(work)
    assert registry.version_by_alias("churn", registry.CHAMPION, client) == outcome.version == 1
    assert client.get_model_version("churn", "1").run_id == outcome.run_id
    assert ran["aliases"] == {"champion": 1, "challenger": 1}
    # the notebook's training set and the run read the same Delta versions
    versions = {name: v.version for name, v in ran["training"].versions.items()}
    assert "bronze.outcomes" in versions and len(versions) == 3
    assert {name: v["version"] for name, v in outcome.lineage["tables"].items()} == versions
    assert len(ran["frame"]) == int(ran["balance"].sum()) >= 100
    assert 0.5 < outcome.metrics["roc_auc"] <= 1.0


def check_scoring(ran, out, work):
    import numpy as np

    scores = ran["scores"]
    assert len(scores) > CUSTOMERS // 2 and scores["score"].between(0, 1).all()
    assert (ran["actions"]["score"] >= ran["threshold"]).all()
    assert len(ran["actions"]) == int((scores["score"] >= ran["threshold"]).sum())
    explanation = ran["explanation"]
    assert explanation.score == pytest.approx(ran["batch_score"], abs=1e-9)
    assert explanation.rows["contribution"].abs().max() > 0 and np.isfinite(explanation.rows["contribution"]).all()


def check_streaming(ran, out, work):
    assert (out / "firings.png").is_file() and len(ran["fired"]) > 0
    firing = ran["firing"]
    assert firing["trigger"] == "outage_then_call" and firing["event_id"]
    assert ran["parity"], (firing, ran["batch_score"], ran["rest_score"])
    assert ran["batch_score"] == pytest.approx(firing["score"], abs=1e-9)
    assert ran["rest_score"] == pytest.approx(firing["score"], abs=1e-9)
    assert ran["rest"].version == firing["model_version"] == 1


def check_monitoring(ran, out, work):
    from common.models import registry

    assert (out / "drift.png").is_file() and (out / "runtime_metrics.png").is_file()
    assert ran["drift"].version == 1 and len(ran["drift"].rows) > 5
    assert ran["verdict"].outcome is None  # a dry run trains nothing
    assert registry.champion_history("churn", registry.client(work)) == [1]


def check_privacy(ran, out, work):
    assert ran["audit_clean"] and ran["audit_report"].ok
    assert {"email", "phone", "full_name"} <= set(ran["policies"]["column"])
    assert set(ran["report"].raw) == set(ran["report"].protected) and ran["report"].raw


CHECKS = [check_features, check_training, check_scoring, check_streaming, check_monitoring, check_privacy]


@pytest.mark.spark
@pytest.mark.slow
def test_every_notebook_end_to_end_in_order(spark, notebook_lake, tmp_path):
    """Each notebook runs (a failing cell fails here with the notebook's name and cell number), writes
    its plots, and keeps its promise; the next one runs on what the previous ones left."""
    for stem, check in zip(EXPECTED, CHECKS, strict=True):
        out = tmp_path / stem
        run = run_notebook(NOTEBOOKS / f"{stem}.py", out=out)
        ran = run.namespace
        print(f"{stem}: {sum(run.seconds.values()):.1f}s", {n: round(t, 1) for n, t in run.seconds.items()})
        plots = sorted(out.glob("*.png"))
        assert plots, f"{stem} wrote no plot"
        assert all(p.read_bytes()[:8] == PNG_MAGIC and p.stat().st_size > 2000 for p in plots), plots
        check(ran, out, notebook_lake)


# --- the Databricks bundle ------------------------------------------------------------------


def test_bundle_deploys_the_notebooks_as_notebook_tasks_beside_the_python_tasks(tmp_path):
    import yaml

    from jobs.cli import main

    out = tmp_path / "bundle" / "loom.yml"
    assert main(["schedule", "export", "--usecase", "churn", "--target", "databricks", "--out", str(out)]) == 0
    jobs = yaml.safe_load(out.read_text())["resources"]["jobs"]
    python = [job for job in jobs.values() if "spark_python_task" in job["tasks"][0]]
    assert python and all("schedule" in job for job in python)
    notebooks = jobs["loom_churn_churn_notebooks"]
    assert "schedule" not in notebooks  # run on demand: databricks bundle run loom_churn_churn_notebooks
    tasks = notebooks["tasks"]
    assert [t["task_key"] for t in tasks] == EXPECTED
    for previous, task in zip([None, *tasks], tasks, strict=False):
        path = (out.parent / task["notebook_task"]["notebook_path"]).resolve()
        assert path == NOTEBOOKS / f"{task['task_key']}.py" and path.is_file()
        assert task["notebook_task"]["base_parameters"] == {
            "usecase": "${workspace.file_path}/metadata/churn",
            "model": "churn",
            "date": "now",
        }
        assert task["existing_cluster_id"] == "${var.loom_cluster_id}"
        assert (out.parent / task["libraries"][0]["whl"]).parent.resolve() == REPO / "dist"
        assert task.get("depends_on") == (None if previous is None else [{"task_key": previous["task_key"]}])
