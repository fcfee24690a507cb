"""Schedules of a use case: checked against the jobs, exported, or run when due.

* :mod:`~common.schedules.plan`: :func:`plan_schedules`, each schedule's job and
  arguments checked with the job's own parser (passed in: ``common`` never
  imports ``jobs``) -> :class:`Planned`;
* :mod:`~common.schedules.quartz`: :func:`to_quartz`, cron -> Quartz (Databricks);
* :mod:`~common.schedules.crontab`: :func:`export_crontab`;
* :mod:`~common.schedules.bundle`: :func:`export_bundle`, Databricks Asset Bundle jobs YAML;
* :mod:`~common.schedules.state`: ``$LOOM_HOME/schedule-state.json`` and its lock;
* :mod:`~common.schedules.due`: :func:`due`, which schedules have ticked since last checked;
* :mod:`~common.schedules.run`: :func:`run_due`, ``loom schedule run``.

The entry point is ``loom schedule`` (jobs/schedule.py).
"""

from common.schedules.bundle import export_bundle
from common.schedules.crontab import export_crontab
from common.schedules.due import FIRST_RUN_WINDOW, due
from common.schedules.plan import (
    ArgumentRejected,
    Planned,
    SchedulableJob,
    plan_schedules,
    raising,
    usecase_argument,
    yaml_path,
)
from common.schedules.quartz import to_quartz
from common.schedules.run import command, run_due
from common.schedules.state import STATE_FILE, read_state, write_state

__all__ = [
    "FIRST_RUN_WINDOW",
    "STATE_FILE",
    "ArgumentRejected",
    "Planned",
    "SchedulableJob",
    "command",
    "due",
    "export_bundle",
    "export_crontab",
    "plan_schedules",
    "raising",
    "read_state",
    "run_due",
    "to_quartz",
    "usecase_argument",
    "write_state",
    "yaml_path",
]
