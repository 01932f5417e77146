"""Temperature transfer and how to beat it: thermodynamic heads on the shipped model's frozen features.

The shipped Debye head predicts one θ_D, trained on Cv at 305 K only; Cv at 25 and 705 K and U, S, F at all
three temperatures follow from the Debye model (the paper's "temperature transfer"). Can a head do better and
stay thermodynamically consistent? Three heads, each a small MLP (width -> 64 -> k) on the shipped model's
frozen [CLS] vectors of phonon_thermo1k, trained on the train split with early stopping on val, 5 seeds whose
predicted quantities are averaged (an average of spectra is a spectrum, so still consistent):

- `debye@305K`: θ_D from Cv(305 K): the shipped head's recipe, retrained here on frozen features (the control);
- `debye@3T`: θ_D from Cv at 25, 305 and 705 K;
- `debye+einstein@3T`: a (1 - w) Debye + w Einstein spectrum, θ_D, θ_E and w from Cv at the three temperatures.

U, S and F are never trained on by any head: every one of them is a prediction through the spectrum model.
The shipped model's own head and the Debye model with the ideal θ_D per material (the θ_D that reproduces
each material's Cv(305 K)) are in the table too. Test split, MAE; Cv and S in J/(K mol atoms), U and F in
J/(mol atoms).

    python bench/thermo_heads.py [--data ../shared/data] [--seeds 5] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

from cloud_core.bundle import load_bundle
from cloud_core.datasets import TEMPERATURES, THERMO, default_data_dir, encoded_table
from cloud_core.debye import debye_einstein_thermo, debye_thermo
from cloud_core.tokenizer import tokenize
from cloud_core.train import ideal_theta

HEADS = {"debye@305K": (1, (305,)), "debye@3T": (1, TEMPERATURES), "debye+einstein@3T": (3, TEMPERATURES)}


def frozen_features(bundle, scopes: list[str]) -> torch.Tensor:
    """[CLS] vectors (N, D) of the bundle's encoder, in eval mode."""
    out = []
    with torch.no_grad():
        for start in range(0, len(scopes), 256):
            out.append(bundle.model.pooled(tokenize(scopes[start : start + 256])))
    return torch.cat(out)


def thermo_of(params: torch.Tensor, temperatures: torch.Tensor) -> dict[str, torch.Tensor]:
    """Cv, U, S, F (N, T) from a head's raw outputs (N, 1) Debye or (N, 3) Debye + Einstein."""
    theta_d = torch.exp(math.log(400.0) + 0.5 * params[:, :1])
    if params.shape[1] == 1:
        return debye_thermo(theta_d, temperatures)
    # Optical modes above the acoustic (Debye) cutoff: θ_E > θ_D. Left free, fits put a tiny share of nearly
    # zero-frequency Einstein modes under the 25 K heat capacity, which fits Cv and ruins S (tried: S off by
    # 19 J/(K mol) at every temperature).
    theta_e = theta_d * (1 + torch.nn.functional.softplus(params[:, 1:2]))
    weight = torch.sigmoid(params[:, 2:3])  # starts at half Einstein
    return debye_einstein_thermo(theta_d, theta_e, weight, temperatures)


def train_head(
    x: dict[str, torch.Tensor], cv: dict[str, torch.Tensor], outputs: int, fit_temperatures, scale, seed: int
) -> nn.Module:
    """One head: L1 on Cv at the fit temperatures, each divided by its train-mean MAE; best val epoch kept."""
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Linear(x["train"].shape[1], 64), nn.GELU(), nn.Linear(64, outputs))
    nn.init.zeros_(head[-1].weight)
    nn.init.zeros_(head[-1].bias)
    columns = [TEMPERATURES.index(t) for t in fit_temperatures]
    grid = torch.tensor([float(t) for t in TEMPERATURES], dtype=torch.float64)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3, weight_decay=1e-3)

    def loss(split: str) -> torch.Tensor:
        predicted = thermo_of(head(x[split]).double(), grid)["cv"]
        return ((predicted - cv[split]).abs()[:, columns] / scale[columns]).mean()

    best, best_state, since = math.inf, None, 0
    for _ in range(600):
        head.train()
        for batch in torch.randperm(len(x["train"])).split(128):
            optimizer.zero_grad()
            predicted = thermo_of(head(x["train"][batch]).double(), grid)["cv"]
            ((predicted - cv["train"][batch]).abs()[:, columns] / scale[columns]).mean().backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            val = float(loss("val"))
        if val < best - 1e-6:
            best, best_state, since = val, {k: v.clone() for k, v in head.state_dict().items()}, 0
        elif (since := since + 1) >= 40:
            break
    head.load_state_dict(best_state)
    return head.eval()


def mae(predicted: dict[str, torch.Tensor], labels: pl.DataFrame) -> dict[str, float]:
    """MAE per THERMO column (e.g. cv_25K) of predicted quantities (N, len(TEMPERATURES))."""
    result = {}
    for column in THERMO:
        quantity, temperature = column.split("_")
        values = predicted[quantity][:, TEMPERATURES.index(int(temperature[:-1]))].numpy()
        result[column] = float(np.nanmean(np.abs(values - labels[column].to_numpy())))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--model", default="default")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(args.model, torch.device("cpu"))
    frame = encoded_table("phonon_thermo1k", bundle.card["settings"]["variant"], args.data or default_data_dir())
    frame = frame.filter(pl.col("scope").is_not_null() & pl.all_horizontal(pl.col(c).is_not_null() for c in THERMO))
    splits = {s: frame.filter(pl.col("split") == s) for s in ("train", "val", "test")}
    x = {s: frozen_features(bundle, f["scope"].to_list()) for s, f in splits.items()}
    cv = {
        s: torch.tensor(f.select(f"cv_{t}K" for t in TEMPERATURES).to_numpy(), dtype=torch.float64)
        for s, f in splits.items()
    }
    # the train mean's MAE per temperature: each temperature's loss in units of its own spread
    scale = (cv["train"] - cv["train"].mean(0)).abs().mean(0)
    grid = torch.tensor([float(t) for t in TEMPERATURES], dtype=torch.float64)
    test = splits["test"]
    table: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        shipped = bundle.model.predict(tokenize(test["scope"].to_list()))["debye_temperature"].double()
    table["shipped Debye head (Cv 305 K)"] = mae(debye_thermo(shipped[:, None], grid), test)
    for name, (outputs, fit_temperatures) in HEADS.items():
        runs = []
        for seed in range(args.seeds):
            head = train_head(x, cv, outputs, fit_temperatures, scale, seed)
            with torch.no_grad():
                runs.append(thermo_of(head(x["test"]).double(), grid))
        table[name] = mae({q: torch.stack([r[q] for r in runs]).mean(0) for q in runs[0]}, test)
    ideal = torch.from_numpy(ideal_theta(test["cv_305K"].to_numpy()))
    table["ideal θ_D per material (Cv 305 K exact)"] = mae(debye_thermo(ideal[:, None], grid), test)
    header = "| head | " + " | ".join(THERMO) + " |"
    print(header + "\n|" + "---|" * (len(THERMO) + 1))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3g}" for c in THERMO) + " |")
    if args.out:
        args.out.write_text(json.dumps({"n_test": test.height, "mae": table}, indent=2) + "\n")


if __name__ == "__main__":
    main()
