"""The configuration: the example file documents the defaults, new keys are checked, old keys load."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import ConfigError, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "segment.example.toml"


def test_the_example_file_states_the_defaults():
    example = load_settings(EXAMPLE).model_dump()
    defaults = Settings().model_dump()
    # Paths in a file are relative to the file's folder (here the repository root).
    for key in ("database", "reports"):
        assert example["output"][key] == str(EXAMPLE.parent / defaults["output"][key])
        example["output"][key] = defaults["output"][key]
    assert example == defaults


def test_grid_limit_and_switch_margin():
    settings = load_settings(overrides={"model": {"k_max": 6}})
    assert settings.k_limit == 12 and settings.model.switch_margin == 10.0
    assert load_settings(overrides={"model": {"k_min": 4, "k_max": 4}}).k_limit == 4  # a fixed k stays fixed
    assert load_settings(overrides={"model": {"k_max": 6, "k_limit": 9}}).k_limit == 9
    with pytest.raises(ConfigError, match=r"k_limit \(5\) is smaller than k_max \(6\)"):
        load_settings(overrides={"model": {"k_max": 6, "k_limit": 5}})
    with pytest.raises(ConfigError, match="model.switch_margin"):
        load_settings(overrides={"model": {"switch_margin": -1}})
    with pytest.raises(ConfigError, match="features.resolution"):
        load_settings(overrides={"features": {"resolution": "sometimes"}})


def test_an_old_warm_start_key_still_loads(tmp_path):
    config = tmp_path / "old.toml"
    config.write_text("[tracking]\nwarm_start = true\n")
    assert load_settings(config).tracking.warm_start is True
