"""The ``segment`` command line: ``run`` (the flow once), ``serve`` (the deployments) and ``trigger``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import traceback
import typing
from datetime import date
from pathlib import Path
from typing import Any

from flows.config import ConfigError
from flows.console import configure_console
from flows.parameters import (
    RunParameters,
    choices,
    param_of,
    setting_default,
    value_type,
)


def _pairs(values: list[str] | None, option: str, allow_empty: bool = False) -> dict[str, str] | None:
    if not values:
        return None
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not (value.strip() or allow_empty):
            raise ConfigError(f"{option} expects NAME=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def _flags(name: str) -> tuple[str, ...]:
    """The option strings of a run parameter (``k_max`` -> ``--k-max``); () when it has none."""
    flags = param_of(name).flags
    if flags is None:
        return ()
    return flags or ("--" + name.replace("_", "-"),)


def _help(name: str) -> str:
    """An option's help: the parameter's description, how it is written, its settings key and default."""
    field, param = RunParameters.model_fields[name], param_of(name)
    kind = typing.get_origin(value_type(field))
    notes = []
    if kind is list:
        notes.append("comma-separated")
    if param.example:
        notes.append(f"e.g. {_flags(name)[0]} {param.example}")
    if kind is dict:
        notes.append("repeatable")
    if param.setting:
        default = setting_default(param.setting)
        if isinstance(default, list):
            default = ",".join(map(str, default))
        shown = default is not None and not isinstance(default, dict) and len(str(default)) <= 40
        notes.append(f"{param.setting}" + (f", default {default}" if shown else ""))
    assert field.description is not None  # every run parameter has a description
    return field.description + (f" ({'; '.join(notes)})" if notes else "")


def _add_run_options(run: argparse.ArgumentParser) -> None:
    """Options that set flow parameters, one per field of RunParameters that has a command-line
    spelling; shared by ``run``, ``serve`` (defaults) and ``trigger``."""
    for name, field in RunParameters.model_fields.items():
        flags = _flags(name)
        if not flags:
            continue
        annotation, param = value_type(field), param_of(name)
        options: dict[str, Any] = {"dest": name, "help": _help(name).replace("%", "%%")}
        if param.metavar:
            options["metavar"] = param.metavar
        if typing.get_origin(annotation) is dict:
            options["action"] = "append"
        elif annotation is bool:
            options.update(action="store_true", default=None)
        elif choices(annotation) and typing.get_origin(annotation) is not list:
            options["choices"] = choices(annotation)
        elif annotation is date:
            options["type"] = _date
        elif annotation in (int, float):
            options["type"] = annotation
        run.add_argument(*flags, **options)
    run.add_argument(
        "--debug",
        action="store_true",
        help="show Python tracebacks in the terminal "
        "(by default errors are one line; the Prefect UI keeps them)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segment",
        description="Probabilistic customer segmentation (Gaussian mixtures, DuckDB, Prefect).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run the segmentation flow once",
        description="Run the whole flow once. Without options it segments the embedded Online Retail "
        "sample; options override the configuration file.",
    )
    _add_run_options(run)
    serve = sub.add_parser(
        "serve",
        help="serve the nightly and manual deployments on a Prefect server",
        description="Register the `nightly` (cron) and `manual` deployments on the Prefect server at "
        "PREFECT_API_URL and execute their runs until stopped. Options set the deployments' default "
        "parameters.",
    )
    _add_run_options(serve)
    serve.add_argument("--cron", help="schedule of the nightly run (default from [schedule], 0 2 * * *)")
    serve.add_argument("--timezone", help="IANA time zone of the schedule (default from [schedule], UTC)")
    trigger = sub.add_parser(
        "trigger",
        help="start a re-segmentation on the served deployment",
        description="Start a run of a served deployment now; options override its default parameters. "
        "Prints the flow-run id and UI link; with --wait follows the run and exits non-zero if it fails.",
    )
    _add_run_options(trigger)
    trigger.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="any flow parameter; VALUE is JSON when it parses as JSON, else text (repeatable)",
    )
    name = sub.add_parser(
        "name",
        help="name a segment (names stay attached to the stable segment id)",
        description="Give a segment id a name shown in current_segments, segment_history and the views "
        "(segment ids are kept from run to run). Waits for a run in progress.",
    )
    sql = sub.add_parser(
        "sql",
        help="query the results read-only: one query, or a prompt without one",
        description="Run SQL on the results file, read-only, with the DuckDB this project installs "
        "(DuckDB's own shell must be of the same version to read the file). With QUERY, print its "
        "result; without, open a prompt (statements end with ';', .help, .quit).",
    )
    sql.add_argument("query", nargs="?", help='SQL statements, e.g. "SELECT * FROM current_segments"')
    sql.add_argument("--config", "-c", help="TOML configuration file (for output.database)")
    sql.add_argument("--database", help="results DuckDB file (default output/segments.duckdb)")
    sql.add_argument("--csv", action="store_true", help="print every row as CSV instead of a table")
    name.add_argument("segment_id", type=int, help="the segment id, e.g. 3")
    name.add_argument("name", nargs="?", help="the name, e.g. 'Loyal big spenders'")
    name.add_argument("--clear", action="store_true", help="remove the segment's name")
    name.add_argument("--config", "-c", help="TOML configuration file (for output.database)")
    name.add_argument("--database", help="results DuckDB file (default output/segments.duckdb)")
    trigger.add_argument("--deployment", choices=["manual", "nightly"], default="manual")
    trigger.add_argument("--wait", action="store_true", help="follow the run to its final state")
    trigger.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    return parser


def flow_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The flow parameters given on the command line (options left out are not passed)."""
    params = {}
    for name, field in RunParameters.model_fields.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        kind = typing.get_origin(value_type(field))
        if kind is dict:
            value = _pairs(value, _flags(name)[0], allow_empty=param_of(name).allow_empty)
        elif kind is list:
            value = _csv(value)
        if value is not None:
            params[name] = value
    return params


def format_summary(summary: dict[str, Any]) -> str:
    """What ``segment run`` prints at the end."""
    lines = [
        "",
        f"Run {summary['run_id']}: {summary['n_components']} segments, "
        f"{summary['covariance_type']} covariance "
        f"(chosen by {summary['criterion'].upper()} = {summary['criterion_value']:.1f})",
        f"  rows loaded {summary['rows_loaded']:,}, rejected {summary['rows_rejected']:,}; "
        f"customers segmented {summary['customers']:,}"
        + (f"; as of {summary['as_of']}" if summary["as_of"] else ""),
    ]
    lines += [f"    rejected: {reason}" for reason in summary.get("reject_reasons") or []]
    if summary.get("customers_with_gaps"):
        lines.append(
            f"    {summary['customers_with_gaps']:,} of them with blank features, segmented on the "
            "features they have (assignments.missing_features)"
        )
    lines += ["  segment  customers  share of customers"]
    for s in summary["segment_sizes"]:
        lines.append(f"  {s['segment_id']:>7}  {s['customers']:>9,}  {s['share']:>18.1%}")
    if summary.get("decision_note"):
        lines.append(
            textwrap.fill(summary["decision_note"], width=100, initial_indent="  ", subsequent_indent="  ")
        )
    if summary.get("grid_note"):
        lines.append(f"  Grid: {summary['grid_note']}.")
    if summary.get("moved_share") is not None:
        held = summary.get("held_customers")
        kept = f"; {held:,} held in their segment (tracking.hold_odds)" if held else ""
        moved = (
            f"Since run {summary['previous_run_id']}: {summary['moved_share']:.1%} of the customers in both "
            f"runs changed segment{kept}."
        )
        lines.append(textwrap.fill(moved, width=100, initial_indent="  ", subsequent_indent="  "))
    lines += [f"Database: {summary['database']}", f"Report:   {summary['report']}"]
    return "\n".join(lines)


def _extra_parameters(values: list[str] | None) -> dict[str, Any]:
    """``--param NAME=VALUE`` pairs, values decoded as JSON where they parse."""
    known = set(RunParameters.model_fields)
    out: dict[str, Any] = {}
    for name, raw in (_pairs(values, "--param") or {}).items():
        if name not in known:
            raise ConfigError(
                f"--param {name}: not a parameter of the flow (known: {', '.join(sorted(known))})"
            )
        try:
            out[name] = json.loads(raw)
        except json.JSONDecodeError:
            out[name] = raw
    return out


def _error(exc: BaseException, debug: bool) -> str:
    """The final ``segment: error:`` line; with ``--debug`` the traceback is printed before it."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    return f"segment: error: {_one_line(exc)}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    if _unreachable(exc):
        url = os.environ.get("PREFECT_API_URL") or "the temporary local server"
        return (
            f"the Prefect server ({url}) is unreachable: {line}; the results database's runs table "
            "says how far the run got"
        )
    return line


def _unreachable(exc: BaseException) -> bool:
    """Whether an error is the Prefect API not answering (connection refused, timed out)."""
    import httpx

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (httpx.ConnectError, httpx.ConnectTimeout, ConnectionRefusedError)):
            return True
        # ``raise ... from None`` says the context is not the story (a dask scheduler that
        # refused the connection is not the Prefect API).
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return False


def _serve(args: argparse.Namespace) -> int:
    from flows import serve

    params = flow_parameters(args)
    settings = RunParameters.given(params, "command line").settings(
        "command line", extra={"schedule": {"cron": args.cron, "timezone": args.timezone}}
    )
    serve.api_url()
    # Runs execute in another folder (below), so the outputs are pinned to absolute paths now:
    # the ones the configuration resolves to from here, where `segment name` and analysts look.
    params = {**params, "database": settings.output.database, "reports_dir": settings.output.reports}
    deployments = serve.build_deployments(settings, serve.absolute_parameters(params))
    # Prefect starts each flow run as `python -m prefect.engine` in this process's folder, which
    # then comes first on sys.path: a folder there named like one of our packages (an output
    # `reports/`, say) would shadow it. The folder holding the installed packages cannot.
    os.chdir(serve.package_root())
    # The runs start in their own processes, which inherit main()'s logging environment
    # (flows/console.py): without --debug their console lines leave out tracebacks.
    print(
        f"Serving {serve.FLOW_NAME}/{serve.NIGHTLY} "
        f"({settings.schedule.cron}, {settings.schedule.timezone}) and "
        f"{serve.FLOW_NAME}/{serve.MANUAL} on {serve.api_url()}; stop with Ctrl-C.",
        flush=True,
    )
    serve.serve_forever(deployments)
    return 0


def _trigger(args: argparse.Namespace) -> int:
    from flows import serve

    serve.api_url()
    params = serve.absolute_parameters({**flow_parameters(args), **_extra_parameters(args.param)})
    # Reject bad parameters here, before a run exists: the deployment's defaults plus these.
    merged = {**serve.deployment_defaults(args.deployment), **params}
    RunParameters.given(merged, "command line").settings("command line")
    run = serve.start_run(args.deployment, params)
    print(f"Flow run {run.id} ({run.name}) of {serve.FLOW_NAME}/{args.deployment}")
    print(f"  {serve.ui_link(run.id)}", flush=True)
    if not args.wait:
        return 0
    final = serve.wait_for(
        run.id, timeout=args.timeout, on_state=lambda name: print(f"  state: {name}", flush=True)
    )
    state = final.state
    if state is not None and state.type.value == "COMPLETED":
        return 0
    message = (state.message or "").strip() if state is not None else ""
    what = state.name if state is not None else "no state"
    if args.timeout is not None and (state is None or state.type.value not in serve.FINAL_STATES):
        print(f"segment: error: run {run.id} still {what} after {args.timeout:g} s", file=sys.stderr)
    else:
        print(
            f"segment: error: run {run.id} ended {what}" + (f": {message}" if message else ""),
            file=sys.stderr,
        )
    return 1


def _sql(args: argparse.Namespace) -> int:
    import duckdb

    from flows import sql_shell
    from flows.config import load_settings

    overrides = {"output": {"database": args.database}} if args.database else None
    database = load_settings(args.config, overrides, overrides_source="command line").output.database
    try:
        if args.query is not None:
            sql_shell.query(database, args.query, csv=args.csv)
            return 0
        return sql_shell.shell(database)
    except duckdb.Error as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _name(args: argparse.Namespace) -> int:
    from flows.runlock import database_lock
    from flows.store import name_segment

    if args.clear == (args.name is not None):
        raise ConfigError("give a NAME, or --clear to remove the name")
    settings = RunParameters(config_path=args.config, database=args.database).settings("command line")
    database = settings.output.database
    if not Path(database).exists():
        raise ConfigError(f"{database}: no results database yet; run `segment run` first")
    with database_lock(
        database,
        settings.output.lock_wait_minutes * 60,
        label="segment name",
        on_wait=lambda holder: print(f"waiting for {holder} ...", file=sys.stderr, flush=True),
    ):
        name_segment(
            database,
            args.segment_id,
            None if args.clear else args.name.strip(),
            writer_wait_seconds=settings.output.writer_wait_minutes * 60,
            notify=lambda line: print(line, file=sys.stderr, flush=True),
        )
    what = "name removed" if args.clear else f"named {args.name.strip()!r}"
    print(f"segment {args.segment_id}: {what} in {Path(database).resolve()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segment`` console script."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary local server can take longer than Prefect's 20 s default on a busy small machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    debug = bool(getattr(args, "debug", False))
    if args.command == "sql":  # no Prefect: an analyst's query answers at once
        try:
            return _sql(args)
        except ConfigError as exc:
            print(_error(exc, debug), file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    # Before Prefect is imported: it configures logging on import (an inherited setting of a
    # served run must not hide the tracebacks --debug asks for).
    configure_console(debug=debug, one_failure_line=args.command == "run")
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "trigger":
            return _trigger(args)
        if args.command == "name":
            return _name(args)
        params = flow_parameters(args)
        # Check the configuration before Prefect starts, so a typo fails in a second with one line.
        from flows.store import StoreFileError, results_path

        settings = RunParameters.given(params, "command line").settings("command line")
        try:
            results_path(settings.output.database)
        except StoreFileError as exc:
            raise ConfigError(str(exc)) from None
    except ConfigError as exc:
        print(_error(exc, debug), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # e.g. the server refused a run: one line, not a traceback
        print(_error(exc, debug), file=sys.stderr)
        return 1
    from flows.pipeline import segment_customers

    try:
        summary = segment_customers(**params, trigger="cli")
    except Exception as exc:  # the flow has logged the details; end with one clear line
        print(_error(exc, debug), file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
