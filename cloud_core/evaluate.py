"""Test-split metrics of a model bundle, with baselines in the same table.

Each task is scored on the test split of the table it comes from (datasets.TASK_TABLE), from the same
SCOPE strings `predict` would compute. Baselines: the train mean; a composition-only model of the same
size (if given); for the thermodynamics, one best θ_D for all materials, Dulong-Petit (Cv = 3R), and the
Debye model with the ideal θ_D per material (the one that reproduces its Cv at 305 K exactly: what a
perfect Debye head could reach). Thermodynamic quantities at 25 K and 705 K, and U, S, F at all three
temperatures, come from the θ_D the head learned from Cv at 305 K alone ("temperature transfer").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from cloud_core.bundle import Bundle, load_bundle
from cloud_core.datasets import TASK_TABLE, TEMPERATURES, THERMO_QUANTITIES, default_data_dir, encoded_table, labels
from cloud_core.debye import GAS_CONSTANT, debye_thermo
from cloud_core.device import pick_device
from cloud_core.inference import predict_strings
from cloud_core.model import PROPERTIES
from cloud_core.train import best_single_theta, composition_part, ideal_theta, mean_absolute_error


def _thermo_from_theta(theta: np.ndarray) -> dict[str, np.ndarray]:
    """cv/u/s/f at the three temperatures for each θ_D: name -> (N,)."""
    result = {}
    for t in TEMPERATURES:
        thermo = debye_thermo(torch.as_tensor(theta, dtype=torch.float64), torch.tensor(float(t), dtype=torch.float64))
        for q in THERMO_QUANTITIES:
            result[f"{q}_{t}K"] = thermo[q].numpy()
    return result


def _predictions(bundle: Bundle, table: str, split: str, data_dir: Path, device: torch.device) -> pl.DataFrame:
    settings = bundle.card.get("settings", {})
    frame = encoded_table(table, settings.get("variant", "detailed"), data_dir, split=split)
    scopes = frame["scope"].to_list()
    if settings.get("composition_only"):
        scopes = [composition_part(s) if s else None for s in scopes]
    predicted = predict_strings(bundle.model, scopes, device).drop("error")
    return pl.concat([frame, predicted.rename(lambda c: f"pred_{c}")], how="horizontal")


def evaluate_bundle(
    bundle_path: str | Path, data_dir: Path | None = None, device: str = "auto", baseline_path: str | Path | None = None
) -> dict[str, Any]:
    """Metrics per task (MAE on the test split) for a bundle and the baselines, as a JSON-ready dict."""
    data_dir = data_dir or default_data_dir()
    torch_device = pick_device(device)
    bundle = load_bundle(bundle_path, torch_device)
    baseline = load_bundle(baseline_path, torch_device) if baseline_path else None
    tasks: dict[str, dict[str, Any]] = {}
    for table in sorted(set(TASK_TABLE.values())):
        test = _predictions(bundle, table, "test", data_dir, torch_device)
        raw = pl.read_parquet(data_dir / f"{table}.parquet")
        train = labels(table, raw.filter(pl.col("split") == "train"))  # train means need no encoding
        other = _predictions(baseline, table, "test", data_dir, torch_device) if baseline else None
        if table == "phonon_thermo1k":
            tasks.update(_thermo_metrics(test, train, other))
            continue
        for name in (p for p in PROPERTIES if TASK_TABLE[p] == table):
            true = test[name].to_numpy().astype(float)
            pred = test[f"pred_{name}"].to_numpy().astype(float)
            std = test[f"pred_{name}_std"].to_numpy().astype(float)
            row = {
                "table": table,
                "n": int(np.isfinite(true).sum()),
                "mae": mean_absolute_error(pred, true),
                "train_mean_mae": mean_absolute_error(np.full_like(true, float(train[name].mean())), true),
                **_coverage(pred, std, true),
            }
            if other is not None:
                row["composition_only_mae"] = mean_absolute_error(other[f"pred_{name}"].to_numpy().astype(float), true)
            tasks[name] = row
    return {"bundle": str(bundle.path), "bundle_id": bundle.id, "weights_sha256": bundle.weights_sha256, "tasks": tasks}


def _coverage(pred: np.ndarray, std: np.ndarray, true: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(true) & np.isfinite(pred) & np.isfinite(std)
    z = np.abs(pred[ok] - true[ok]) / std[ok]
    return {"within_1_sigma": float((z <= 1).mean()), "within_2_sigma": float((z <= 2).mean())}


def _thermo_metrics(test: pl.DataFrame, train: pl.DataFrame, other: pl.DataFrame | None) -> dict[str, dict[str, Any]]:
    theta = test["pred_debye_temperature"].to_numpy().astype(float)
    model = _thermo_from_theta(theta)
    single = _thermo_from_theta(np.full_like(theta, best_single_theta(train["cv_305K"].drop_nulls().to_numpy())))
    labels = {k: test[k].to_numpy().astype(float) for k in model}
    ideal = _thermo_from_theta(ideal_theta(labels["cv_305K"]))
    comp = _thermo_from_theta(other["pred_debye_temperature"].to_numpy().astype(float)) if other is not None else None
    tasks = {}
    for key, true in labels.items():
        row: dict[str, Any] = {
            "table": "phonon_thermo1k",
            "n": int(np.isfinite(true).sum()),
            "mae": mean_absolute_error(model[key], true),
            "trained_on": "cv_305K" if key == "cv_305K" else "transfer (never seen in training)",
            "train_mean_mae": mean_absolute_error(np.full_like(true, float(train[key].mean())), true),
            "single_theta_mae": mean_absolute_error(single[key], true),
            "ideal_theta_mae": mean_absolute_error(ideal[key], true),
        }
        if key.startswith("cv_"):
            row["dulong_petit_mae"] = mean_absolute_error(np.full_like(true, 3 * GAS_CONSTANT), true)
        if comp is not None:
            row["composition_only_mae"] = mean_absolute_error(comp[key], true)
        if key == "cv_305K":
            # the Cv sigma is predicted for the training temperature; cv_300K_std carries it
            row.update(_coverage(model[key], test["pred_cv_300K_std"].to_numpy().astype(float), true))
        tasks[key] = row
    return tasks


# The foundation targets ("must reach") of the model issue, for the rendered table.
TARGETS = {
    "formation_energy_per_atom": 0.070,
    "band_gap": 0.45,
    "log10_k_vrh": 0.080,
    "log10_g_vrh": 0.110,
    "cv_305K": 1.3,
    "cv_25K": 2.2,
    "cv_705K": 0.45,
}
UNITS = {
    "formation_energy_per_atom": "eV/atom",
    "band_gap": "eV",
    "log10_k_vrh": "log10 GPa",
    "log10_g_vrh": "log10 GPa",
}


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """The metrics as a markdown table (test split): model, baselines, target, calibration."""

    def unit(task: str) -> str:
        if task in UNITS:
            return UNITS[task]
        return "J/(K mol)" if task[0] in "cs" else "J/mol"

    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        return "" if value is None else f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"

    lines = [
        "| task | unit | n | model MAE | must reach | train mean | composition only | single θ_D | "
        "Dulong-Petit | ideal θ_D per material | within 1σ / 2σ |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, row in metrics["tasks"].items():
        coverage = f"{row['within_1_sigma']:.2f} / {row['within_2_sigma']:.2f}" if "within_1_sigma" in row else ""
        target = TARGETS.get(task)
        lines.append(
            f"| {task} | {unit(task)} | {row['n']} | **{cell(row, 'mae')}** | {'' if target is None else target} | "
            f"{cell(row, 'train_mean_mae')} | {cell(row, 'composition_only_mae')} | {cell(row, 'single_theta_mae')} | "
            f"{cell(row, 'dulong_petit_mae')} | {cell(row, 'ideal_theta_mae')} | {coverage} |"
        )
    return "\n".join(lines)
