"""HTTP steps, with httpx. Template values in the URL are percent-encoded."""

import contextlib
import json
import threading
import time
from typing import Any

import httpx

from runs import templating
from runs.models import Step
from runs.services import StepResult
from runs.state import StepStatus

MAX_BODY = 1024 * 1024  # bytes of a response body kept in outputs


def _request(spec: Any, context: dict[str, Any]) -> dict[str, Any]:
    http = spec.http
    url = httpx.URL(templating.render(http.url, context, mode="url"))
    if http.query:
        # Added to the URL's own query string. (httpx's `params=` would replace it, even empty.)
        url = url.copy_merge_params(
            {k: templating.render(v, context) for k, v in http.query.items()}
        )
    request: dict[str, Any] = {
        "method": http.method,
        "url": str(url),
        "headers": {k: templating.render(v, context) for k, v in http.headers.items()},
    }
    if http.json_ is not None:
        request["json"] = templating.render_value(http.json_, context)
    elif http.body is not None:
        request["content"] = templating.render(http.body, context).encode()
    return request


def execute(*, step: Step, spec: Any, context: dict[str, Any], supervisor: Any) -> StepResult:
    request = _request(spec, context)
    remaining = supervisor.remaining()
    timeout = min(spec.http.timeout, remaining) if remaining is not None else spec.http.timeout
    supervisor.log.system(f"{request['method']} {request['url']}")
    outcome: dict[str, Any] = {}

    # The request runs in a thread so that the worker keeps renewing its lease and notices a
    # cancel while a slow server holds the connection open.
    def send() -> None:
        try:
            client = httpx.Client(follow_redirects=spec.http.follow_redirects, timeout=timeout)
            with client, client.stream(**request) as response:
                outcome["response"] = response
                outcome["body"] = _read_body(response)
        except Exception as error:
            outcome["error"] = error

    started = time.monotonic()
    thread = threading.Thread(target=send, daemon=True, name=f"http-{step.pk}")
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
        if supervisor.should_stop():
            return StepResult.stopped()
        if supervisor.deadline is not None and time.monotonic() >= supervisor.deadline:
            return StepResult(status=StepStatus.TIMED_OUT, error=supervisor.deadline_reason)
    elapsed = int((time.monotonic() - started) * 1000)
    error = outcome.get("error")
    if isinstance(error, httpx.TimeoutException):
        return StepResult(
            status=StepStatus.TIMED_OUT, error=f"request timed out after {timeout:g}s"
        )
    if error is not None:
        return StepResult(status=StepStatus.FAILED, error=f"request failed: {error}")
    response: httpx.Response = outcome["response"]
    supervisor.log.system(f"{response.status_code} {response.reason_phrase} in {elapsed} ms")
    outputs = _outputs(response, outcome["body"])
    if not spec.http.accepts(response.status_code):
        expected = spec.http.expect
        wanted = ", ".join(map(str, expected)) if expected else "2xx"
        return StepResult(
            status=StepStatus.FAILED,
            outputs=outputs,
            error=f"HTTP {response.status_code}, expected {wanted}",
        )
    return StepResult(status=StepStatus.SUCCEEDED, outputs=outputs)


def _read_body(response: httpx.Response) -> bytes:
    """At most MAX_BODY bytes of the body: the rest is never read, so a huge or endless
    response cannot fill the worker's memory."""
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= MAX_BODY:
            break
    return b"".join(chunks)[:MAX_BODY]


def _outputs(response: httpx.Response, content: bytes) -> dict[str, Any]:
    body = content.decode(response.encoding or "utf-8", errors="replace")
    outputs: dict[str, Any] = {
        "status": response.status_code,
        "headers": dict(response.headers),
        "body": body,
    }
    if "json" in response.headers.get("content-type", "") or body[:1] in ("{", "["):
        with contextlib.suppress(ValueError):
            outputs["json"] = json.loads(body)
    return outputs
