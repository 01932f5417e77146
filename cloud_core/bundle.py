"""Model bundles: a folder with `model.safetensors` (weights) and `card.json` (everything else).

The card holds the architecture (ModelConfig), the tokenizer's vocabulary hash, the SHA-256 of the
weights file, the training command, data and metrics, code version and machine. Loading never unpickles:
weights come from safetensors only, and a bundle whose weights hash or vocabulary hash does not match is
refused with the reason. `default` names the bundle shipped inside the package.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when weights are saved or loaded, so a card can be read without it
    import torch

    from cloud_core.model import CloudModel

WEIGHTS = "model.safetensors"
CARD = "card.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


class BundleError(ValueError):
    """A model bundle that cannot be used; the message says why and what to do."""


@dataclass
class Bundle:
    model: CloudModel
    card: dict[str, Any]
    path: Path

    @property
    def id(self) -> str:
        return self.card.get("name", self.path.name)

    @property
    def weights_sha256(self) -> str:
        return self.card["weights_sha256"]


def shipped_models_dir() -> Path:
    return Path(str(resources.files("cloud_core").joinpath("models")))


def resolve(name_or_path: str | Path) -> Path:
    """A bundle folder from a path or the name of a shipped bundle (`default`)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = shipped_models_dir() / str(name_or_path)
    if shipped.exists():
        return shipped
    available = (
        sorted(p.name for p in shipped_models_dir().iterdir() if p.is_dir()) if shipped_models_dir().exists() else []
    )
    raise BundleError(f"no model bundle at {name_or_path!r} (shipped bundles: {', '.join(available) or 'none'})")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_bundle(folder: Path, model: CloudModel, card: dict[str, Any]) -> Path:
    """Write weights (float32 safetensors) and the card; returns the folder."""
    import torch
    from safetensors.torch import save_file

    from cloud_core.tokenizer import vocabulary_hash

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    # The MLM output matrix is tied to the token embedding; store it once.
    state.pop("mlm.embedding.weight", None)
    save_file(state, str(folder / WEIGHTS))
    card = {
        **card,
        "config": model.config.to_dict(),
        "vocabulary_hash": vocabulary_hash(),
        "weights_sha256": sha256_file(folder / WEIGHTS),
        "weights_format": "safetensors",
    }
    (folder / CARD).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
    return folder


def _not_safetensors(path: Path) -> str | None:
    """What the file is when it is plainly not safetensors (which starts with an 8-byte little-endian header
    length and a JSON header), from its first bytes; None when it looks like safetensors."""
    with path.open("rb") as handle:
        head = handle.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive (torch.save writes pickles in one)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle"
    size = path.stat().st_size
    if len(head) < 9 or head[8:9] != b"{" or int.from_bytes(head[:8], "little") > size - 8:
        return "not in the safetensors layout"
    return None


def read_card(name_or_path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A bundle's folder and card (JSON only: no torch, no weights); BundleError when either is unusable."""
    folder = resolve(name_or_path)
    if folder.is_file():
        raise BundleError(f"{folder} is a file; a model bundle is a folder with {WEIGHTS} and {CARD}")
    card_path = folder / CARD
    if not card_path.exists():
        raise BundleError(f"{folder} has no {CARD}")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{card_path} is not valid JSON ({exc})") from None
    if not isinstance(card, dict):
        raise BundleError(f"{card_path} is not a model card (a JSON object)")
    return folder, card


def load_bundle(name_or_path: str | Path, device: str | torch.device = "cpu") -> Bundle:
    """Load and check a bundle; BundleError with the reason when it cannot be used."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from cloud_core.model import CloudModel, ModelConfig
    from cloud_core.tokenizer import vocabulary_hash

    folder = resolve(name_or_path)
    if folder.is_dir():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:  # refused even beside safetensors weights: a bundle is exactly weights + card
            raise BundleError(
                f"{folder} holds pickled weights ({', '.join(pickles)}), which cloud-screen never loads "
                f"(unpickling runs code); convert them to {WEIGHTS} and remove them from the bundle"
            )
        if not (folder / WEIGHTS).exists():
            raise BundleError(f"{folder} has no {WEIGHTS}")
    folder, card = read_card(folder)
    weights, card_path = folder / WEIGHTS, folder / CARD
    if card.get("vocabulary_hash") != vocabulary_hash():
        raise BundleError(
            f"{folder} was trained with another SCOPE vocabulary (hash {str(card.get('vocabulary_hash'))[:12]}, "
            f"this tokenizer {vocabulary_hash()[:12]}); retrain it or use a matching cloud-screen version"
        )
    if card.get("weights_format", "safetensors") != "safetensors":
        raise BundleError(f"{card_path} names weights format {card['weights_format']!r}; only safetensors is loaded")
    problem = _not_safetensors(weights)
    if problem:
        raise BundleError(f"{weights} is {problem}, not safetensors; cloud-screen never unpickles weights")
    if card.get("weights_sha256") != sha256_file(weights):
        raise BundleError(f"{weights} does not match the hash in {CARD} (corrupted or replaced); reinstall or retrain")
    try:
        config = ModelConfig.from_dict(card["config"])
        state = load_file(str(weights), device="cpu")
    except (KeyError, TypeError, SafetensorError) as exc:
        raise BundleError(f"{folder} is not a valid bundle: {exc}") from None
    model = CloudModel(config)
    state["mlm.embedding.weight"] = state["encoder.tokens.weight"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BundleError(f"{folder}: weights do not fit the architecture (missing {missing}, unexpected {unexpected})")
    model.to(device).eval()
    return Bundle(model, card, folder)
