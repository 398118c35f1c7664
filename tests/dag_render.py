"""Run with the Airflow venv's python (tests/test_dag.py does): load dags/ with DagBag, render the task for
given scenarios and write JSON to OUT_FILE (Airflow logs to stdout). No database, no network: AIRFLOW_HOME is
a temp dir, Variables come from AIRFLOW_VAR_* environment variables, the Google connection from
AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT.

    python tests/dag_render.py DAG_FOLDER '[{"params": {...}, "variables": {...}, "run_after": "2024-04-01"}]' OUT_FILE
"""
import json
import os
import sys

DAG_ID = "dynamicvis_embeddings_monthly"
TASK_ID = "embed_month"


def load(dag_folder):
    from airflow.models import DagBag

    bag = DagBag(dag_folder=dag_folder)
    return bag, bag.dags.get(DAG_ID)


def render(dag_folder, scenario):
    import pendulum
    from airflow.providers.apache.beam.hooks.beam import beam_options_to_args
    from airflow.sdk.execution_time.context import VariableAccessor

    for key in [k for k in os.environ if k.startswith("AIRFLOW_VAR_DYNAMICVIS_")]:
        del os.environ[key]
    for name, value in scenario.get("variables", {}).items():
        os.environ[f"AIRFLOW_VAR_DYNAMICVIS_{name.upper()}"] = value
    _, dag = load(dag_folder)  # fresh task: rendering mutates it
    task = dag.get_task(TASK_ID)
    run_after = pendulum.parse(scenario["run_after"], tz="UTC")
    interval = dag.timetable.infer_manual_data_interval(run_after=run_after)
    params = {name: None for name in dag.params}
    params.update(scenario.get("params", {}))
    context = {
        "data_interval_start": interval.start, "data_interval_end": interval.end,
        "logical_date": interval.start, "ds": interval.start.strftime("%Y-%m-%d"),
        "params": params, "dag": dag, "task": task,
        "var": {"value": VariableAccessor(deserialize_json=False), "json": VariableAccessor(deserialize_json=True)},
    }
    try:
        task.render_template_fields(context)
    except Exception as error:  # noqa: BLE001
        return {"error": f"{type(error).__name__}: {error}"}
    # What execute() does before starting the subprocess (without starting it).
    task._cast_dataflow_config()  # noqa: SLF001
    _, job_name, options, _, _ = task._init_pipeline_options(  # noqa: SLF001
        format_pipeline_options=True, job_name_variable_key="job_name")
    options["labels"] = [f"{k}={v}" for k, v in options["labels"].items()]  # as start_python_pipeline does
    command = [task.py_interpreter, *task.py_options, task.py_file, f"--runner={task.runner}",
               *beam_options_to_args(options)]
    return {"interval": [interval.start.isoformat(), interval.end.isoformat()], "job_name": job_name,
            "command": command}


def main():
    dag_folder, scenarios = sys.argv[1], json.loads(sys.argv[2])
    bag, dag = load(dag_folder)
    out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dag_ids": sorted(bag.dags)}
    if dag is not None:
        out["dag"] = {
            "timetable": type(dag.timetable).__name__, "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs, "params": sorted(dag.params),
            "tasks": {t.task_id: {"class_mro": [c.__name__ for c in type(t).__mro__], "retries": t.retries,
                                  "runner": getattr(t, "runner", None), "py_file": getattr(t, "py_file", None),
                                  "py_options": getattr(t, "py_options", None)} for t in dag.tasks},
        }
        out["renders"] = [render(dag_folder, scenario) for scenario in scenarios]
    with open(sys.argv[3], "w", encoding="utf-8") as stream:
        json.dump(out, stream)


if __name__ == "__main__":
    main()
