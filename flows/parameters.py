"""A run's parameters, defined once.

``RunParameters`` is the one list of what a run can be given: each field has its type, its
description, where it lands in the settings (the TOML key) and how it is spelled on the command
line. From it come the flow's parameters (``segment_customers``, the Prefect UI's form), the
``segment run``/``serve``/``trigger`` options (``flows/cli.py``) and the overrides merged over the
TOML file. Adding a run option is adding a field here.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from flows.config import (
    ConfigError,
    CovarianceType,
    Criterion,
    InputKind,
    PurchaseRule,
    Settings,
    Transform,
    Trigger,
    load_settings,
)
from gmm_engine import COVARIANCE_TYPES, MCLUST_MODELS


@dataclass(frozen=True)
class Param:
    """Where a run parameter goes (``Annotated`` metadata of a ``RunParameters`` field).

    ``setting``: the dotted settings key (as in the TOML file, e.g. ``model.k_max``) the value
    overrides; None for a parameter of the run itself (``config_path``, ``fresh``, ``trigger``).
    A map (``features.transforms``) is merged key by key over the file's and the defaults (by
    ``load_settings`` and ``FeatureSettings``), so one feature's entry leaves the others alone.

    ``flags``: the command-line option strings, default ``--name-with-dashes``; ``None`` when the
    parameter has no option of its own (``--param NAME=VALUE`` still sets it). How an option is
    read follows from the field's type: a list is comma-separated, a map is ``NAME=VALUE``
    repeated, a Literal gives the choices, a bool is a switch, a date is ``YYYY-MM-DD``.
    ``metavar`` and ``example`` (``--column customer_id=Customer``) are for the option's help;
    ``allow_empty`` lets a map's entry be ``NAME=`` (an empty value). ``path``: a file or folder,
    made absolute for a deployment's parameters.
    """

    setting: str | None = None
    flags: tuple[str, ...] | None = ()
    metavar: str | None = None
    example: str | None = None
    allow_empty: bool = False
    path: bool = False


class RunParameters(BaseModel):
    """The parameters of one run; every one left as None comes from the TOML file or the defaults."""

    model_config = ConfigDict(extra="forbid")

    config_path: Annotated[str | None, Param(flags=("--config", "-c"), metavar="CONFIG", path=True)] = Field(
        None,
        description="TOML configuration file (see segment.example.toml); what is not given here comes "
        "from it, or from the built-in defaults",
    )
    input_path: Annotated[str | None, Param("input.path", flags=("--input", "-i"), path=True)] = Field(
        None, description="CSV, Parquet or DuckDB file; default: the embedded Online Retail sample"
    )
    input_kind: Annotated[InputKind | None, Param("input.kind", flags=("--kind",))] = Field(
        None, description="input kind: a transaction log, or a table of one row per customer"
    )
    input_table: Annotated[str | None, Param("input.table", flags=("--table",))] = Field(
        None, description="table in a DuckDB input file"
    )
    input_query: Annotated[str | None, Param("input.query", flags=("--query",))] = Field(
        None, description="SQL query over a DuckDB file, or over `input` for CSV/Parquet"
    )
    columns: Annotated[
        dict[str, str] | None,
        Param("input.columns", flags=("--column",), metavar="NAME=COLUMN", example="customer_id=Customer"),
    ] = Field(None, description="map a canonical column to the input's own")
    features: Annotated[list[str] | None, Param("features.columns")] = Field(
        None, description="feature columns (customer tables) or RFM subset"
    )
    transforms: Annotated[
        dict[str, Transform] | None,
        Param(
            "features.transforms", flags=("--transform",), metavar="FEATURE=log1p|none", example="spend=log1p"
        ),
    ] = Field(
        None,
        description="transform of a feature before standardisation, merged feature by feature over the "
        "defaults: log1p for frequency and monetary, none for others",
    )
    units: Annotated[
        dict[str, str] | None,
        Param(
            "features.units",
            flags=("--unit",),
            metavar="FEATURE=UNIT",
            example="monetary=USD",
            allow_empty=True,
        ),
    ] = Field(None, description="display unit of a feature, an empty one for none; merged feature by feature")
    purchase: Annotated[PurchaseRule | None, Param("rules.purchase")] = Field(
        None,
        description="what frequency counts: distinct invoice ids, purchase days or lines; default: invoice "
        "when invoice_id is mapped, else day",
    )
    as_of: Annotated[date | None, Param("rules.as_of")] = Field(
        None,
        description="recency reference date, YYYY-MM-DD, exclusive; "
        "default: the day after the last transaction",
    )
    k_min: Annotated[int | None, Param("model.k_min")] = Field(
        None, description="smallest number of segments tried"
    )
    k_max: Annotated[int | None, Param("model.k_max")] = Field(
        None, description="largest number of segments tried"
    )
    covariance_types: Annotated[list[CovarianceType] | None, Param("model.covariance_types")] = Field(
        None,
        description=f"covariance types tried: a subset of {','.join(COVARIANCE_TYPES)} or of mclust's "
        f"{','.join(MCLUST_MODELS)}",
    )
    criterion: Annotated[Criterion | None, Param("model.criterion")] = Field(
        None, description="model-selection criterion, lower is better"
    )
    n_init: Annotated[int | None, Param("model.n_init")] = Field(
        None, description="EM restarts per candidate"
    )
    seed: Annotated[int | None, Param("model.seed")] = Field(None, description="random seed")
    max_samples: Annotated[int | None, Param("model.max_samples")] = Field(
        None, description="fit candidates on a subsample of this many customers"
    )
    max_reject_share: Annotated[float | None, Param("rules.max_reject_share")] = Field(
        None, description="stop when more than this share of rows is rejected"
    )
    fresh: Annotated[bool, Param()] = Field(
        False,
        description="choose the number of segments and covariance type afresh, instead of keeping the "
        "previous run's unless a fresh choice is better by model.switch_margin (a manual re-segmentation)",
    )
    cluster: Annotated[
        str | None, Param("compute.cluster", metavar="local[:N]|tcp://HOST:PORT", example="local:2")
    ] = Field(
        None,
        description="run the model's passes over all customers on a dask.distributed cluster: local (a "
        "cluster of N worker processes on this machine) or the address of a running scheduler",
    )
    database: Annotated[str | None, Param("output.database", path=True)] = Field(
        None, description="results DuckDB file"
    )
    reports_dir: Annotated[str | None, Param("output.reports", flags=("--reports",), path=True)] = Field(
        None, description="reports folder, one folder per run inside"
    )
    trigger: Annotated[Trigger | None, Param(flags=None)] = Field(
        None,
        description="how the run was started, recorded in runs; default: schedule for a run the Prefect "
        "scheduler created, manual for any other deployment run, else cli",
    )

    @classmethod
    def given(cls, values: dict[str, Any], source: str = "flow parameters") -> RunParameters:
        """Validate parameters (None = not given); a bad one is a ConfigError naming its settings key."""
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = [str(p) for p in first["loc"]]
            if loc and loc[0] in cls.model_fields:
                loc[0] = param_of(loc[0]).setting or loc[0]
            where = ".".join(loc) + ": " if loc else ""
            raise ConfigError(f"{source}: {where}{first['msg']}") from None

    def overrides(self) -> dict[str, Any]:
        """The settings these parameters set, as nested dicts like the TOML file's (None left out)."""
        nested: dict[str, Any] = {}
        for name in type(self).model_fields:
            key, value = param_of(name).setting, getattr(self, name)
            if key is not None and value is not None:
                section, leaf = key.split(".")
                nested.setdefault(section, {})[leaf] = value
        return nested

    def settings(self, source: str = "flow parameters", extra: dict[str, Any] | None = None) -> Settings:
        """Merge these parameters (and ``extra`` overrides, e.g. ``segment serve``'s schedule) over the
        TOML file.

        ``source`` names the parameters in an error message ("command line" for the ``segment`` CLI).
        """
        overrides = self.overrides()
        for section, values in (extra or {}).items():
            given = {k: v for k, v in values.items() if v is not None}
            if given:
                overrides.setdefault(section, {}).update(given)
        return load_settings(self.config_path, overrides, overrides_source=source)


def param_of(name: str) -> Param:
    """The ``Param`` of a ``RunParameters`` field."""
    return next((m for m in RunParameters.model_fields[name].metadata if isinstance(m, Param)), Param())


def value_type(field: FieldInfo) -> Any:
    """A field's annotation without its ``| None`` (``int | None`` -> ``int``)."""
    annotation = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def choices(annotation: Any) -> tuple | None:
    """The values a Literal allows (also of a list's items), else None."""
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return typing.get_args(annotation) if typing.get_origin(annotation) is Literal else None


def setting_default(key: str) -> Any:
    """The built-in default of a dotted settings key (``model.k_max`` -> 8); KeyError for an unknown key."""
    section, leaf = key.split(".")
    section_model = Settings.model_fields[section].annotation
    assert section_model is not None  # every section is annotated with its model
    return section_model.model_fields[leaf].get_default(call_default_factory=True)


def flow_signature(return_annotation: Any = inspect.Signature.empty) -> inspect.Signature:
    """The flow's parameters: one keyword argument per field, with its type and default."""
    return inspect.Signature(
        [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=field.default, annotation=field.annotation
            )
            for name, field in RunParameters.model_fields.items()
        ],
        return_annotation=return_annotation,
    )


def takes_run_parameters(fn):
    """Give ``fn(**parameters)`` the signature and the documented arguments of ``RunParameters``.

    Apply below ``@flow``: Prefect builds the flow's parameter schema (the UI's form, its checks of
    types) from ``inspect.signature`` and the docstring's ``Args:`` section, and calls ``fn`` with
    keyword arguments.
    """
    fn.__signature__ = flow_signature(inspect.signature(fn).return_annotation)
    lines = []
    for name, field in RunParameters.model_fields.items():
        key = param_of(name).setting
        lines.append(f"    {name}: {field.description}" + (f" (setting {key})." if key else "."))
    fn.__doc__ = inspect.cleandoc(fn.__doc__ or "") + "\n\nArgs:\n" + "\n".join(lines) + "\n"
    return fn
