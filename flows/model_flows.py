"""The `train` and `evaluate` flows: the model commands as Prefect flows, with typed parameters (UI forms).

Thin wrappers around `cloud_core.train.train` and `cloud_core.evaluate.evaluate_bundle`: the flow adds the form,
logging, and a markdown artifact with the test-split metrics table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows.parameters import document_parameters

Device = Literal["auto", "cpu", "cuda"]
Variant = Literal["official", "canonical", "detailed"]


def _data_dir(data: str) -> Path:
    """The shared data folder: `data` when given, else the default (../shared/data or $CLOUD_SCREEN_DATA)."""
    from cloud_core.datasets import default_data_dir

    path = Path(data) if data else default_data_dir()
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder (set `data` to the shared data, e.g. ../shared/data)")
    return path


def _metrics_artifact(metrics: dict[str, Any], title: str, key: str) -> None:
    """Publish the metrics table (markdown) as a flow-run artifact."""
    from cloud_core.evaluate import metrics_markdown

    header = (
        f"# {title}\n\n- bundle: `{metrics.get('bundle')}`\n- weights: `{metrics.get('weights_sha256', '')[:16]}`\n\n"
    )
    create_markdown_artifact(header + metrics_markdown(metrics), key=key, description=title)


@flow(name="train", log_prints=True)
@document_parameters
def train(
    out: Annotated[str, Field(description="Folder for the trained bundle.")] = "models/trained",
    data: Annotated[str, Field(description="Shared data folder; empty: ../shared/data or $CLOUD_SCREEN_DATA.")] = "",
    variant: Annotated[Variant, Field(description="SCOPE variant the model reads.")] = "detailed",
    composition_only: Annotated[bool, Field(description="Baseline: read only the composition part.")] = False,
    amount_numeric: Annotated[
        bool, Field(description="Embed each amount's value as well as its token (false: token only).")
    ] = True,
    element_features: Annotated[
        bool,
        Field(description="Add fixed element descriptors (period, group, electronegativity...) to element tokens."),
    ] = True,
    pool_pairs: Annotated[
        bool,
        Field(description="One model slot per Wyckoff:element and element:amount pair (about 40 % fewer slots)."),
    ] = True,
    device: Annotated[Device, Field(description="auto uses CUDA when present.")] = "auto",
    seed: Annotated[int, Field(description="Seed for weights, masking and batch order.")] = 0,
    n_layer: Annotated[int, Field(ge=1, le=48, description="Transformer layers.")] = 4,
    n_head: Annotated[int, Field(ge=1, le=64, description="Attention heads.")] = 4,
    d_model: Annotated[int, Field(ge=16, le=4096, description="Model width (a multiple of n_head).")] = 256,
    pretrain_epochs: Annotated[int, Field(ge=0, description="Masked-token pre-training epochs.")] = 3,
    finetune_epochs: Annotated[int, Field(ge=1, description="Fine-tuning epochs (early stopping).")] = 40,
    batch_size: Annotated[int, Field(ge=1, description="Strings per training batch.")] = 128,
    lr: Annotated[float, Field(gt=0, description="Peak learning rate.")] = 5e-4,
    threads: Annotated[int, Field(ge=0, description="CPU threads for torch; 0 = all.")] = 0,
    time_limit_minutes: Annotated[
        float,
        Field(
            ge=0,
            description="Stop fine-tuning after the epoch that ends past this many minutes, keeping the best; 0: none.",
        ),
    ] = 0.0,
    name: Annotated[str, Field(description="Name written into the model card.")] = "cloud-screen",
) -> dict[str, Any]:
    """Pre-train and fine-tune a CLOUD model on the shared data; writes a bundle with its test metrics."""
    options = dict(locals())  # the parameters, before any other name is bound
    from cloud_core.train import settings_from_options
    from cloud_core.train import train as run_training

    settings = settings_from_options({**options, "data": _data_dir(data)})
    folder = run_training(settings)
    metrics = json.loads((folder / "card.json").read_text()).get("metrics", {})
    get_run_logger().info("bundle written to %s", folder)
    if metrics:
        _metrics_artifact(metrics, f"Trained model {name}", "train-metrics")
    return {"bundle": str(folder), "metrics": metrics}


@flow(name="evaluate", log_prints=True)
@document_parameters
def evaluate(
    model: Annotated[str, Field(description="Model bundle: a shipped name or a folder.")] = "default",
    data: Annotated[str, Field(description="Shared data folder; empty: ../shared/data or $CLOUD_SCREEN_DATA.")] = "",
    out: Annotated[str, Field(description="JSON file for the metrics; empty: artifact only.")] = "",
    baseline: Annotated[
        str, Field(description="Composition-only bundle to report alongside (a shipped name or a folder); empty: none.")
    ] = "composition-only",
    device: Annotated[Device, Field(description="auto uses CUDA when present.")] = "auto",
) -> dict[str, Any]:
    """Test-split metrics per task for a model bundle, with baselines; a markdown table as an artifact."""
    from cloud_core.evaluate import evaluate_bundle

    metrics = evaluate_bundle(model, _data_dir(data), device=device, baseline_path=baseline or None)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2) + "\n")
        get_run_logger().info("metrics written to %s", path)
    _metrics_artifact(metrics, f"Evaluation of {model}", "evaluate-metrics")
    return metrics
