"""config/prepared.py: a query compiled once gives what the ORM gives, for any value."""

from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection, connections, transaction
from django.db.models import Count
from django.test.utils import CaptureQueriesContext

from config.prepared import PreparedQuery
from runs.models import Run, Step
from tests.conftest import make_user

TWO_STEPS = """
slug: two
name: Two
params:
  - {name: n, type: integer, default: 0}
steps:
  - {id: a, shell: "true"}
  - {id: b, shell: "true"}
"""


def runs_with_related(number):
    return Run.objects.select_related("runbook", "version", "created_by").filter(pk=number)


def shown(run: Run) -> tuple:
    return (
        run.pk,
        run.title,
        run.status,
        run.params,
        run.created_at,
        run.runbook.slug,
        run.version.number,
        run.created_by and run.created_by.username,
    )


@pytest.fixture
def runs(make_runbook, start_run) -> list[Run]:
    runbook = make_runbook(TWO_STEPS)
    return [
        start_run(runbook, make_user("ann"), params={"n": 1}, title="first"),
        start_run(runbook, None, title="second"),
    ]


def test_rows_and_related_objects_are_what_the_orm_makes(runs):
    prepared = PreparedQuery(runs_with_related, probe=-1)
    for run in runs:
        (got,) = prepared(run.pk)
        (want,) = runs_with_related(run.pk)
        assert shown(got) == shown(want)
    assert prepared(runs[-1].pk + 1000) == []


def test_the_sql_is_compiled_once_and_run_with_each_value(runs):
    prepared = PreparedQuery(runs_with_related, probe=-1)
    with CaptureQueriesContext(connection) as queries:
        first = prepared(runs[0].pk)
        compiled = prepared.local.states[None]
        second = prepared(runs[1].pk)
    assert prepared.local.states[None] is compiled
    assert [first[0].title, second[0].title] == ["first", "second"]
    assert len(queries) == 2  # one query a call, no other


def test_values_lists_with_aggregates_work_too(runs):
    def counts(run_id):
        steps = Step.objects.filter(run_id=run_id).values_list("run_id", "status")
        return steps.annotate(n=Count("id")).order_by()

    prepared = PreparedQuery(counts, probe=-1)
    for run in runs:
        assert (
            sorted(prepared(run.pk))
            == sorted(counts(run.pk))
            == [
                (run.pk, "pending", 1),
                (run.pk, "queued", 1),
            ]
        )


def test_a_list_of_values_is_compiled_once_per_length(runs):
    prepared = PreparedQuery(lambda numbers: Run.objects.filter(pk__in=numbers), probe=-1)
    first, second = (run.pk for run in runs)
    assert [run.title for run in prepared([second])] == ["second"]
    assert sorted(run.title for run in prepared([first, second])) == ["first", "second"]
    assert sorted(run.title for run in prepared([second, second + 1000])) == ["second"]
    assert [run.title for run in prepared([first])] == ["first"]
    assert sorted(prepared.local.states) == [1, 2]
    with pytest.raises(TypeError, match="expected int"):
        prepared([first, str(second)])


def test_a_value_is_a_parameter_never_sql(runs):
    prepared = PreparedQuery(lambda title: Run.objects.filter(title=title), probe="probe")
    assert prepared("first' OR '1'='1") == []
    assert [run.pk for run in prepared("second")] == [runs[1].pk]


def test_a_value_of_another_type_is_refused(runs):
    prepared = PreparedQuery(runs_with_related, probe=-1)
    with pytest.raises(TypeError, match="expected int"):
        prepared(str(runs[0].pk))


@pytest.mark.parametrize(
    "build",
    [
        lambda number: Run.objects.filter(pk=7),  # the probe is not in the query
        lambda number: Run.objects.filter(pk=number) | Run.objects.filter(retried_from=number),
    ],
)
def test_a_probe_that_is_not_exactly_one_parameter_is_refused(db, build):
    with pytest.raises(ValueError, match="probe"):
        PreparedQuery(build, probe=-1)(5)


@pytest.mark.django_db(transaction=True)
def test_each_thread_compiles_its_own(make_runbook, start_run):
    runbook = make_runbook(TWO_STEPS)
    numbers = [start_run(runbook, title=f"run {i}").pk for i in range(4)]
    prepared = PreparedQuery(lambda number: Run.objects.filter(pk=number), probe=-1)

    def titles(offset: int) -> list[str]:
        try:
            return [prepared(numbers[(offset + i) % 4])[0].title for i in range(20)]
        finally:
            connection.close()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(titles, range(4)))
    for offset, got in enumerate(results):
        assert got == [f"run {(offset + i) % 4}" for i in range(20)]


def test_a_thread_whose_connection_changed_runs_on_its_new_one(transactional_db, make_runbook):
    # asgiref keeps Django's connections per context, so one thread can move to another
    # connection object; a compiler kept from the old one would not see the new one's writes.
    runbook = make_runbook(TWO_STEPS)
    prepared = PreparedQuery(lambda title: Run.objects.filter(title=title), probe="probe")
    assert prepared("unseen") == []
    old = connections["default"]
    new = connections.create_connection("default")
    connections["default"] = new
    try:
        with transaction.atomic():
            Run.objects.create(runbook=runbook, version=runbook.latest_version, title="unseen")
            assert [run.title for run in prepared("unseen")] == ["unseen"]
            assert prepared.local.states[None][1].connection is new
    finally:
        connections["default"] = old
        new.close()
