"""Tokenizer, transformer, bundles and batched inference, on real SCOPE strings from our own encoder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cloud_core.bundle import BundleError, load_bundle, save_bundle
from cloud_core.encode import EncodeSettings, encode_structures
from cloud_core.inference import model_lengths, predict_strings
from cloud_core.model import CloudModel, ModelConfig, slot_counts, slot_layout
from cloud_core.prototypes import generate_candidates
from cloud_core.structures import _element_symbols
from cloud_core.tokenizer import CLS, MASK, UNK, decode, token_table, tokenize, vocabulary, vocabulary_hash
from tests.conftest import shared_file

AL2O3 = "1 3 a E C C n O O O e O O D 0 | 12c 18e | Al 0.4 O 0.6"


@pytest.fixture(scope="module")
def prototype_scopes() -> dict[str, list[str]]:
    ids, crystals = zip(*generate_candidates(max_count=150, seed=3), strict=True)
    return {
        variant: encode_structures(crystals, ids, EncodeSettings(variant=variant))["scope"].drop_nulls().to_list()
        for variant in ("official", "canonical", "detailed")
    }


def spread_model(**config) -> CloudModel:
    """A small model whose weights are spread out, so that comparisons below are not trivially equal."""
    torch.manual_seed(0)
    model = CloudModel(
        ModelConfig(vocab_size=len(vocabulary()), n_layer=2, n_head=2, d_model=32, dropout=0.0, **config)
    )
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.fixture(scope="module")
def small_model() -> CloudModel:
    return spread_model()


@pytest.fixture(scope="module")
def pair_model() -> CloudModel:
    return spread_model(pool_pairs=True)


def test_vocabulary_is_closed_deterministic_and_pinned():
    vocab = vocabulary()
    assert len(vocab) == len(set(vocab))
    assert vocab[:4] == ("[PAD]", "[UNK]", "[CLS]", "[MASK]")
    # A change here invalidates every trained bundle: update the shipped model together with this hash.
    assert vocabulary_hash().startswith("32424b899199")


def test_every_token_of_every_variant_is_known(prototype_scopes):
    for variant, scopes in prototype_scopes.items():
        batch = tokenize(scopes)
        assert batch.unknown.sum() == 0, variant
        assert len(batch.too_long) == 0


def test_reference_corpus_tokens_are_known_except_placeholder_element():
    import polars as pl

    strings = pl.read_csv(shared_file("cloud_reference/pretrain_cloud_10k.csv"))["cloud"].to_list()
    batch = tokenize(strings)
    bad = [strings[i] for i in np.flatnonzero(batch.unknown)]
    assert all(" X " in s for s in bad) and len(bad) <= 2, bad  # 'X' is a dummy species, not an element


def test_tokens_segments_values_and_generator_namespace():
    batch = tokenize([AL2O3])
    tokens = decode(batch.ids[0].tolist())
    assert tokens[0] == "[CLS]"
    assert tokens[1:4] == ["g:1", "g:3", "g:a"]
    assert tokens[-4:] == ["Al", "0.4", "O", "0.6"]
    assert "g:O" in tokens and "O" in tokens  # generator letter O and oxygen are different tokens
    assert batch.segments[0].tolist()[-1] == 2 and batch.segments[0, 1] == 0
    assert batch.values[0, -1] == pytest.approx(0.6) and batch.values[0, -2] == 0
    detailed = decode(
        tokenize(["1 4 b O O O c O O O d O O O e O O O 0 | 1a:Ba+Sr 3d:O | Ba 0.1 Sr 0.1 O 0.6"]).ids[0].tolist()
    )
    assert detailed[detailed.index("|") + 1 : detailed.index("|") + 7] == ["1a", "Ba", "+", "Sr", "3d", "O"]


def test_unknown_tokens_and_overlong_strings_are_reported_not_hidden():
    batch = tokenize([AL2O3, "1 3 | 12c | Xx 1.0", AL2O3 + " Fe 0.1" * 200], max_length=64)
    assert batch.unknown.tolist()[:2] == [0, 1]
    assert UNK in batch.ids[1].tolist()
    assert batch.too_long.tolist() == [2]
    assert batch.rows.tolist() == [0, 1]


@torch.no_grad()
@pytest.mark.parametrize("model_name", ["small_model", "pair_model"])
def test_padding_and_batch_company_do_not_change_outputs(model_name, request, prototype_scopes):
    model = request.getfixturevalue(model_name)
    scopes = prototype_scopes["detailed"][:12]
    together = model(tokenize(scopes))
    for i in (0, 5, 11):
        alone = model(tokenize([scopes[i]]))
        for key in ("formation_energy_per_atom", "band_gap", "log_theta"):
            assert float(alone[key][0]) == pytest.approx(float(together[key][i]), abs=1e-5)


MIXED_SITE = "1 4 b O O O c O O O d O O O e O O O 0 | 1a:Ba+Sr 3d:O | Ba 0.1 Sr 0.1 O 0.6"


@torch.no_grad()
@pytest.mark.parametrize(
    "config",
    [{}, {"pool_pairs": True}, {"pool_pairs": True, "element_features": 4}, {"pool_generators": False}],
    ids=["generator", "pairs", "pairs+elements", "tokens"],
)
def test_slots_are_their_tokens_summed_and_cls_alone_matches_a_full_pass(config, prototype_scopes):
    """The encoder embeds only real tokens and sums them into slots; checked here against a token-by-token
    sum written out in Python. And the [CLS] vector the heads read (last block for [CLS] alone) equals the
    [CLS] position of a full pass."""
    model = spread_model(**config)
    encoder = model.encoder
    if config.get("element_features"):
        torch.nn.init.normal_(encoder.element_table, std=1.0)
    scopes = [MIXED_SITE, *prototype_scopes["detailed"][:5], AL2O3]
    batch = tokenize(scopes)
    hidden, _ = encoder(batch)
    slot, is_gen, n_slots = slot_layout(batch, model.config)
    pooling = model.config.pool_generators or model.config.pool_pairs  # else no slots: the [CLS] check only
    pooled, mask, _ = encoder._pooled_slots(batch) if pooling else (None, None, None)
    first, count = encoder.generator_first, encoder.n_generator_chars
    for b in range(len(scopes)):
        expected = torch.zeros(int(n_slots[b]), model.config.d_model)
        place = 0
        for j in range(int(batch.mask[b].sum())):
            token = batch.ids[b, j : j + 1], batch.segments[b, j : j + 1], batch.values[b, j : j + 1]
            if is_gen[b, j]:
                code = encoder.generator_code(torch.tensor([place * count + int(token[0]) - first]))[0]
                expected[1] += code
                place += 1
                continue
            vector = encoder._token_vectors(*token)[0]
            if not model.config.pool_pairs:
                vector = vector + encoder.positions.weight[j]
            expected[int(slot[b, j])] += vector
        if encoder.generator_code is not None:
            expected[1] += encoder.segments.weight[0]
        if model.config.pool_pairs:
            expected += encoder.positions.weight[: len(expected)]
        if pooling:
            assert torch.allclose(pooled[b, : len(expected)], expected, atol=1e-5)
            assert mask[b].sum() == len(expected)
    assert torch.allclose(model.pooled(batch), hidden[:, 0], atol=1e-5)
    assert not torch.allclose(hidden[:, 0], hidden[:, 1], atol=1e-3)  # the comparison can fail


def test_pair_pooling_gives_one_slot_per_orbit_and_per_element(pair_model, small_model):
    batch = tokenize([MIXED_SITE, AL2O3])
    tokens = decode(batch.ids[0].tolist())
    slot, _, n_slots = slot_layout(batch, pair_model.config)
    # [CLS], generator code, |, 1a Ba + Sr, 3d O, |, Ba 0.1, Sr 0.1, O 0.6
    assert n_slots.tolist() == [9, 8]
    slots = [[t for t, k in zip(tokens, slot[0].tolist(), strict=True) if k == j] for j in range(9)]
    assert slots[2:] == [["|"], ["1a", "Ba", "+", "Sr"], ["3d", "O"], ["|"], ["Ba", "0.1"], ["Sr", "0.1"], ["O", "0.6"]]
    assert slot_layout(batch, small_model.config)[2].tolist() == [len(tokens) - 19 + 1, 10]  # generator pooled only
    hidden, source = pair_model.encoder(batch)
    assert hidden.shape[1] == 9
    assert [tokens[i] for i in source[0, 2:].tolist()] == ["|", "1a", "3d", "|", "Ba", "Sr", "O"]  # first tokens
    assert source[1, -1] == -1  # the shorter string's padding slot comes from no token
    assert (model_lengths(pair_model, batch) == n_slots.numpy()).all()


@pytest.mark.parametrize(
    "config", [{}, {"pool_pairs": True}, {"pool_generators": False}, {"pool_generators": False, "pool_pairs": True}]
)
def test_token_table_batches_and_slot_counts_match_the_padded_tokenization(config, prototype_scopes):
    """Inference cuts batches out of the unpadded TokenTable: each batch holds exactly the padded tokenization's
    rows (trimmed to their longest), and the slot counts it sorts by are slot_layout's."""
    model = spread_model(**config)
    scopes = [MIXED_SITE, "", *prototype_scopes["detailed"][:40], "1 3 | 12c | Xx 1.0", AL2O3 + " Fe 0.1" * 200]
    table, whole = token_table(scopes, max_length=64), tokenize(scopes, max_length=64)
    assert (table.rows == whole.rows).all() and (table.too_long == whole.too_long).all()
    assert (table.unknown == whole.unknown).all() and table.unknown[-2] == 1
    assert (slot_counts(table, model.config) == slot_layout(whole, model.config)[2].numpy()).all()
    index = np.array([5, 0, 17, 2])
    part = table.padded(index)
    width = int(whole.mask[index].sum(1).max())
    assert part.ids.shape == (4, width) and (part.rows == whole.rows[index]).all()
    for name in ("ids", "segments", "values", "mask"):
        assert torch.equal(getattr(part, name), getattr(whole, name)[index, :width]), name


def test_prediction_in_pieces_equals_one_piece(monkeypatch, prototype_scopes):
    """predict_strings prepares pieces of strings on threads ahead of the model: cut into pieces of 16 (and
    out-of-memory halving that re-cuts pieces already prepared), the answers and refusals are those of one piece."""
    import cloud_core.inference as inference

    bundle = load_bundle("default")
    strings = prototype_scopes["detailed"][:60]
    strings[3:3], strings[30:30] = [None, "1 3 | 12c | Xx 1.0"], [AL2O3 + " Fe 0.1" * 200]
    whole = predict_strings(bundle.model, strings)
    monkeypatch.setattr(inference, "TOKENIZE_CHUNK", 16)
    monkeypatch.setattr(inference, "TOKENIZE_THREADS", 3)
    pieces = predict_strings(bundle.model, strings)
    real_predict, sizes = bundle.model.predict, []

    def predict(batch):  # 'out of memory' above 4 strings: pieces prepared with larger batches are re-cut
        sizes.append(len(batch.rows))
        if len(batch.rows) > 4:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return real_predict(batch)

    monkeypatch.setattr(bundle.model, "predict", predict)
    halved = predict_strings(bundle.model, strings, batch_size=16)
    # Two failures (the first batch and its half), then none: pieces prepared with 16 were cut again, smaller.
    failed = [i for i, size in enumerate(sizes) if size > 4]
    assert len(failed) == 2 and failed[1] == 1 and len(sizes) > 20
    assert whole["error"].null_count() == len(strings) - 3
    for frame in (pieces, halved):
        assert frame["error"].to_list() == whole["error"].to_list()
        for column in whole.columns[:-1]:
            np.testing.assert_allclose(frame[column].to_numpy(), whole[column].to_numpy(), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_pair_pooling_binds_elements_to_their_orbits(pair_model):
    swapped = "1 4 b O O O c O O O d O O O e O O O 0 | 1a:O 3d:Ba+Sr | Ba 0.1 Sr 0.1 O 0.6"
    a, b = pair_model.pooled(tokenize([MIXED_SITE])), pair_model.pooled(tokenize([swapped]))
    assert not torch.allclose(a, b)


def test_masked_element_keeps_a_slot_and_its_label_under_pair_pooling(pair_model):
    batch = tokenize([MIXED_SITE])
    tokens = decode(batch.ids[0].tolist())
    barium = tokens.index("Ba")  # the orbit's element, the first in the Wyckoff segment
    batch.ids[0, barium] = MASK
    _, source = pair_model.mlm_logits(batch)
    assert barium in source[0].tolist()  # [MASK] joins no slot: predicted from a slot of its own
    assert source.shape[1] == 10


@torch.no_grad()
def test_generator_pooling_keeps_character_order(small_model):
    swapped = "1 3 a E C C n O O O e O O 0 D | 12c 18e | Al 0.4 O 0.6"  # same characters, two swapped
    a, b = small_model.pooled(tokenize([AL2O3])), small_model.pooled(tokenize([swapped]))
    assert not torch.allclose(a, b)


def test_masked_generator_character_stays_in_the_sequence(small_model):
    batch = tokenize([AL2O3])
    batch.ids[0, 2] = MASK
    logits, source = small_model.mlm_logits(batch)
    assert 2 in source[0].tolist()  # the masked generator slot is predicted
    assert source[0, 0] == 0 and source[0, 1] == -1  # [CLS], then the pooled generator code
    assert logits.shape[:2] == source.shape and batch.ids[0, 0] == CLS


def test_bundle_round_trip_and_refusals(tmp_path, small_model, prototype_scopes):
    folder = save_bundle(tmp_path / "b", small_model, {"name": "test"})
    bundle = load_bundle(folder)
    scopes = prototype_scopes["detailed"][:20]
    a, b = predict_strings(small_model, scopes), predict_strings(bundle.model, scopes)
    assert a.equals(b)

    tampered = tmp_path / "tampered"
    shutil.copytree(folder, tampered)
    data = bytearray((tampered / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the hash"):
        load_bundle(tampered)

    other_vocab = tmp_path / "vocab"
    shutil.copytree(folder, other_vocab)
    card = json.loads((other_vocab / "card.json").read_text())
    card["vocabulary_hash"] = "0" * 64
    (other_vocab / "card.json").write_text(json.dumps(card))
    with pytest.raises(BundleError, match="another SCOPE vocabulary"):
        load_bundle(other_vocab)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(small_model.state_dict(), pickled / "model.pt")
    (pickled / "card.json").write_text((folder / "card.json").read_text())
    with pytest.raises(BundleError, match="never loads"):
        load_bundle(pickled)
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "missing")


def test_element_descriptors_reach_the_model_and_travel_with_the_bundle(tmp_path, prototype_scopes):
    from cloud_core import element_features

    tokens = vocabulary()
    matrix = element_features.feature_matrix(tokens)
    on_elements = np.abs(matrix).sum(axis=1) > 0
    assert {t for t, e in zip(tokens, on_elements, strict=True) if e} == _element_symbols()  # the 118, only
    np.testing.assert_allclose(matrix[on_elements].mean(axis=0), 0, atol=1e-5)  # standardised columns
    group = element_features.FEATURES.index("group")
    assert matrix[tokens.index("Na"), group] == matrix[tokens.index("K"), group] != matrix[tokens.index("Mg"), group]

    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=len(tokens),
        n_layer=1,
        n_head=2,
        d_model=32,
        dropout=0.0,
        element_features=len(element_features.FEATURES),
    )
    model = CloudModel(config).eval()
    with torch.no_grad():
        model.encoder.element_table.copy_(torch.from_numpy(matrix))
    scopes = prototype_scopes["detailed"][:20]
    before = predict_strings(model, scopes)
    bundle = load_bundle(save_bundle(tmp_path / "b", model, {"name": "test"}))
    assert predict_strings(bundle.model, scopes).equals(before)  # the table is saved with the weights
    with torch.no_grad():
        model.encoder.element_table.zero_()
    assert not predict_strings(model, scopes).equals(before)  # and the model reads it


def test_inference_rows_errors_and_nonfinite_outputs(small_model):
    frame = predict_strings(small_model, [AL2O3, None, "1 3 | 12c | Xx 1.0", AL2O3])
    assert frame.height == 4
    assert frame["error"].to_list()[0] is None and frame["error"].to_list()[3] is None
    assert "no SCOPE" in frame["error"][1] and "outside the model vocabulary" in frame["error"][2]
    assert frame["formation_energy_per_atom"][0] == pytest.approx(frame["formation_energy_per_atom"][3])
    assert frame["debye_temperature"][0] > 0 and frame["cv_300K"][0] > 0

    broken = CloudModel(small_model.config).eval()
    broken.load_state_dict(small_model.state_dict())
    with torch.no_grad():
        broken.head[-1].bias[0] = float("nan")
    bad = predict_strings(broken, [AL2O3])
    assert bad["error"][0] == "model output not finite"
    assert bad["formation_energy_per_atom"][0] is None


def test_shipped_default_bundle(rocksalt):
    """The bundle in the package: loads by name, small, documented, and predicts sensible rock salt values."""
    from cloud_core.bundle import resolve

    folder = resolve("default")
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size <= 25 * 2**20, size
    bundle = load_bundle("default")
    card = bundle.card
    assert card["vocabulary_hash"] == vocabulary_hash()
    for key in ("training_command", "code_version", "data", "machine", "metrics", "config"):
        assert key in card, key
    frame = encode_structures([rocksalt], ["NaCl"], EncodeSettings(variant=card["settings"]["variant"]))
    row = predict_strings(bundle.model, frame["scope"].to_list()).row(0, named=True)
    assert row["error"] is None
    assert -3.0 < row["formation_energy_per_atom"] < -1.0  # DFT (MP): -2.1 eV/atom
    assert row["band_gap"] > 2.0  # PBE: 5.0 eV
    assert 150 < row["debye_temperature"] < 500  # experiment: 321 K
    assert 15 < row["cv_300K"] < 25


def test_evaluate_reproduces_the_card_metrics(tmp_path):
    """`cloud-screen evaluate` on the shipped model recomputes the test metrics written in its card."""
    shared_file("mp37k.parquet")
    from typer.testing import CliRunner

    from cloud_core.bundle import load_bundle
    from flows.cli import app

    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(
        app, ["evaluate", "--data", str(shared_file(".")), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    tasks = json.loads(out.read_text())["tasks"]
    card = load_bundle("default").card["metrics"]["tasks"]
    baseline = load_bundle("composition-only").card["metrics"]["tasks"]  # the shipped baseline, reported by default
    assert set(tasks) == set(card) == set(baseline)
    for task, row in tasks.items():
        if row.get("trained_on", "cv_305K") == "cv_305K":  # every trained head beats the train mean
            assert row["mae"] < row["train_mean_mae"], task
        # equal up to the few borderline strings a later encoder may write differently
        assert row["mae"] == pytest.approx(card[task]["mae"], rel=0.03), task
        assert row["composition_only_mae"] == pytest.approx(baseline[task]["mae"], rel=0.03), task


@pytest.mark.parametrize("pool_pairs", [False, True])
def test_pretraining_and_finetuning_loops_learn(prototype_scopes, pool_pairs):
    """The training loops on a tiny set: MLM loss falls; fine-tuning fits a label and calibrates its sigma."""
    from cloud_core.train import TrainSettings, finetune, pretrain

    torch.manual_seed(0)
    scopes = prototype_scopes["detailed"][:96]
    settings = TrainSettings(
        n_layer=1, n_head=2, d_model=32, pretrain_epochs=4, finetune_epochs=15, batch_size=16, lr=3e-3, patience=15
    )
    model = CloudModel(
        ModelConfig(vocab_size=len(vocabulary()), n_layer=1, n_head=2, d_model=32, pool_pairs=pool_pairs)
    )
    losses = pretrain(model, scopes, settings, torch.device("cpu"))
    assert losses[-1] < losses[0]

    frame = _tiny_training_frame(scopes)
    label, split = frame["formation_energy_per_atom"].to_list(), frame["split"].to_list()
    train_mean = np.mean([v for v, sp in zip(label, split, strict=True) if sp == "train"])
    baseline = np.mean([abs(v - train_mean) for v, sp in zip(label, split, strict=True) if sp == "val"])
    result = finetune(model, frame, settings, torch.device("cpu"))
    assert 1 <= result["best_epoch"] <= settings.finetune_epochs
    assert result["stopped"] in ("all epochs", "patience")
    assert result["val_mae"]["formation_energy_per_atom"] < 0.8 * baseline  # a mean predictor scores 1.0x
    assert set(result["sigma_calibration"]) >= {"formation_energy_per_atom", "cv_305K"}


def _tiny_training_frame(scopes: list[str]):
    """Labels the strings determine (10 x the smallest amount), Cv near Dulong-Petit, every 4th row val."""
    import polars as pl

    label = [10 * min(float(a) for a in s.rsplit("|", 1)[1].split()[1::2]) for s in scopes]
    return pl.DataFrame(
        {
            "scope": scopes,
            "table": "mp37k",
            "split": ["val" if i % 4 == 0 else "train" for i in range(len(scopes))],
            **{name: label for name in ("formation_energy_per_atom", "band_gap", "log10_k_vrh", "log10_g_vrh")},
            "cv_305K": [20.0 + k / 10 for k in label],
        }
    )


def test_finetuning_stops_at_its_time_limit_with_the_best_epoch(prototype_scopes):
    """A deadline already past: one epoch, then a stop that says why; the model keeps that epoch's state."""
    from cloud_core.train import TrainSettings, finetune

    torch.manual_seed(0)
    settings = TrainSettings(n_layer=1, n_head=2, d_model=32, finetune_epochs=10, batch_size=16, time_limit_minutes=1)
    model = CloudModel(ModelConfig(vocab_size=len(vocabulary()), n_layer=1, n_head=2, d_model=32))
    result = finetune(
        model, _tiny_training_frame(prototype_scopes["detailed"][:48]), settings, torch.device("cpu"), 0.0
    )
    assert (result["stopped"], result["best_epoch"], len(result["history"])) == ("time limit", 1, 1)


def test_train_command_and_flow_build_the_same_settings(tmp_path, monkeypatch):
    """One mapping from the `train` command's options and the `train` flow's parameters to TrainSettings."""
    from pathlib import Path

    from typer.testing import CliRunner

    from cloud_core.train import settings_from_options
    from flows.cli import app
    from flows.model_flows import train as train_flow

    settings = settings_from_options({"data": None, "out": Path("m"), "d_model": 32})
    assert (settings.data_dir, settings.out, settings.d_model) == ("", "m", 32)
    with pytest.raises(TypeError, match="d_modl"):
        settings_from_options({"d_modl": 32})
    with pytest.raises(TypeError, match="not both"):
        settings_from_options({"data": "a", "data_dir": "b"})

    class Stop(Exception):
        pass

    seen = []

    def fake_training(settings):
        seen.append(settings)
        raise Stop

    monkeypatch.setattr("cloud_core.train.train", fake_training)
    with pytest.raises(Stop):
        train_flow.fn(
            out="m",
            data=str(tmp_path),
            d_model=32,
            n_head=2,
            pretrain_epochs=0,
            lr=1e-3,
            amount_numeric=False,
            element_features=True,
            pool_pairs=False,
        )
    options = ["--out", "m", "--data", str(tmp_path), "--d-model", "32", "--n-head", "2", "--pretrain-epochs", "0"]
    options += ["--no-amount-numeric", "--element-features", "--no-pool-pairs"]
    result = CliRunner().invoke(app, ["train", *options, "--lr", "1e-3"])
    assert isinstance(result.exception, Stop), result.output
    flow_settings, command_settings = seen
    assert flow_settings == command_settings  # same defaults, same mapping
    assert (flow_settings.d_model, flow_settings.n_head, flow_settings.pretrain_epochs) == (32, 2, 0)
    assert (flow_settings.amount_numeric, flow_settings.element_features, flow_settings.pool_pairs) == (
        False,
        True,
        False,
    )
    assert flow_settings.data_dir == str(tmp_path)


# CUDA runs the model under bf16 autocast, the CPU in float32. Tolerances: about 3x the largest differences
# measured between the two precisions on the CPU for 2,000 mp37k strings with the shipped model (formation
# energy max 0.011 eV/atom, mean 0.0017; band gap 0.018 / 0.0028 eV; log10 K, G 0.004 / 0.0006; θ_D 0.45 %;
# Cv(300 K) 0.068 / 0.005 J/(K mol)).
CUDA_TOLERANCE = {  # column: (largest absolute difference, mean absolute difference)
    "formation_energy_per_atom": (0.03, 0.005),
    "band_gap": (0.05, 0.008),
    "log10_k_vrh": (0.012, 0.002),
    "log10_g_vrh": (0.012, 0.002),
    "cv_300K": (0.2, 0.015),
}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_and_cuda_predictions_agree(prototype_scopes):
    bundle = load_bundle("default")
    strings = prototype_scopes["detailed"]
    on_cpu = predict_strings(bundle.model, strings, "cpu")
    bundle.model.to("cuda")
    try:
        on_cuda = predict_strings(bundle.model, strings, "cuda")
    finally:
        bundle.model.to("cpu")
    assert on_cuda["error"].to_list() == on_cpu["error"].to_list()
    for column, (largest, mean) in CUDA_TOLERANCE.items():
        difference = (on_cuda[column] - on_cpu[column]).abs()
        assert difference.max() <= largest and difference.mean() <= mean, column
    theta = ((on_cuda["debye_temperature"] - on_cpu["debye_temperature"]) / on_cpu["debye_temperature"]).abs()
    assert theta.max() <= 0.015
