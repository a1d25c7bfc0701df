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
    with pytest.raises(ConfigError, match=r"model\.switch_margin"):
        load_settings(overrides={"model": {"switch_margin": -1}})
    with pytest.raises(ConfigError, match=r"features\.resolution"):
        load_settings(overrides={"features": {"resolution": "sometimes"}})


def test_an_old_warm_start_key_still_loads(tmp_path):
    config = tmp_path / "old.toml"
    config.write_text("[tracking]\nwarm_start = true\n")
    assert load_settings(config).tracking.warm_start is True


def test_a_bad_value_is_named_where_it_came_from(tmp_path, capsys):
    from flows.cli import main

    config = tmp_path / "retail.toml"
    config.write_text("[model]\nn_init = 3\n")
    with pytest.raises(
        ConfigError, match=r"^command line: model\.n_init: Input should be greater than or equal to 1"
    ):
        load_settings(config, {"model": {"n_init": 0}}, overrides_source="command line")
    config.write_text("[model]\nn_init = 0\n")
    with pytest.raises(ConfigError, match=rf"^{config}: model\.n_init"):
        load_settings(config, {"model": {"seed": 1}}, overrides_source="command line")
    # A rule across keys blames the options when the file alone is fine.
    config.write_text("[model]\nk_min = 2\n")
    with pytest.raises(
        ConfigError, match=r"^flow parameters: model: k_max \(1\) is smaller than k_min \(2\)"
    ):
        load_settings(config, {"model": {"k_max": 1}}, overrides_source="flow parameters")
    config.write_text("[model]\nn_init = 3\n")
    assert (
        main(["run", "--config", str(config), "--n-init", "0", "--database", str(tmp_path / "x.duckdb")]) == 2
    )
    assert capsys.readouterr().err.startswith("segment: error: command line: model.n_init: Input should be")


def test_one_feature_s_transform_or_unit_leaves_the_others_defaults(tmp_path):
    """Per-feature maps merge key by key: defaults, then the file, then the command line."""
    from flows.cli import build_parser, flow_parameters
    from flows.parameters import RunParameters

    defaults = load_settings().features
    assert defaults.transforms == {"recency_days": "none", "frequency": "log1p", "monetary": "log1p"}
    assert defaults.units == {
        "recency_days": "days",
        "frequency": "invoices",
        "monetary": "GBP",
    }  # the sample's

    # The file sets one transform and one unit: the others keep their defaults.
    config = tmp_path / "one.toml"
    config.write_text('[features]\ntransforms = { monetary = "none" }\nunits = { monetary = "EUR" }\n')
    from_file = load_settings(config).features
    assert from_file.transforms == {"recency_days": "none", "frequency": "log1p", "monetary": "none"}
    assert from_file.units == {"recency_days": "days", "frequency": "invoices", "monetary": "EUR"}

    # The command line sets another: merged over the file, not instead of it.
    args = build_parser().parse_args(
        [
            "run",
            "--config",
            str(config),
            "--transform",
            "frequency=none",
            "--unit",
            "monetary=USD",
            "--unit",
            "frequency=",
            "--purchase",
            "line",
        ]
    )
    settings = RunParameters.given(flow_parameters(args)).settings("command line")
    assert settings.features.transforms == {"recency_days": "none", "frequency": "none", "monetary": "none"}
    assert settings.features.units == {"recency_days": "days", "frequency": "", "monetary": "USD"}
    assert settings.rules.purchase == "line"  # counts lines though the sample has invoice ids
    with pytest.raises(ConfigError, match="--transform expects NAME=VALUE"):
        flow_parameters(build_parser().parse_args(["run", "--transform", "frequency="]))


def test_spend_has_no_currency_on_a_users_own_data(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("customer_id,invoice_id,timestamp,amount\nA,1,2024-01-02,3.5\n")
    own = load_settings(overrides={"input": {"path": str(log)}}).features
    assert own.units == {"recency_days": "days", "frequency": "invoices"}
    assert load_settings(overrides={"input": {"path": str(log)}}).unit_of("monetary") == ""
    given = load_settings(overrides={"input": {"path": str(log)}, "features": {"units": {"monetary": "USD"}}})
    assert given.unit_of("monetary") == "USD"


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("local", "local"),
        (" local:3 ", "local:3"),
        ("tcp://10.0.0.5:8786", "tcp://10.0.0.5:8786"),
        ("", None),
    ],
)
def test_a_cluster_is_local_or_a_scheduler_address(given, kept):
    from flows.cluster import ClusterSpec

    settings = load_settings(overrides={"compute": {"cluster": given}})
    assert settings.compute.cluster == kept
    if kept is not None:
        spec = ClusterSpec.parse(kept)
        assert spec.is_local == kept.startswith("local")
        assert spec.workers == (3 if kept == "local:3" else None)


@pytest.mark.parametrize(
    ("compute", "message"),
    [
        ({"cluster": "yarn"}, r"compute.cluster: not a cluster: 'yarn'; use local, local:N"),
        ({"cluster": "local:0"}, r"compute.cluster: local:N needs at least one worker"),
        ({"worker_memory": "lots"}, r"compute.worker_memory: not an amount of memory: 'lots'"),
        ({"partition_rows": 0}, r"compute.partition_rows: "),
    ],
)
def test_a_bad_compute_setting_is_one_line_naming_the_key(compute, message):
    with pytest.raises(ConfigError, match=r"^options: " + message) as caught:
        load_settings(overrides={"compute": compute})
    assert "\n" not in str(caught.value)


def test_an_error_raised_from_none_is_not_blamed_on_the_prefect_server():
    """A dask scheduler refusing the connection is not the Prefect API being unreachable."""
    from flows.cli import _one_line
    from flows.cluster import ClusterError

    def connect():
        raise ConnectionRefusedError("refused")

    try:
        try:
            connect()
        except OSError:
            raise ClusterError("compute.cluster tcp://h:1: no dask scheduler answered") from None
    except ClusterError as exc:
        assert _one_line(exc) == "compute.cluster tcp://h:1: no dask scheduler answered"
    try:
        try:
            connect()
        except OSError as exc:
            raise RuntimeError("the flow run could not be reported") from exc
    except RuntimeError as exc:
        assert _one_line(exc).startswith("the Prefect server (")
