"""Deployments on a real Prefect server: the nightly schedule, manual re-segmentation, triggers.

``segment serve`` registers two deployments of the ``segment-customers`` flow and runs them from
this process (Prefect's ``serve``): ``nightly``, on a cron schedule, and ``manual``, without one,
for re-segmenting by hand with other parameters. ``segment trigger`` starts a run of a served
deployment. Both talk to the server at ``PREFECT_API_URL``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flows.config import ConfigError, Settings
from flows.parameters import RunParameters, param_of

FLOW_NAME = "segment-customers"
NIGHTLY = "nightly"
MANUAL = "manual"
FINAL_STATES = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def api_url() -> str:
    """The configured Prefect server, or a ConfigError saying how to configure one."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError(
            "no Prefect server configured: start one with `prefect server start` and set "
            "PREFECT_API_URL=http://127.0.0.1:4200/api (see docs/operations.md, 'Nightly runs')"
        )
    return url


def absolute_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """Deployment parameters with file paths made absolute, so runs do not depend on a working folder."""
    out = dict(parameters)
    for key in RunParameters.model_fields:
        if param_of(key).path and out.get(key):
            out[key] = str(Path(out[key]).resolve())
    return out


def build_deployments(settings: Settings, parameters: dict[str, Any]) -> list:
    """The ``nightly`` and ``manual`` deployments, with ``parameters`` as their defaults."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from flows.pipeline import segment_customers

    # Runs of one deployment queue in Prefect (visible as AwaitingConcurrencySlot); runs of the two
    # deployments are kept apart by the database run lock inside the flow (flows/runlock.py).
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    common: dict[str, Any] = dict(
        parameters=parameters,
        concurrency_limit=one_at_a_time,
        # The module path works from any working folder, as the package is installed.
        entrypoint_type=EntrypointType.MODULE_PATH,
        tags=["segmentation"],
    )
    nightly = segment_customers.to_deployment(
        NIGHTLY,
        schedules=[Cron(settings.schedule.cron, timezone=settings.schedule.timezone)],
        # Re-registering must re-activate a schedule someone paused by stopping the server.
        paused=False,
        description=f"Nightly segmentation ({settings.schedule.cron}, {settings.schedule.timezone}).",
        **common,
    )
    manual = segment_customers.to_deployment(
        MANUAL,
        description="Re-segmentation by hand: `segment trigger --k-max 5 ...` or the Prefect UI.",
        **common,
    )
    return [nightly, manual]


def serve_forever(deployments: list) -> None:
    """Register the deployments and execute their runs until interrupted.

    ``pause_on_shutdown=False``: Prefect's default pauses every schedule when the serving process
    stops, so a restart of the service would silently end the nightly runs (Prefect issue 16363).
    """
    from prefect import serve

    serve(*deployments, pause_on_shutdown=False)


def package_root() -> Path:
    """The folder that holds the installed ``flows``, ``reports``, ``schemas`` and ``gmm_engine``."""
    return Path(__file__).resolve().parent.parent


def ui_link(flow_run_id: Any) -> str:
    """The Prefect UI page of a flow run."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value() or api_url().removesuffix("/api")
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}"


def deployment_defaults(deployment: str) -> dict[str, Any]:
    """Default parameters of a served deployment (read from the server)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(f"{FLOW_NAME}/{deployment}")
        except Exception as exc:
            raise ConfigError(
                f"deployment {FLOW_NAME}/{deployment} not found on {api_url()}: is `segment serve` "
                f"running against this server? ({type(exc).__name__})"
            ) from None
    return dict(found.parameters or {})


def start_run(deployment: str, parameters: dict[str, Any]):
    """Create a flow run of the deployment now; return it (its state is Scheduled)."""
    from prefect.deployments import run_deployment

    return run_deployment(f"{FLOW_NAME}/{deployment}", parameters=parameters, timeout=0)


def wait_for(flow_run_id: Any, timeout: float | None = None, poll_seconds: float = 2.0, on_state=None):
    """Poll a flow run until it reaches a final state (or ``timeout`` seconds pass); return it."""
    from prefect.client.orchestration import get_client

    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            state = run.state.type.value if run.state else "PENDING"
            name = run.state.name if run.state else state
            if on_state is not None and name != last:
                on_state(name)
                last = name
            if state in FINAL_STATES:
                return run
            if deadline is not None and time.monotonic() > deadline:
                return run
            time.sleep(poll_seconds)
