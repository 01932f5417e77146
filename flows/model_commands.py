"""`cloud-screen predict`, `train` and `evaluate`: the model side of the command line (registered in flows.cli)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.console import fail, nothing_left_to_tear_down


def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Structure files, tables with a 'cif' column, or directories.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output table: .parquet, .csv or .jsonl.")],
    model: Annotated[str, typer.Option(help="Model bundle: a shipped name (default) or a folder.")] = "default",
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")] = "auto",
    workers: Annotated[int, typer.Option(help="Encoder processes; 0 means all cores.")] = 0,
    batch_size: Annotated[
        int | None, typer.Option(help="Strings per inference batch at most; unset: 2048 on CPU, 16384 on CUDA.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
) -> None:
    """Predict properties, Debye temperature and Cv(300 K) for crystal structures: one row per structure."""
    from cloud_core.bundle import BundleError, read_card
    from cloud_core.device import DEVICES, DeviceError
    from cloud_core.encode import EncodeSettings, default_workers
    from cloud_core.pipeline import predict_files
    from cloud_core.tables import table_format

    if device not in DEVICES:
        fail(f"--device must be auto, cpu or cuda, not {device!r}")
    try:
        table_format(out)
        _, card = read_card(model)  # the card says which SCOPE variant to encode; the weights load beside encoding
        counts = predict_files(
            inputs,
            out,
            model,
            device,
            EncodeSettings(variant=card.get("settings", {}).get("variant", "detailed")),
            workers=workers or default_workers(),
            batch_size=batch_size,
            progress=progress and sys.stderr.isatty(),
        )
    except (BundleError, DeviceError, OSError, ValueError) as exc:  # ValueError: e.g. a bad CLOUD_SCREEN_MAX_FILE_MB
        fail(str(exc))
    typer.echo(
        f"{counts['rows']} structures, {counts['predicted']} predicted, {counts['errors']} with errors -> {out}",
        err=True,
    )
    nothing_left_to_tear_down()


def train(
    out: Annotated[Path, typer.Option(help="Folder for the trained bundle.")] = Path("models/trained"),
    data: Annotated[Path | None, typer.Option(help="Shared data folder (default ../shared/data).")] = None,
    variant: Annotated[str, typer.Option(help="SCOPE variant the model reads.")] = "detailed",
    composition_only: Annotated[bool, typer.Option(help="Baseline: read only the composition part.")] = False,
    amount_numeric: Annotated[
        bool, typer.Option(help="Embed each amount's value as well as its token (--no-amount-numeric: token only).")
    ] = True,
    element_features: Annotated[
        bool,
        typer.Option(help="Add fixed element descriptors (period, group, electronegativity...) to element tokens."),
    ] = True,
    pool_pairs: Annotated[
        bool,
        typer.Option(help="One model slot per Wyckoff:element and element:amount pair (about 40 % fewer slots)."),
    ] = True,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option()] = 0,
    n_layer: Annotated[int, typer.Option()] = 4,
    n_head: Annotated[int, typer.Option()] = 4,
    d_model: Annotated[int, typer.Option()] = 256,
    pretrain_epochs: Annotated[int, typer.Option()] = 3,
    finetune_epochs: Annotated[int, typer.Option()] = 40,
    batch_size: Annotated[int, typer.Option()] = 128,
    lr: Annotated[float, typer.Option()] = 5e-4,
    threads: Annotated[int, typer.Option(help="CPU threads (0 = all).")] = 0,
    time_limit_minutes: Annotated[
        float,
        typer.Option(
            help="Stop fine-tuning after the epoch that ends past this many minutes, keeping the best; 0: none."
        ),
    ] = 0.0,
    name: Annotated[str, typer.Option(help="Name written into the model card.")] = "cloud-screen",
) -> None:
    """Pre-train and fine-tune a CLOUD model on the shared data; writes a bundle with its test metrics."""
    options = dict(locals())  # the options, before any other name is bound
    from cloud_core.train import settings_from_options
    from cloud_core.train import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    settings = settings_from_options(options)
    try:
        folder = run_training(settings)
    except (FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
    typer.echo(f"bundle written to {folder}", err=True)


def evaluate(
    data: Annotated[Path, typer.Option(help="Shared data folder.")],
    out: Annotated[Path, typer.Option(help="JSON file for the metrics.")],
    model: Annotated[str, typer.Option(help="Model bundle: name or folder.")] = "default",
    baseline: Annotated[
        str, typer.Option(help="Composition-only bundle to report alongside (a shipped name or a folder; '': none).")
    ] = "composition-only",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Test-split metrics per task for a model, with baselines, as JSON."""
    from cloud_core.bundle import BundleError
    from cloud_core.evaluate import evaluate_bundle, metrics_markdown

    if not data.is_dir():
        fail(f"{data} is not a folder (point --data at the shared data, e.g. ../shared/data)")
    try:
        metrics = evaluate_bundle(model, data, device=device, baseline_path=baseline or None)
    except (BundleError, FileNotFoundError, RuntimeError) as exc:
        fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2) + "\n")
    typer.echo(metrics_markdown(metrics))
