"""Several models at once: each evaluated into its own directory, one comparison table with
each headline number's median and range over models, overlay figures."""
import json
import subprocess
import sys

import numpy as np
import pytest

from tf_holstein import comparison, export, models, report
from tf_holstein.configs import ModelConfig


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, smoke_meta, perturbed_cnn):
    """An untrained tiny CNN (the identity) and the perturbed one, as training workdirs."""
    root = tmp_path_factory.mktemp("models")
    for name, model in (("identity", models.build_model(ModelConfig(), smoke_meta["scales"])),
                        ("perturbed", perturbed_cnn)):
        export.export_model(model, root / name / "export",
                            metadata=export.dataset_metadata(smoke_meta))
    return root / "identity", root / "perturbed" / "export" / "saved_model"


@pytest.mark.slow
def test_two_models_are_evaluated_and_compared_by_one_command(two_models, smoke_dataset,
                                                              tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "tf_holstein.evaluate", "--model", str(two_models[0]),
         "--model", str(two_models[1]), "--data", str(smoke_dataset), "--out", str(tmp_path),
         "--progress=false"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    table = json.loads((tmp_path / "comparison.json").read_text())
    assert list(table["models"]) == ["identity", "perturbed"]
    headlines = {label: report.headline(json.loads(
        (tmp_path / label / "metrics.json").read_text())) for label in table["models"]}
    assert table["run"]["n_trajectories"] == 2 and table["run"]["split"] == "test"
    printed = json.loads(run.stdout[run.stdout.index("{"):])
    for name, entry in table["metrics"].items():
        values = [headlines[label][name] for label in table["models"]]
        assert entry["values"] == dict(zip(table["models"], values))
        if None in values:  # e.g. a distance no kept trajectory has
            continue
        assert entry["n"] == 2
        assert entry["median"] == pytest.approx(np.mean(values), rel=1e-12)  # two: the mean
        assert (entry["min"], entry["max"]) == (min(values), max(values))
        assert printed[name]["median"] == pytest.approx(entry["median"], rel=1e-12)
    # The identity model's forecast is constant, the perturbed one's is not: they differ.
    assert table["metrics"]["Delta_Q_wasserstein_1"]["min"] < \
        table["metrics"]["Delta_Q_wasserstein_1"]["max"]
    rows = (tmp_path / "comparison.md").read_text().splitlines()
    assert rows[2] == "| metric | identity | perturbed | median | range |"
    assert len(rows) == 4 + len(table["metrics"])
    assert any(row.startswith("| valid_time_median | ") for row in rows)
    assert all((tmp_path / name).stat().st_size > 0 for name in comparison.FIGURES)
    assert all((tmp_path / label / "autocorrelation.png").exists() for label in table["models"])


def test_labels_name_the_model_not_its_artefact():
    assert comparison.labels(["runs/deep_seed1", "runs/deep_seed2/export/saved_model",
                              "saved_models/shallow_L16/model.keras", "a/best.keras",
                              "exact", "other/deep_seed1"]) == \
        ["deep_seed1", "deep_seed2", "shallow_L16", "best", "exact", "deep_seed1-2"]


def test_evaluations_of_different_data_are_not_compared(tmp_path):
    run = {"data": "d", "split": "test", "L": 8, "time_step": 0.08, "steps": 12,
           "n_trajectories": 2}
    results = {"a": {"run": run}, "b": {"run": {**run, "steps": 6}}}
    with pytest.raises(ValueError, match="b was evaluated with another steps than a"):
        comparison.compare(results, tmp_path)
    with pytest.raises(ValueError, match="at least two evaluations"):
        comparison.compare({"a": results["a"]}, tmp_path)
