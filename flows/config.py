"""Run configuration: a TOML file, flow parameters and CLI options merged into one validated Settings."""

from __future__ import annotations

import tomllib
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from constants import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_JACCARD,
    DEFAULT_MOVED_THRESHOLD,
    DEFAULT_TAU_MATCH,
    DEFAULT_TAU_SPLIT,
    TRANSFORMS,
)
from gmm_engine import ALL_COVARIANCE_TYPES, COVARIANCE_TYPES, CRITERIA

#: The embedded UCI Online Retail sample shipped in data/ (used when no input is configured).
SAMPLE_PATH = Path(__file__).resolve().parent.parent / "data" / "online_retail.csv.gz"

#: Column mapping of the embedded sample: canonical name -> column in the file.
ONLINE_RETAIL_COLUMNS = {
    "customer_id": "CustomerID",
    "invoice_id": "InvoiceNo",
    "timestamp": "InvoiceDate",
    "quantity": "Quantity",
    "unit_price": "UnitPrice",
}

RFM_FEATURES = ("recency_days", "frequency", "monetary")
#: Per-feature defaults; a map given in a file or as options is merged over them key by key, so
#: setting one feature's transform or unit leaves the others' defaults alone.
DEFAULT_TRANSFORMS = {"recency_days": "none", "frequency": "log1p", "monetary": "log1p"}
DEFAULT_UNITS = {"recency_days": "days", "frequency": "invoices"}
#: The embedded sample's currency: anyone else's spend has no unit unless one is given.
SAMPLE_UNITS = {"monetary": "GBP"}
#: What one purchase can be (rules.purchase), with frequency's unit and a phrase for the log.
PURCHASE_UNITS = {"invoice": "invoices", "day": "purchase days", "line": "purchases"}
PURCHASE_MEANINGS = {
    "invoice": "distinct invoice ids",
    "day": "the distinct days a customer bought on",
    "line": "every line",
}
PURCHASE_RULES = tuple(PURCHASE_UNITS)
#: What a blank feature value does (customer tables): "model", the customer is segmented on the
#: features they have (values missing at random); "reject", the row is rejected.
MISSING_RULES = ("model", "reject")

InputKind = Literal["transactions", "customers"]
# One list of names each, where they are defined (a Literal of a tuple is the Literal of its items).
# A type checker cannot build a Literal from a tuple's values, so for mypy these are plain strings;
# pydantic checks the values at runtime.
if TYPE_CHECKING:
    Transform = str
    CovarianceType = str
    Criterion = str
    MissingRule = str
    PurchaseRule = str
else:
    Transform = Literal[TRANSFORMS]
    # scikit-learn's four names (the default grid) and mclust's fourteen.
    CovarianceType = Literal[ALL_COVARIANCE_TYPES]
    Criterion = Literal[CRITERIA]
    MissingRule = Literal[MISSING_RULES]
    PurchaseRule = Literal[PURCHASE_RULES]
Trigger = Literal["cli", "manual", "schedule", "test"]


class ConfigError(ValueError):
    """The configuration (file, parameters or options) is invalid; the message says where and why."""


class _Section(BaseModel):
    # Unknown keys are errors so that a typo in the TOML file does not pass silently.
    model_config = ConfigDict(extra="forbid")


class InputSettings(_Section):
    """Where the data comes from and how its columns are called."""

    path: str = str(SAMPLE_PATH)
    kind: InputKind = "transactions"
    table: str | None = None
    query: str | None = None
    columns: dict[str, str] = Field(default_factory=lambda: dict(ONLINE_RETAIL_COLUMNS))
    #: How text timestamps are written, as a strftime pattern (e.g. "%d/%m/%Y %H:%M"). Without it
    #: the order of day and month is read from the data and a column that does not settle it stops.
    date_format: str | None = None


#: The dates a timestamp can hold (pandas' nanosecond range, whole days).
FIRST_DATE, LAST_DATE = date(1678, 1, 1), date(2262, 4, 10)


class RuleSettings(_Section):
    """Data rules: the RFM reference date, cancellations and the reject budget."""

    as_of: date | None = None
    cancellation_prefix: str = "C"
    #: What one purchase is (frequency counts them): "invoice", a distinct invoice id; "day", a
    #: distinct (customer, day), for logs without invoice ids; "line", each line. Default: "invoice"
    #: when input.columns maps invoice_id, else "day".
    purchase: PurchaseRule | None = None
    max_reject_share: float = Field(0.05, ge=0.0, le=1.0)

    @field_validator("as_of")
    @classmethod
    def _in_range(cls, value: date | None) -> date | None:
        if value is not None and not FIRST_DATE <= value <= LAST_DATE:
            raise ValueError(f"{value} is out of range: dates from {FIRST_DATE} to {LAST_DATE} can be used")
        return value


class FeatureSettings(_Section):
    """Which features describe a customer and how they are transformed before the model sees them."""

    columns: list[str] = Field(default_factory=lambda: list(RFM_FEATURES))
    transforms: dict[str, Transform] = Field(default_factory=lambda: dict(DEFAULT_TRANSFORMS))
    units: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_UNITS))
    standardize: bool = True
    #: "auto": a feature whose customers pile up on one value (a count's 1, a share's 0) keeps
    #: every segment at least as wide as the spacing of its values there; "off": all continuous.
    resolution: Literal["auto", "off"] = "auto"
    #: Blank feature values in a customer table: "model" (segment the customer on the features
    #: they have) or "reject", for all features or per feature ({"balance" = "reject"}).
    missing: MissingRule | dict[str, MissingRule] = "model"
    #: A customer with more than this share of their features blank is rejected all the same.
    max_missing_share: float = Field(0.5, ge=0.0, lt=1.0)

    def missing_rule(self, feature: str) -> str:
        """``"model"`` or ``"reject"`` for one feature (a per-feature map defaults to "model")."""
        if isinstance(self.missing, dict):
            return self.missing.get(feature, "model")
        return self.missing

    @field_validator("transforms", "units", mode="before")
    @classmethod
    def _over_defaults(cls, value: Any, info) -> Any:
        defaults = DEFAULT_TRANSFORMS if info.field_name == "transforms" else DEFAULT_UNITS
        return {**defaults, **value} if isinstance(value, dict) else value

    @field_validator("columns")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one feature column is needed")
        if len(set(value)) != len(value):
            raise ValueError(f"feature columns repeat a name: {value}")
        return value


class ModelSettings(_Section):
    """The model-selection grid handed to gmm_engine.select_model."""

    k_min: int = Field(1, ge=1)
    k_max: int = Field(8, ge=1)
    covariance_types: list[CovarianceType] = Field(default_factory=lambda: list(COVARIANCE_TYPES))
    criterion: Criterion = "bic"
    n_init: int = Field(3, ge=1)
    seed: int = Field(0, ge=0)
    max_iter: int = Field(200, ge=1)
    tol: float = Field(1e-3, gt=0)
    reg_covar: float = Field(1e-6, ge=0)
    max_samples: int | None = Field(200_000, ge=1)
    #: "data": mclust's conjugate prior on the covariances (MAP EM: a segment of a few identical
    #: customers keeps a variance of the data's order); "none": maximum likelihood; "auto": the
    #: prior when a feature has a spike (discrete data), none for continuous data.
    covariance_prior: Literal["auto", "data", "none"] = "auto"
    #: When the best model has k_max segments, try more, up to this many (default 2 x k_max).
    k_limit: int | None = Field(None, ge=1)
    #: Keep the previous run's number of segments and covariance type unless a fresh choice
    #: beats its refit by more than this on the criterion (10: "very strong" evidence for BIC).
    switch_margin: float = Field(10.0, ge=0)

    @model_validator(mode="after")
    def _range(self) -> ModelSettings:
        if self.k_max < self.k_min:
            raise ValueError(f"k_max ({self.k_max}) is smaller than k_min ({self.k_min})")
        if self.k_limit is not None and self.k_limit < self.k_max:
            raise ValueError(f"k_limit ({self.k_limit}) is smaller than k_max ({self.k_max})")
        if not self.covariance_types:
            raise ValueError("at least one covariance type is needed")
        return self


class OutputSettings(_Section):
    """Where results go: one DuckDB file and one report folder per run."""

    database: str = "output/segments.duckdb"
    reports: str = "output/reports"
    #: How long a run waits for another run on the same database before it gives up.
    lock_wait_minutes: float = Field(360.0, ge=0)
    #: How long a run waits for a process that has the results file open for writing (an
    #: analyst's session opened without read_only) before it stops, naming the process.
    writer_wait_minutes: float = Field(10.0, ge=0)
    #: Keep the per-customer rows (assignments, rejected_rows) of this many newest successful runs;
    #: older runs keep their summary rows (runs, segments, candidates, drift). 0 keeps everything.
    keep_runs: int = Field(0, ge=0, strict=True)  # strict: `true` must not silently mean 1


class TrackingSettings(_Section):
    """Stable segment ids across runs and drift (see the tracking package for the rules)."""

    #: A Bhattacharyya distance up to this keeps a segment's id (2.0: overlap coefficient e^-2).
    max_distance: float = Field(DEFAULT_MAX_DISTANCE, gt=0)
    #: When the features changed, a Jaccard index of customers at least this keeps an id.
    min_jaccard: float = Field(DEFAULT_MIN_JACCARD, gt=0, le=1)
    #: MONIC thresholds: share of a segment's customers for a survival / for each part of a split.
    tau_match: float = Field(DEFAULT_TAU_MATCH, gt=0, le=1)
    tau_split: float = Field(DEFAULT_TAU_SPLIT, gt=0, le=1)
    #: Flag the run when more than this share of the customers in both runs changed segment.
    moved_threshold: float = Field(DEFAULT_MOVED_THRESHOLD, ge=0, le=1)
    #: A customer keeps last run's segment unless the model now favours another by more than these
    #: odds (10: ten times as probable); 1 gives every customer their most probable segment.
    hold_odds: float = Field(10.0, ge=1)
    #: No longer used: every run refits the previous run's model (see model.switch_margin).
    #: Accepted so that older configuration files still load; a run logs a warning when it is set.
    warm_start: bool | None = None


class ScheduleSettings(_Section):
    """When ``segment serve`` runs the nightly deployment."""

    cron: str = "0 2 * * *"
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        # The schedule Prefect will build, so what passes here is what the server accepts.
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=value)
        except ValidationError:
            raise ValueError(f"not a valid cron expression: {value!r}") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (use an IANA name such as Europe/London)"
            ) from None
        return value


class ComputeSettings(_Section):
    """Where the passes over all customers run: this process (default) or a dask cluster."""

    #: None: this process. "local" or "local:N": a dask LocalCluster of N worker processes (default
    #: one per core) started for the run; "tcp://host:8786": a running dask scheduler.
    cluster: str | None = None
    #: Memory limit of each worker of a local cluster (dask's memory_limit: "2GiB", "512MB").
    worker_memory: str = "2GiB"
    #: At most this many customers per partition sent to the workers.
    partition_rows: int = Field(1_000_000, ge=1)
    #: How long to wait for a scheduler's answer, and for a local cluster's workers to start.
    connect_timeout_seconds: float = Field(30.0, gt=0)

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str | None) -> str | None:
        from flows.cluster import ClusterSpec

        if value is None or not value.strip():
            return None
        return str(ClusterSpec.parse(value))

    @field_validator("worker_memory")
    @classmethod
    def _memory(cls, value: str) -> str:
        from dask.utils import parse_bytes

        try:
            if parse_bytes(value) <= 0:
                raise ValueError
        except (ValueError, TypeError):
            raise ValueError(f"not an amount of memory: {value!r} (e.g. 2GiB, 512MB)") from None
        return value


class Settings(_Section):
    """Everything a run needs; defaults segment the embedded Online Retail sample."""

    input: InputSettings = Field(default_factory=InputSettings)
    rules: RuleSettings = Field(default_factory=RuleSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    tracking: TrackingSettings = Field(default_factory=TrackingSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if Path(self.input.path).resolve() == SAMPLE_PATH:
            for feature, unit in SAMPLE_UNITS.items():
                self.features.units.setdefault(feature, unit)
        columns = self.input.columns
        if self.input.kind == "transactions":
            if not columns:
                canonical = ["customer_id", "timestamp", "quantity", "unit_price"]
                if self.rules.purchase in (None, "invoice"):
                    canonical.append("invoice_id")
                columns.update({name: name for name in canonical})
            if self.rules.purchase is None:
                self.rules.purchase = "invoice" if "invoice_id" in columns else "day"
            elif self.rules.purchase == "invoice" and "invoice_id" not in columns:
                raise ValueError(
                    "rules.purchase = 'invoice' needs input.columns to map 'invoice_id' (--column "
                    "invoice_id=YOUR_COLUMN); a log without invoice ids counts purchase days ('day') "
                    "or lines ('line')"
                )
            if (
                self.rules.purchase != "invoice"
                and self.features.units.get("frequency") == DEFAULT_UNITS["frequency"]
            ):
                self.features.units["frequency"] = PURCHASE_UNITS[self.rules.purchase]
            unknown = [c for c in self.features.columns if c not in RFM_FEATURES]
            if unknown:
                raise ValueError(
                    f"features.columns {unknown} are not RFM features; "
                    f"a transaction log gives {list(RFM_FEATURES)} "
                    "(for a table of one row per customer, add --kind customers, input.kind)"
                )
            has_amount = "amount" in self.input.columns
            has_price = {"quantity", "unit_price"} <= set(self.input.columns)
            if not (has_amount or has_price):
                raise ValueError(
                    "input.columns must map 'amount', or both 'quantity' and 'unit_price', "
                    "for a transaction log"
                )
            for needed in ("customer_id", "timestamp"):
                if needed not in self.input.columns:
                    raise ValueError(f"input.columns must map '{needed}' for a transaction log")
        else:
            columns.setdefault("customer_id", "customer_id")
            if "columns" not in self.features.model_fields_set:
                raise ValueError("features.columns must list the numeric columns of a customer table")
            if "customer_id" in self.features.columns or columns["customer_id"] in self.features.columns:
                raise ValueError("the customer id column cannot also be a feature")
        if self.input.table and self.input.query:
            raise ValueError("set input.table or input.query, not both")
        if Path(self.input.path).resolve() == Path(self.output.database).resolve():
            raise ValueError(
                f"output.database is the input file ({self.input.path}): the results go to a file of "
                "their own, e.g. output/segments.duckdb"
            )
        return self

    @property
    def k_limit(self) -> int:
        """How far the model grid may be extended when its best model sits at ``k_max``."""
        m = self.model
        return m.k_limit if m.k_limit is not None else (m.k_max if m.k_min == m.k_max else 2 * m.k_max)

    def transform_of(self, feature: str) -> str:
        """Transform applied to ``feature`` before standardisation ("log1p" or "none")."""
        return self.features.transforms.get(feature, "none")

    def unit_of(self, feature: str) -> str:
        """Display unit of ``feature`` ("" when none is configured)."""
        return self.features.units.get(feature, "")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``override``; nested dicts merge, other values (and None-free) replace."""
    merged = dict(base)
    for key, value in override.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML configuration file into a dict, with a one-line error when it cannot be read."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def _has(data: Any, loc: tuple) -> bool:
    """Whether the nested dict ``data`` holds a value at the key path ``loc``."""
    for key in loc:
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


def load_settings(
    config_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    overrides_source: str = "options",
) -> Settings:
    """Build the run settings: defaults, then the TOML file, then ``overrides``
    (flow parameters / CLI options).

    Relative paths inside the TOML file are taken relative to the file's folder, so a config file works
    from any working directory; relative paths given as overrides are relative to the working directory.

    Raises
    ------
    ConfigError
        When the file is missing or malformed, or a value is invalid. The message names the key
        and where the value came from: the file, or ``overrides_source`` (e.g. "command line").
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if config_path is not None:
        source = str(config_path)
        data = read_toml(config_path)
        base = Path(config_path).resolve().parent
        for section, key in (("input", "path"), ("output", "database"), ("output", "reports")):
            value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
            if isinstance(value, str) and value and not Path(value).is_absolute():
                data[section][key] = str(base / value)
    file_data = data
    data = deep_merge(data, overrides or {})
    given = data.get("input")
    given_input = given if isinstance(given, dict) else {}
    if given_input.get("path") not in (None, str(SAMPLE_PATH)) and "columns" not in given_input:
        # A user's own file does not have Online Retail's column names: default to the canonical names.
        given_input["columns"] = {}
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(str(p) for p in first["loc"])
        # pydantic prefixes a validator's own message with "Value error, ": the message says it all.
        message = str(first["msg"]).removeprefix("Value error, ")
        where = ".".join(loc) + ": " if loc else ""
        origin = _origin(loc, file_data, overrides or {}, source, overrides_source)
        raise ConfigError(f"{origin}: {where}{message}") from None
    return settings


def _origin(loc: tuple, file_data: dict, overrides: dict, file_source: str, overrides_source: str) -> str:
    """Where the value an error is about came from: the options/parameters or the file.

    A rule that spans keys (k_max below k_min) has no value of its own: it is the options' fault
    when the file alone passes.
    """
    if loc and _has(overrides, loc):
        return overrides_source
    if (loc and _has(file_data, loc)) or not overrides:
        return file_source
    try:
        Settings.model_validate(file_data)
    except ValidationError:
        return file_source
    return overrides_source
