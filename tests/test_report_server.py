"""`mimray report` against a real `mlflow server` on 127.0.0.1 attaches its files where the
server keeps the sweep's artifacts: through the server's artifact proxy over plain HTTP when
the parent run's artifacts are proxied (`mlflow-artifacts:`, a server's default), without
loading MLflow's client in the report's process (its CPU would be taken from the server's
reads on a shared machine); through MLflow's client when they are not (a folder the client
writes, or a bucket)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from recorded_sweep import record_sweep
from servers import mlflow_server

from orchestrator.tracking import Tracker
from orchestrator.tracking.artifacts import attach_files

# The CLI in a fresh interpreter: which of MLflow's modules the report loaded.
PROBE = """
import sys
from orchestrator.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    print("mlflow client loaded:", "mlflow.tracking" in sys.modules)
    sys.exit(done.code)
"""


def report(url: str, sweep: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}
    return subprocess.run(
        [sys.executable, "-c", PROBE, "report", sweep, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def attached(tracker: Tracker, parent: str, folder: Path) -> dict[str, str]:
    """The files under report/ of the parent run, read back through MLflow's client."""
    listed = tracker.client.list_artifacts(parent, "report")
    return {
        Path(a.path).name: Path(
            tracker.client.download_artifacts(parent, a.path, str(folder))
        ).read_text(encoding="utf-8")
        for a in listed
    }


def test_report_attaches_through_the_servers_artifact_proxy_else_mlflows_client(tmp_path):
    served = tmp_path / "served"
    (tmp_path / "p").mkdir()
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", str(served)) as url:
        proxied = Tracker(url, "proxied")  # the server picks mlflow-artifacts:/ID
        parent = record_sweep(proxied, tmp_path / "p", "prox", 10).parent_run_id
        done = report(url, "prox", tmp_path / "out-p")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "mlflow client loaded: False" in done.stdout
        written = {
            p: (tmp_path / "out-p" / p).read_text(encoding="utf-8")
            for p in ("report.html", "report.md")
        }
        assert attached(proxied, parent, tmp_path / "down-p") == written
        # In the server's own artifact store, under the run's folder.
        stored = served / proxied.experiment_id / parent / "artifacts" / "report"
        assert sorted(p.name for p in stored.iterdir()) == ["report.html", "report.md"]

        # A run whose artifacts the server does not proxy: MLflow's client writes them.
        local = (tmp_path / "client-writes").as_uri()
        experiment = proxied.client.create_experiment("unproxied", artifact_location=local)
        run = proxied.client.create_run(experiment).info.run_id
        page = tmp_path / "out-p" / "report.md"
        assert attach_files(url, run, [page], "report") == ["report/report.md"]
        assert proxied.client.list_artifacts(run, "report")[0].path == "report/report.md"
        copy = tmp_path / "client-writes" / run / "artifacts" / "report" / "report.md"
        assert copy.read_text(encoding="utf-8") == written["report.md"]
