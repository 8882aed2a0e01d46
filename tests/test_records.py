"""MLflow's own records, read back through MLflow's client API: each stage run's data sets as
dataset inputs (digest = the data fingerprint, context = the split's role) and its trained
network as an MLflow model that ``mlflow.pytorch.load_model`` gives back."""

from __future__ import annotations

import torch

from harness.cli import main

SUITE = """
suite: records
seeds: 1
defaults: {optimizer: adam, lr: 1.0e-3, batch_size: 64, epochs: 1, threads: 1}
stages:
  semi: {dataset: {name: digits, labels: 100}, architecture: small_cnn, method: std}
  pair:
    dataset: {source: digits, target: {name: digits, rotate: 90.0}}
    architecture: small_cnn
    method: std
evaluate: [{name: accuracy, every: end}]
"""


def _runs():
    from mlflow.tracking import MlflowClient

    from harness.tracking import resolve_home, tracking_uri
    uri = tracking_uri(resolve_home(None))
    c = MlflowClient(tracking_uri=uri)
    exp = c.get_experiment_by_name("records")
    runs = {r.info.run_name: r for r in c.search_runs([exp.experiment_id])
            if r.data.tags.get("harness.identity")}
    return uri, c, runs


def test_datasets_and_a_loadable_model_per_stage_run(write_suite):
    import os

    import mlflow
    import mlflow.pytorch

    assert main(["run", str(write_suite(SUITE)), "--quiet"]) == 0
    # the fluent model logging left the process's choice of store as it was
    assert "MLFLOW_TRACKING_URI" not in os.environ and not mlflow.is_tracking_uri_set()
    uri, client, runs = _runs()
    semi = runs["semi/std/seed0"]
    inputs = {d.dataset.name: (d.dataset.digest, [t.value for t in d.tags])
              for d in semi.inputs.dataset_inputs}
    fingerprint = semi.data.tags["harness.data_fingerprint"]
    assert inputs == {"digits+labels100/train": (fingerprint, ["train"]),
                      "digits+labels100/unlabelled": (fingerprint, ["unlabelled"]),
                      "digits+labels100/test": (fingerprint, ["test"])}
    pair = {d.dataset.name: [t.value for t in d.tags] for d in runs["pair/std/seed0"].inputs.dataset_inputs}
    assert pair == {"digits/train": ["source"], "digits+rot90/train": ["target"],
                    "digits+rot90/test": ["target_test"]}

    mlflow.set_tracking_uri(uri)
    model = mlflow.pytorch.load_model(f"runs:/{semi.info.run_id}/model")
    path = client.download_artifacts(semi.info.run_id, "checkpoint.pt")
    state = torch.load(path, weights_only=True)["state_dict"]
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert semi.outputs.model_outputs and semi.data.params["measured.model_uri"].startswith("models:/")


def test_log_model_off_logs_none(write_suite):
    assert main(["run", str(write_suite(SUITE)), "--quiet", "--log-model", "off"]) == 0
    _, _, runs = _runs()
    assert all(not r.outputs.model_outputs for r in runs.values())
    assert all(r.inputs.dataset_inputs for r in runs.values())
