"""django-q2 entry points: thin, take ids, call the runner."""

from django_q.tasks import async_task

from runs import runner


def work(run_pk: int, step_pk: int | None = None) -> int:
    return runner.work(run_pk, step_pk)


def wake(run_pk: int, step_pk: int) -> None:
    """Sends a worker to run the step (or whatever else of that run is ready)."""
    async_task(work, run_pk, step_pk, task_name=f"run-{run_pk}-step-{step_pk}")
