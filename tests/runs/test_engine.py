"""The pure planner: what starts, what is skipped, when groups and runs end."""

from runs.engine import Node, cancel_plan, close_groups, plan
from runs.state import StepStatus as S

_next_pk = iter(range(1, 10_000))


def leaf(key: str, status: str = S.PENDING, **kwargs) -> Node:
    return Node(pk=next(_next_pk), key=key, kind="shell", status=status, **kwargs)


def group(key: str, children: list[Node], status: str = S.PENDING, **kwargs) -> Node:
    return Node(
        pk=next(_next_pk), key=key, kind="group", status=status, children=children, **kwargs
    )


def always(node: Node) -> bool:
    return True


def moves(outcome) -> dict[int, str]:
    return {d.pk: d.status for d in outcome.decisions}


def test_sequential_run_starts_only_the_first_step():
    a, b = leaf("a"), leaf("b")
    outcome = plan([a, b], always)
    assert moves(outcome) == {a.pk: S.QUEUED}
    assert not outcome.finished


def test_next_step_starts_when_the_previous_succeeded():
    a, b = leaf("a", S.SUCCEEDED), leaf("b")
    assert moves(plan([a, b], always)) == {b.pk: S.QUEUED}


def test_run_finishes_when_every_step_succeeded():
    outcome = plan([leaf("a", S.SUCCEEDED), leaf("b", S.SKIPPED)], always)
    assert outcome.finished and outcome.failed_step is None and outcome.decisions == []


def test_failure_stops_the_run_and_skips_the_rest():
    a, b, c = leaf("a", S.FAILED), leaf("b"), leaf("c")
    outcome = plan([a, b, c], always)
    assert moves(outcome) == {b.pk: S.SKIPPED, c.pk: S.SKIPPED}
    assert outcome.finished and outcome.failed_step is a


def test_timed_out_step_fails_the_run_too():
    a = leaf("a", S.TIMED_OUT)
    outcome = plan([a, leaf("b")], always)
    assert outcome.finished and outcome.failed_step is a


def test_continue_on_error_lets_the_run_go_on():
    a, b = leaf("a", S.FAILED, continue_on_error=True), leaf("b")
    outcome = plan([a, b], always)
    assert moves(outcome) == {b.pk: S.QUEUED}


def test_false_condition_skips_and_moves_on():
    a, b = leaf("a", condition="false"), leaf("b")
    outcome = plan([a, b], lambda node: node.condition != "false")
    assert moves(outcome) == {a.pk: S.SKIPPED, b.pk: S.QUEUED}


def test_condition_that_raises_fails_the_step_with_the_error():
    def broken(node: Node) -> bool:
        raise ValueError("no such output")

    a, b = leaf("a", condition="steps.x.outputs.y"), leaf("b")
    outcome = plan([a, b], broken)
    assert moves(outcome) == {a.pk: S.FAILED, b.pk: S.SKIPPED}
    assert "no such output" in outcome.decisions[0].reason
    assert outcome.failed_step is a


def test_parallel_group_starts_every_child_at_once():
    x, y, z = leaf("x"), leaf("y"), leaf("z")
    g = group("g", [x, y, z], parallel=True)
    outcome = plan([g, leaf("after")], always)
    assert moves(outcome) == {g.pk: S.RUNNING, x.pk: S.QUEUED, y.pk: S.QUEUED, z.pk: S.QUEUED}


def test_sequential_group_runs_children_in_order():
    x, y = leaf("x"), leaf("y")
    g = group("g", [x, y])
    assert moves(plan([g], always)) == {g.pk: S.RUNNING, x.pk: S.QUEUED}


def test_parallel_group_waits_for_running_siblings_before_failing():
    x, y = leaf("x", S.FAILED), leaf("y", S.RUNNING)
    g = group("g", [x, y], S.RUNNING, parallel=True)
    after = leaf("after")
    outcome = plan([g, after], always)
    assert outcome.decisions == [] and not outcome.finished
    y.status = S.SUCCEEDED
    outcome = plan([g, after], always)
    assert moves(outcome) == {g.pk: S.FAILED, after.pk: S.SKIPPED}
    assert outcome.failed_step is x


def test_running_sibling_subgroup_finishes_after_a_failure_in_a_parallel_group():
    a1, a2 = leaf("a1", S.SUCCEEDED), leaf("a2")
    branch = group("branch", [a1, a2], S.RUNNING)
    bad = leaf("bad", S.FAILED)
    g = group("g", [branch, bad], S.RUNNING, parallel=True)
    assert moves(plan([g], always)) == {a2.pk: S.QUEUED}


def test_group_succeeds_when_children_are_done_and_next_step_starts():
    x, y = leaf("x", S.SUCCEEDED), leaf("y", S.FAILED, continue_on_error=True)
    g = group("g", [x, y], S.RUNNING, parallel=True)
    after = leaf("after")
    assert moves(plan([g, after], always)) == {g.pk: S.SUCCEEDED, after.pk: S.QUEUED}


def test_skipped_group_skips_its_whole_subtree():
    inner = leaf("inner")
    sub = group("sub", [inner])
    g = group("g", [sub], condition="false")
    outcome = plan([g], lambda node: False)
    assert moves(outcome) == {g.pk: S.SKIPPED, sub.pk: S.SKIPPED, inner.pk: S.SKIPPED}
    assert outcome.finished and outcome.failed_step is None


def test_failure_deep_in_nested_groups_names_the_leaf():
    bad = leaf("bad", S.FAILED)
    inner = group("inner", [bad], S.RUNNING)
    outer = group("outer", [inner], S.RUNNING)
    outcome = plan([outer], always)
    assert moves(outcome) == {inner.pk: S.FAILED, outer.pk: S.FAILED}
    assert outcome.failed_step is bad


def test_empty_of_work_run_with_every_step_skipped_succeeds():
    a = leaf("a", condition="false")
    outcome = plan([a], lambda node: False)
    assert outcome.finished and outcome.failed_step is None


def test_cancel_plan_cancels_pending_and_queued_but_not_running():
    a, b, c = leaf("a", S.RUNNING), leaf("b", S.QUEUED), leaf("c")
    g = group("g", [c])
    decisions = cancel_plan([a, b, g])
    assert {d.pk for d in decisions} == {b.pk, g.pk, c.pk}
    assert all(d.status == S.CANCELLED for d in decisions)


def test_close_groups_ends_running_groups_whose_children_are_done():
    x = leaf("x", S.CANCELLED)
    inner = group("inner", [x], S.RUNNING)
    outer = group("outer", [inner], S.RUNNING)
    decisions = close_groups([outer], S.CANCELLED, "run cancelled")
    assert [d.pk for d in decisions] == [inner.pk, outer.pk]
