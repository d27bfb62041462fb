"""params.yaml's typed model: loading, the errors a user sees, model locations, hashes, flattening."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from anyprec.config import (
    DEFAULT_MODEL, CalibrationConfig, ModelEntry, Params, QuantizationConfig, config_hash, flatten, load_params,
    validation_message,
)

REPO = Path(__file__).resolve().parents[2]


def test_the_repositorys_params_file_loads():
    params = load_params(REPO / "params.yaml")
    assert DEFAULT_MODEL in params.models and params.models[DEFAULT_MODEL].is_embedded
    assert params.quantization.bit_widths == list(range(params.quantization.seed_bits,
                                                        params.quantization.parent_bits + 1))


def test_missing_file_and_misspelt_key_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere\.yaml not found: .*--params PATH"):
        load_params(tmp_path / "nowhere.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("models: {}\ncalibration:\n  n_sample: 4\n")
    with pytest.raises(ValueError, match=r"params\.yaml is invalid:(.|\n)*n_sample"):
        load_params(bad)


def test_unknown_model_lists_the_known_ones():
    params = Params(models={"a": ModelEntry(path="embedded"), "b": ModelEntry(path="/m")})
    with pytest.raises(KeyError, match=r"model 'c' is not in params.yaml 'models' \(known: \['a', 'b'\]\)"):
        params.model("c")


def test_model_location_is_relative_to_the_params_folder(tmp_path):
    assert ModelEntry(path="models/x").location(tmp_path) == str(tmp_path / "models" / "x")
    assert ModelEntry(path="/abs/x").location(tmp_path) == "/abs/x"
    assert ModelEntry(path="~/x").location(tmp_path) == str(Path.home() / "x")
    embedded = ModelEntry(path="embedded")
    assert embedded.location(tmp_path) == embedded.ref == DEFAULT_MODEL


def test_seed_must_be_below_parent_and_the_message_names_the_flags():
    with pytest.raises(ValidationError) as caught:
        QuantizationConfig(seed_bits=5, parent_bits=5)
    message = validation_message(caught.value, {"seed_bits": "--seed-bits", "parent_bits": "--parent-bits"})
    assert message.startswith("--seed-bits 5 must be below --parent-bits 5")
    with pytest.raises(ValidationError) as caught:
        CalibrationConfig(seq_len=4)
    assert validation_message(caught.value, {"seq_len": "--seq-len"}) == \
        "--seq-len 4: input should be greater than or equal to 8"


def test_hash_follows_what_is_computed_not_how():
    calib = CalibrationConfig(n_samples=4)
    quant = QuantizationConfig()
    assert config_hash(calib, quant) == config_hash(calib, quant.model_copy(update={"sensitivity": "streamed"}))
    assert config_hash(calib, quant) != config_hash(calib, quant.model_copy(update={"method": "lloyd"}))
    assert config_hash(calib, quant) != config_hash(quant, calib)  # the order is part of the key


def test_flatten_gives_dotted_keys_and_joins_lists():
    flat = flatten("", {"evaluation": {"bits": [3, 4], "ppl_window": 32}, "calibration": CalibrationConfig()})
    assert flat["evaluation.bits"] == "3,4" and flat["evaluation.ppl_window"] == 32
    assert flat["calibration.corpus"] == "wiki" and "calibration" not in flat
