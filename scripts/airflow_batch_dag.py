"""An example Airflow DAG that runs `tidemark batch` every hour (not run in CI).

Each run writes the features as of the end of its data interval. `tidemark batch` exits
0 when done, 2 when the archive does not hold the interval yet (the online job has not
checkpointed past it: retried later) and 1 when it failed (not retried: read the log).

Copy it to your DAGs folder and set TIDEMARK_BIN, the config file and the environment
(TIDEMARK_PG, TIDEMARK_ARCHIVE__ROOT, ...) as the job's `run` has them.
"""

import os
import subprocess
from datetime import datetime, timedelta

from airflow import DAG
from airflow.exceptions import AirflowException, AirflowFailException
from airflow.operators.python import PythonOperator

TIDEMARK = os.environ.get("TIDEMARK_BIN", "tidemark")
CONFIG = os.environ.get("TIDEMARK_CONFIG", "/etc/tidemark/search.toml")


def batch_hour(data_interval_start, data_interval_end, **_):
    start = int(data_interval_start.timestamp() * 1000)
    end = int(data_interval_end.timestamp() * 1000)
    done = subprocess.run(
        [TIDEMARK, "batch", "--config", CONFIG,
         "--from", str(start), "--to", str(end), "--every", "1h"],
        capture_output=True, text=True,
    )
    print(done.stdout)
    print(done.stderr)
    if done.returncode == 2:
        # the archive does not hold the hour yet: Airflow retries after retry_delay
        raise AirflowException("archive not complete yet: " + done.stderr.strip())
    if done.returncode != 0:
        raise AirflowFailException("tidemark batch failed: " + done.stderr.strip())


with DAG(
    dag_id="tidemark_batch_search",
    start_date=datetime(2026, 1, 1),
    schedule=timedelta(hours=1),
    catchup=True,
    max_active_runs=1,
    default_args={"retries": 12, "retry_delay": timedelta(minutes=5)},
) as dag:
    PythonOperator(task_id="batch", python_callable=batch_hour)
