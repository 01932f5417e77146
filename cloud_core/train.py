"""Training: masked-token pre-training on SCOPE strings, then joint fine-tuning of the property and Debye heads.

    settings = TrainSettings(...)
    bundle_dir = train(settings)          # pre-train, fine-tune, calibrate, evaluate, save

Everything that decides the result is in TrainSettings and the seed; the same settings on the same data give
the same model on the same device. The best epoch on the validation split (mean of per-task MAE divided by
the train-mean baseline's MAE) is kept. Uncertainties: each head's scale is calibrated on the validation
split so that 68.3% of validation errors fall within one sigma (one factor per task).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import random
import shlex
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from cloud_core import element_features
from cloud_core.datasets import TASK_TABLE, default_data_dir, encoder_fingerprint, pretraining_strings, training_frame
from cloud_core.debye import debye_cv
from cloud_core.device import pick_device
from cloud_core.model import DEBYE_FIT_TEMPERATURE, PROPERTIES, CloudModel, ModelConfig
from cloud_core.provenance import code_version
from cloud_core.tokenizer import CLS, MASK, Batch, tokenize, vocabulary

log = logging.getLogger("cloud_core.train")

DEBYE_TARGET = f"cv_{int(DEBYE_FIT_TEMPERATURE)}K"


@dataclass
class TrainSettings:
    variant: str = "detailed"
    composition_only: bool = False  # baseline: drop the symmetry parts of every string
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # CPU threads for torch (0 = all)
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    dropout: float = 0.1
    amount_numeric: bool = True
    element_features: bool = True  # add fixed element descriptors to element tokens (element_features.py)
    pool_pairs: bool = True  # one model slot per Wyckoff:element and element:amount pair (model.slot_layout)
    max_length: int = 192
    pretrain_epochs: int = 3
    finetune_epochs: int = 40
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.01
    mask_prob: float = 0.15
    oversample: dict[str, int] = field(default_factory=lambda: {"mp_elastic3k": 3, "phonon_thermo1k": 6})
    patience: int = 12  # epochs without validation improvement before stopping
    # Fine-tuning stops after the epoch in which this many minutes (from the start of training) have passed,
    # keeping the best epoch so far; 0: no limit. For fixed-length leases (a lent GPU) and scheduled runs.
    time_limit_minutes: float = 0.0
    data_dir: str = ""
    out: str = "models/trained"
    name: str = "cloud-screen"


def settings_from_options(options: Mapping[str, Any]) -> TrainSettings:
    """TrainSettings from the `train` command's options or the `train` flow's parameters (one mapping for both).

    Names are the fields' own, except `data` (the shared data folder) for `data_dir`; paths become strings and
    None an empty string (the default). An unknown name is an error, so an option cannot be silently dropped.
    """
    values = dict(options)
    if "data" in values:
        if "data_dir" in values:
            raise TypeError("give data or data_dir, not both")
        values["data_dir"] = values.pop("data")
    known = {f.name for f in fields(TrainSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"not training settings: {', '.join(unknown)}")
    for name in ("data_dir", "out"):
        if name in values:
            values[name] = "" if values[name] is None else str(values[name])
    return TrainSettings(**values)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def composition_part(scope: str) -> str:
    """`| | COMPOSITION`: the SCOPE string without generators and Wyckoff symbols (baseline model input)."""
    return "| | " + scope.rsplit("|", 1)[-1].strip()


def length_bucketed(
    order: torch.Tensor, lengths: torch.Tensor, batch_size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Batches of similar length: sort each run of 64 batches by length, then shuffle the batches.

    Padding to the longest member costs little when members are alike, and the randomness of the
    epoch's order is kept (a run of 64 batches is still a random sample)."""
    batches = []
    run = 64 * batch_size
    for start in range(0, len(order), run):
        chunk = order[start : start + run]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches += list(chunk.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def mask_tokens(batch: Batch, prob: float, generator: torch.Generator) -> tuple[Batch, torch.Tensor]:
    """BERT masking: of the chosen tokens 80% become [MASK], 10% a random token, 10% stay. Labels -100 elsewhere."""
    ids = batch.ids
    candidates = batch.mask & (ids != CLS)
    chosen = (torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device) < prob) & candidates
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    roll = torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device)
    random_ids = torch.randint(MASK + 1, len(vocabulary()), ids.shape, generator=generator).to(ids.device)
    new_ids = torch.where(chosen & (roll < 0.8), torch.full_like(ids, MASK), ids)
    new_ids = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, new_ids)
    values = torch.where(chosen, torch.zeros_like(batch.values), batch.values)  # don't leak masked amounts
    return Batch(new_ids, batch.segments, values, batch.mask, batch.rows, None, None), labels


def _optimizer(model: CloudModel, settings: TrainSettings, lr: float) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "embedding" in n]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _step(model: CloudModel, optimizer: torch.optim.Optimizer, scheduler, loss: torch.Tensor) -> float:
    """One optimiser step with gradient clipping; returns the loss value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    return loss.detach().item()


def pretrain(model: CloudModel, strings: list[str], settings: TrainSettings, device: torch.device) -> list[float]:
    """Masked-token pre-training; returns the mean loss per epoch."""
    table = tokenize(strings, max_length=settings.max_length)  # token tensors held once, sliced per batch
    lengths = table.mask.sum(1)
    generator = torch.Generator().manual_seed(settings.seed)
    steps_per_epoch = math.ceil(len(table) / settings.batch_size)
    optimizer = _optimizer(model, settings, settings.lr)
    scheduler = _schedule(optimizer, steps_per_epoch * settings.pretrain_epochs, warmup=min(500, steps_per_epoch))
    losses = []
    for epoch in range(settings.pretrain_epochs):
        model.train()
        order = torch.randperm(len(table), generator=generator)
        total, started = 0.0, time.perf_counter()
        for step, index in enumerate(length_bucketed(order, lengths, settings.batch_size, generator)):
            if step and step % 100 == 0:
                log.info("pretrain epoch %d step %d/%d  mlm loss %.4f", epoch + 1, step, steps_per_epoch, total / step)
            batch = table.select(index, device)
            masked, labels = mask_tokens(batch, settings.mask_prob, generator)
            with _autocast(device):
                logits, source = model.mlm_logits(masked)
            # labels follow the encoder's slots (generator pooling drops and moves tokens)
            labels = torch.where(source >= 0, labels.gather(1, source.clamp(min=0)), torch.full_like(source, -100))
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
            total += _step(model, optimizer, scheduler, loss)
        losses.append(total / steps_per_epoch)
        log.info(
            "pretrain epoch %d/%d  mlm loss %.4f  (%.0f s)",
            epoch + 1,
            settings.pretrain_epochs,
            losses[-1],
            time.perf_counter() - started,
        )
    return losses


# --------------------------------------------------------------------------------------------------
# Fine-tuning


@dataclass
class Targets:
    """Label tensors aligned with the rows of a tokenized Batch; NaN where a label is missing."""

    values: dict[str, torch.Tensor]  # name -> (N,) in physical units

    def batch(self, index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        return {k: v[index].to(device) for k, v in self.values.items()}


def _targets(frame: pl.DataFrame, rows: np.ndarray) -> Targets:
    names = [*PROPERTIES, DEBYE_TARGET]
    values = {}
    for name in names:
        column = frame[name].cast(pl.Float32).fill_null(float("nan")).to_numpy() if name in frame.columns else None
        values[name] = torch.from_numpy(column[rows]) if column is not None else torch.full((len(rows),), float("nan"))
    return Targets(values)


def _scale_nll(error: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Laplace negative log-likelihood of a detached absolute error: trains the scale, not the value."""
    return (error.detach() / log_scale.exp() + log_scale).mean()


def finetune_loss(
    out: dict[str, torch.Tensor], target: dict[str, torch.Tensor], config: ModelConfig, cv_std: float
) -> torch.Tensor:
    losses = []
    for name in config.properties:
        y = target[name]
        present = ~torch.isnan(y)
        if present.any():
            z = (y[present] - config.target_mean[name]) / config.target_std[name]
            error = (out[name][present] - z).abs()
            losses.append(error.mean() + 0.1 * _scale_nll(error, out[f"{name}_log_scale"][present]))
    y = target[DEBYE_TARGET]
    present = ~torch.isnan(y)
    if present.any():
        theta = out["log_theta"][present].exp()
        cv = debye_cv(theta, torch.tensor(DEBYE_FIT_TEMPERATURE, device=theta.device))
        error = (cv - y[present]).abs()
        losses.append(error.mean() / cv_std + 0.1 * _scale_nll(error, out["cv_log_scale"][present]))
    return torch.stack(losses).sum()


@torch.no_grad()
def predict_table(
    model: CloudModel, table: Batch, device: torch.device, batch_size: int = 1024
) -> dict[str, np.ndarray]:
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(table), batch_size):
        batch = table.select(torch.arange(start, min(start + batch_size, len(table))), device)
        with _autocast(device):
            out = model.predict(batch)
        for k, v in out.items():
            parts.setdefault(k, []).append(v.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def mean_absolute_error(pred: np.ndarray, true: np.ndarray) -> float:
    """MAE over the entries where both are finite (missing labels are NaN); NaN when there are none."""
    ok = np.isfinite(true) & np.isfinite(pred)
    return float(np.abs(pred[ok] - true[ok]).mean()) if ok.any() else float("nan")


def validation_score(pred: dict[str, np.ndarray], targets: Targets, baseline: dict[str, float]) -> tuple[float, dict]:
    maes = {}
    for name in [*PROPERTIES, DEBYE_TARGET]:
        key = "cv_305K" if name == DEBYE_TARGET else name
        maes[name] = mean_absolute_error(pred[key], targets.values[name].numpy())
    score = float(np.mean([maes[n] / baseline[n] for n in maes if not math.isnan(maes[n])]))
    return score, maes


def calibrate(pred: dict[str, np.ndarray], targets: Targets) -> dict[str, float]:
    """Factor per task so that 68.3% of validation errors lie within one (scaled) sigma."""
    factors = {}
    for name in [*PROPERTIES, DEBYE_TARGET]:
        key = "cv_305K" if name == DEBYE_TARGET else name
        true = targets.values[name].numpy()
        ok = ~np.isnan(true)
        if ok.sum() < 10:
            factors[key] = 1.0
            continue
        ratio = np.abs(pred[key][ok] - true[ok]) / pred[f"{key}_std"][ok]
        factors[key] = float(np.quantile(ratio, 0.6827))
    return factors


def finetune(
    model: CloudModel,
    frame: pl.DataFrame,
    settings: TrainSettings,
    device: torch.device,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Joint fine-tuning on the train split; keeps the state of the best validation epoch. Stops early after
    `patience` epochs without improvement, or after the epoch that ends past `deadline` (time.perf_counter())."""
    train_rows = frame.with_row_index("i").filter(pl.col("split") == "train")
    repeats = train_rows["table"].replace_strict(settings.oversample, default=1, return_dtype=pl.Int64).to_numpy()
    train_index = np.repeat(train_rows["i"].to_numpy(), repeats)
    val_index = frame.with_row_index("i").filter(pl.col("split") == "val")["i"].to_numpy()

    strings = frame["scope"].to_list()
    table = tokenize(strings, max_length=settings.max_length)
    lengths = table.mask.sum(1)
    kept = np.full(frame.height, -1)
    kept[table.rows] = np.arange(len(table))
    train_index, val_index = kept[train_index], kept[val_index]
    train_index, val_index = train_index[train_index >= 0], val_index[val_index >= 0]
    targets = _targets(frame, table.rows)

    config = model.config
    train_frame = frame.filter(pl.col("split") == "train")
    for name in config.properties:
        config.target_mean[name] = float(train_frame[name].mean())
        config.target_std[name] = float(train_frame[name].std())
    cv_train = train_frame[DEBYE_TARGET].drop_nulls().to_numpy()
    config.log_theta_mean = math.log(best_single_theta(cv_train))
    cv_std = float(cv_train.std())
    val_targets = Targets({k: v[val_index] for k, v in targets.values.items()})
    baseline = {
        n: mean_absolute_error(np.full(len(val_index), float(train_frame[n].mean())), val_targets.values[n].numpy())
        for n in val_targets.values
    }

    generator = torch.Generator().manual_seed(settings.seed + 1)
    steps_per_epoch = math.ceil(len(train_index) / settings.batch_size)
    optimizer = _optimizer(model, settings, settings.lr)
    scheduler = _schedule(optimizer, steps_per_epoch * settings.finetune_epochs, warmup=steps_per_epoch)
    val_table_index = torch.from_numpy(val_index)
    best: dict[str, Any] = {"score": float("inf")}
    history = []
    stopped = "all epochs"
    for epoch in range(settings.finetune_epochs):
        model.train()
        started = time.perf_counter()
        order = torch.from_numpy(train_index)[torch.randperm(len(train_index), generator=generator)]
        total = 0.0
        for index in length_bucketed(order, lengths, settings.batch_size, generator):
            batch = table.select(index, device)
            with _autocast(device):
                out = model(batch)
            loss = finetune_loss(out, targets.batch(index, device), config, cv_std)
            total += _step(model, optimizer, scheduler, loss)
        pred = predict_table(model, table.select(val_table_index), device)
        score, maes = validation_score(pred, val_targets, baseline)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": total / steps_per_epoch,
                "val_score": score,
                **{f"val_{k}": v for k, v in maes.items()},
            }
        )
        log.info(
            "finetune epoch %d/%d  loss %.4f  val score %.4f  %s  (%.0f s)",
            epoch + 1,
            settings.finetune_epochs,
            total / steps_per_epoch,
            score,
            "  ".join(f"{k} {v:.4f}" for k, v in maes.items()),
            time.perf_counter() - started,
        )
        if score < best["score"]:
            best = {
                "score": score,
                "epoch": epoch + 1,
                "maes": maes,
                "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            }
        elif epoch + 1 - best["epoch"] >= settings.patience:
            log.info("no validation improvement for %d epochs: stopping", settings.patience)
            stopped = "patience"
            break
        if deadline is not None and time.perf_counter() > deadline and epoch + 1 < settings.finetune_epochs:
            log.info("time limit of %g min reached after epoch %d: stopping", settings.time_limit_minutes, epoch + 1)
            stopped = "time limit"
            break
    model.load_state_dict(best.pop("state"))
    pred = predict_table(model, table.select(val_table_index), device)
    config_calibration = calibrate(pred, val_targets)
    return {
        "best_epoch": best["epoch"],
        "stopped": stopped,
        "val_score": best["score"],
        "val_mae": best["maes"],
        "history": history,
        "sigma_calibration": config_calibration,
    }


def best_single_theta(cv: np.ndarray, temperature: float = DEBYE_FIT_TEMPERATURE) -> float:
    """The one θ_D minimising the mean absolute Cv error over a set of materials (a baseline, and the init)."""
    thetas = np.linspace(20, 2500, 2481)
    model = debye_cv(torch.from_numpy(thetas), torch.tensor(temperature, dtype=torch.float64)).numpy()
    errors = np.abs(model[:, None] - cv[None, :]).mean(1)
    return float(thetas[int(errors.argmin())])


def ideal_theta(cv: np.ndarray, temperature: float = DEBYE_FIT_TEMPERATURE) -> np.ndarray:
    """Per material, the θ_D whose Debye Cv at `temperature` equals the label (Cv falls monotonically with θ)."""
    thetas = np.geomspace(5, 5000, 20001)
    model = debye_cv(torch.from_numpy(thetas), torch.tensor(temperature, dtype=torch.float64)).numpy()
    return np.interp(cv, model[::-1], thetas[::-1])  # np.interp needs increasing x


# --------------------------------------------------------------------------------------------------


def train(settings: TrainSettings) -> Path:
    """Pre-train, fine-tune, calibrate and save a bundle (and its test metrics); returns the bundle folder."""
    from cloud_core.bundle import save_bundle
    from cloud_core.evaluate import evaluate_bundle

    seed_everything(settings.seed)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = pick_device(settings.device)
    data_dir = Path(settings.data_dir) if settings.data_dir else default_data_dir()
    started = time.perf_counter()
    frame = training_frame(settings.variant, data_dir)
    # the corpus encodes every shared table twice (variant and official): only when pre-training uses it
    corpus = pretraining_strings(settings.variant, data_dir) if settings.pretrain_epochs else []
    if settings.composition_only:
        frame = frame.with_columns(pl.col("scope").map_elements(composition_part, return_dtype=pl.String))
        corpus = [composition_part(s) for s in corpus]
    log.info("data: %d labelled rows, %d pre-training strings, device %s", frame.height, len(corpus), device)

    config = ModelConfig(
        vocab_size=len(vocabulary()),
        max_length=settings.max_length,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        d_model=settings.d_model,
        dropout=settings.dropout,
        amount_numeric=settings.amount_numeric,
        element_features=len(element_features.FEATURES) if settings.element_features else 0,
        pool_pairs=settings.pool_pairs,
    )
    model = CloudModel(config)
    if settings.element_features:
        model.encoder.element_table.copy_(torch.from_numpy(element_features.feature_matrix(vocabulary())))
    model = model.to(device)
    log.info("model: %.2f M parameters", model.n_parameters() / 1e6)
    pretrain_losses = pretrain(model, corpus, settings, device) if settings.pretrain_epochs else []
    t_pretrain = time.perf_counter() - started
    deadline = started + 60 * settings.time_limit_minutes if settings.time_limit_minutes else None
    result = finetune(model, frame, settings, device, deadline)
    config.sigma_calibration = result["sigma_calibration"]
    card = {
        "name": settings.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "code_version": code_version(),
        "training_command": " ".join(shlex.quote(a) for a in sys.argv),
        "settings": asdict(settings),
        "data": {
            "dir": str(data_dir),
            "labelled_rows": frame.height,
            "pretraining_strings": len(corpus),
            "tables": sorted(set(TASK_TABLE.values())),
            "encoder_fingerprint": encoder_fingerprint(),
        },
        "machine": {
            "host": platform.node(),
            "platform": platform.platform(),
            "device": str(device),
            "torch": torch.__version__,
        },
        "training": {
            "pretrain_losses": pretrain_losses,
            "pretrain_seconds": round(t_pretrain, 1),
            "total_seconds": round(time.perf_counter() - started, 1),
            **{k: v for k, v in result.items() if k != "sigma_calibration"},
        },
    }
    folder = save_bundle(Path(settings.out), model, card)
    metrics = evaluate_bundle(folder, data_dir, device=str(device))
    card = json.loads((folder / "card.json").read_text())
    card["metrics"] = metrics
    (folder / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return folder
