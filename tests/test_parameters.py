"""A run's parameters are defined once (flows/parameters.py): the flow's parameters, the CLI's
options and the settings they override all come from RunParameters and cannot drift apart."""

from __future__ import annotations

import inspect
import typing
from datetime import date

import pytest

from flows.cli import _extra_parameters, _flags, build_parser, flow_parameters
from flows.config import ConfigError, Settings
from flows.parameters import (
    RunParameters,
    choices,
    param_of,
    setting_default,
    value_type,
)
from flows.pipeline import segment_customers

FIELDS = list(RunParameters.model_fields)


def _sample(name: str) -> tuple[list[str], object]:
    """Command-line words that set a parameter, and the value the flow should get."""
    annotation = value_type(RunParameters.model_fields[name])
    flag = _flags(name)[0]
    kind, allowed = typing.get_origin(annotation), choices(annotation)
    if kind is dict:
        value = choices(typing.get_args(annotation)[1])
        value = value[-1] if value else "v"
        return [flag, f"a={value}", flag, f"b={value}"], {"a": value, "b": value}
    if kind is list:
        items = list(allowed[-2:]) if allowed else ["x", "y"]
        return [flag, ",".join(items)], items
    if allowed:
        return [flag, allowed[-1]], allowed[-1]
    if annotation is bool:
        return [flag], True
    if annotation is date:
        return [flag, "2011-12-10"], date(2011, 12, 10)
    if annotation in (int, float):
        return [flag, "2"], annotation(2)
    assert annotation is str, (
        f"{name}: no sample for {annotation}; teach _sample and _add_run_options the type"
    )
    return [flag, "some text"], "some text"


def test_every_parameter_is_a_flow_parameter_with_its_description():
    assert list(inspect.signature(segment_customers).parameters) == FIELDS  # nothing else, in this order
    for name, field in RunParameters.model_fields.items():
        assert field.description, f"{name} needs a description (the UI's form and the CLI help show it)"
        assert field.default is (False if value_type(field) is bool else None), name
        flow_param = inspect.signature(segment_customers).parameters[name]
        assert flow_param.annotation == field.annotation and flow_param.default == field.default, name
        assert segment_customers.parameters.properties[name]["description"].startswith(field.description), (
            name
        )


def test_every_setting_parameter_names_an_existing_key_of_the_same_type():
    for name in FIELDS:
        key = param_of(name).setting
        if key is None:
            continue
        section, leaf = key.split(".")
        assert section in Settings.model_fields, f"{name}: no section [{section}] in Settings"
        fields = Settings.model_fields[section].annotation.model_fields
        assert leaf in fields, f"{name}: no key {key} in Settings"
        setting_default(key)
        assert value_type(RunParameters.model_fields[name]) == value_type(fields[leaf]), (
            f"{name}, {key}: types differ"
        )


def test_each_parameter_overrides_its_own_key_and_no_other():
    keys = [param_of(n).setting for n in FIELDS if param_of(n).setting]
    assert len(keys) == len(set(keys))
    for name in FIELDS:
        _words, value = _sample(name) if _flags(name) else ([], "manual")
        overrides = RunParameters.given({name: value}).overrides()
        key = param_of(name).setting
        if key is None:
            assert overrides == {}
        else:
            section, leaf = key.split(".")
            assert overrides == {section: {leaf: value}}


def test_every_parameter_can_be_given_on_the_command_line():
    for command in ("run", "serve", "trigger"):
        assert flow_parameters(build_parser().parse_args([command])) == {}  # left out: not passed
        for name in FIELDS:
            if not _flags(name):  # no option of its own: `segment trigger --param NAME=VALUE`
                assert _extra_parameters([f'{name}="manual"']) == {name: "manual"}
                continue
            words, value = _sample(name)
            params = flow_parameters(build_parser().parse_args([command, *words]))
            assert params == {name: value}, (command, words)
            assert getattr(RunParameters.given(params), name) == value


def test_overrides_merge_over_the_file_and_the_defaults(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[model]\nn_init = 5\n[features]\ntransforms = { monetary = "none" }\n')
    settings = RunParameters(config_path=str(config), k_max=4, transforms={"frequency": "none"}).settings()
    assert (settings.model.n_init, settings.model.k_max) == (5, 4)
    assert settings.features.transforms == {"recency_days": "none", "frequency": "none", "monetary": "none"}


def test_a_bad_parameter_is_named_by_its_settings_key():
    with pytest.raises(ConfigError, match=r"^command line: model\.k_max: Input should be a valid integer"):
        RunParameters.given({"k_max": "many"}, "command line")
    with pytest.raises(
        ConfigError, match=r"^flow parameters: model\.covariance_types\.0: Input should be 'full'"
    ):
        RunParameters.given({"covariance_types": ["banana"]})
    with pytest.raises(ConfigError, match=r"^command line: k_mx: Extra inputs are not permitted"):
        RunParameters.given({"k_mx": 3}, "command line")
