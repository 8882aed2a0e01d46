"""`harness ui`: the MLflow UI on the harness's store, and the addresses that open it on the
training runs.

MLflow 3's UI starts in its GenAI mode, on an experiment's traces overview ("No data
available"), whatever the experiment's ``mlflow.experimentKind`` tag says: the mode is the
browser's, kept in its local storage, and a link's ``workflowType=machine_learning`` query sets
it (seen with MLflow 3.17 in headless Chromium). So the command prints, beside the server's
address, one link per experiment that opens its runs table.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .errors import UserError
from .interrupts import EXIT_INTERRUPTED

#: the query that opens the MLflow UI in its model-training mode, on an experiment's runs
TRAINING_VIEW = "workflowType=machine_learning"


def experiment_links(client, base: str) -> list[tuple[str, str]]:
    """(name, address) of every experiment that holds runs, the address opening its runs."""
    out = []
    for exp in client.search_experiments():
        if client.search_runs([exp.experiment_id], max_results=1):
            out.append((exp.name, f"{base}/#/experiments/{exp.experiment_id}?{TRAINING_VIEW}"))
    return out


def _print_links(uri: str, base: str) -> None:
    from .tracking import mlflow_client  # MLflow: only for `harness ui`

    links = experiment_links(mlflow_client(uri), base)
    if not links:
        print("no runs in this store yet: `harness run SUITE` records some")
        return
    print("each experiment's training runs (MLflow's UI otherwise opens on its GenAI overview):")
    width = max(len(name) for name, _ in links)
    for name, url in links:
        print(f"  {name:<{width}}  {url}")


def _port_free(port: int) -> None:
    """Refuse a port something already listens on: MLflow would print a traceback, or leave
    workers behind."""
    if not 0 < port < 65536:
        raise UserError(f"--port must be from 1 to 65535, got {port}", key="--port")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise UserError(f"port {port} on 127.0.0.1 is busy ({exc.strerror or exc})",
                            key="--port", hint="another `harness ui` or server listens there; "
                                               "pick another with --port N") from None


def serve_ui(home: Path, port: int) -> int:
    """The MLflow UI in its own process group, which is ended as a whole on Ctrl-C or SIGTERM:
    the server's workers do not outlive ``harness ui``."""
    from .store_file import ensure_store, sqlite_path  # MLflow's schema: only for `harness ui`
    from .tracking import check_writable, tracking_uri  # as above

    _port_free(port)
    db = sqlite_path(tracking_uri(home))
    if db is not None:  # MLflow would migrate a new store in place, not atomically
        check_writable(home)
        ensure_store(db, (home / "artifacts").as_uri())
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri(home),
           "--default-artifact-root", (home / "artifacts").as_uri(),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    base = f"http://127.0.0.1:{port}"
    print(f"MLflow UI on {base} for {tracking_uri(home)} (Ctrl-C stops it)")
    _print_links(tracking_uri(home), base)
    sys.stdout.flush()
    # MLflow's job runner (six huey consumer processes, for GenAI judges and trace jobs that a
    # training store never has) is off unless the environment asks for it
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
        _end_group(proc)


def _end_group(proc) -> None:
    """SIGTERM to the UI's process group, SIGKILL to what is left of it after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:  # the leader is reaped; are its workers gone too?
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.1)
