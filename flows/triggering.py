"""Start a run of a deployed pipeline from Python, optionally wait for it: `flows.trigger(...)`.

    from flows import trigger

    run = trigger(
        "batch-pipeline/on-demand",
        parameters={"source": {"path": "/data/items.csv"}, "pipeline": "catalogue"},
        timeout=3600,
    )
    print(run.flow_run_id, run.state_name, run.message)

The run is created through the Prefect API named by `PREFECT_API_URL` with
`prefect.deployments.run_deployment` (its async form, `arun_deployment`), as the UI's Run
button creates one: the server checks the parameters against the deployment's schema first,
and parameters left out take the deployment's defaults (top-level names only: a `scaling`
passed in replaces the default one whole).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_core import to_jsonable_python

from flows.models import DEFAULT_DEPLOYMENT

__all__ = ["DEFAULT_DEPLOYMENT", "ParametersRefused", "TriggeredRun", "atrigger", "trigger"]


class ParametersRefused(ValueError):
    """The server refused a run's parameters (HTTP 409): the message names the field."""


class TriggeredRun(BaseModel):
    """A flow run started by `trigger`, and the state it was in when `trigger` returned."""

    model_config = ConfigDict(frozen=True)

    flow_run_id: UUID
    flow_run_name: str
    deployment: str = Field(description="The deployment as it was named to `trigger`.")
    state_type: str = Field(description="SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, CRASHED, ...")
    state_name: str = Field(description="The state's display name, e.g. Completed or Late.")
    message: str | None = Field(default=None, description="Why the run ended so, for a failed run.")

    @property
    def is_final(self) -> bool:
        """True once the run has ended (completed, failed, crashed or cancelled)."""
        return self.state_type in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}

    @property
    def completed(self) -> bool:
        return self.state_type == "COMPLETED"


def _plain(value: Any) -> Any:
    # A SecretStr would be sent as "**********"; the caller chose to pass the secret.
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return to_jsonable_python(value)


async def atrigger(
    deployment: str | UUID = DEFAULT_DEPLOYMENT,
    parameters: Mapping[str, Any] | None = None,
    *,
    wait: bool = True,
    timeout: float | None = None,
    poll_interval: float = 1.0,
    flow_run_name: str | None = None,
    tags: Iterable[str] | None = None,
) -> TriggeredRun:
    """The async form of `trigger`, for code that already runs an event loop."""
    if timeout is not None and timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout}")
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
    from prefect import get_client
    from prefect.deployments import arun_deployment
    from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError

    plain = {name: _plain(value) for name, value in (parameters or {}).items()}
    try:
        # Our own client, closed on the way out: a client that run_deployment makes for
        # itself is never closed and leaves its connections to the garbage collector.
        async with get_client() as client:
            flow_run = await arun_deployment(
                name=deployment,
                client=client,
                parameters=plain,
                timeout=timeout if wait else 0,
                poll_interval=poll_interval,
                flow_run_name=flow_run_name,
                tags=tags,
            )
    except ObjectNotFound:
        raise LookupError(f"no deployment {str(deployment)!r} on the Prefect API") from None
    except PrefectHTTPStatusError as error:
        if error.response.status_code == 409:
            detail = error.response.json().get("detail", error.response.text)
            raise ParametersRefused(f"deployment {str(deployment)!r} refused the parameters: {detail}") from None
        raise
    state = flow_run.state
    return TriggeredRun(
        flow_run_id=flow_run.id,
        flow_run_name=flow_run.name,
        deployment=str(deployment),
        state_type=state.type.value if state else "SCHEDULED",
        state_name=state.name if state else "Scheduled",
        message=state.message if state else None,
    )


def trigger(
    deployment: str | UUID = DEFAULT_DEPLOYMENT,
    parameters: Mapping[str, Any] | None = None,
    *,
    wait: bool = True,
    timeout: float | None = None,
    poll_interval: float = 1.0,
    flow_run_name: str | None = None,
    tags: Iterable[str] | None = None,
) -> TriggeredRun:
    """Start a run of `deployment`, wait for it unless `wait=False`, and return its id and state.

    Args:
        deployment: `"flow name/deployment name"` or the deployment's id.
        parameters: the run's parameters; pydantic models (`ItemSource`, `ScalingConfig`,
            `ExecutionOptions`) and plain dicts both work. Left-out names take the
            deployment's defaults.
        wait: wait until the run ends (or `timeout` passes); False returns once it exists.
        timeout: seconds to wait at most; None waits as long as the run takes. A run
            still going when the timeout passes is returned with `is_final` False.
        poll_interval: seconds between two reads of the run's state while waiting.
        flow_run_name: a name for the run (the pipeline name by default).
        tags: tags of the run.

    Raises:
        ParametersRefused: the server refused the parameters (its message names the field).
        LookupError: no deployment of that name.

    Example:
        >>> run = trigger(parameters={"source": {"path": "/data/items.csv"}}, timeout=600)
        >>> run.completed, run.flow_run_id
        (True, UUID('...'))
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("trigger() was called inside a running event loop; use `await atrigger(...)`")
    return asyncio.run(
        atrigger(
            deployment,
            parameters,
            wait=wait,
            timeout=timeout,
            poll_interval=poll_interval,
            flow_run_name=flow_run_name,
            tags=tags,
        )
    )
