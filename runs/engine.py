"""Decides what happens next in a run: which steps start, which are skipped, which groups end.

Pure: it works on `Node`s (a snapshot of the run's step rows) and returns `Decision`s, which
`runs.services.run_advance` applies with compare-and-swap transitions. Keeping the rules free
of the database keeps them easy to read and to test exhaustively.

Rules (DESIGN.md section 3):
- The run's top-level steps form a sequential group.
- A sequential group starts its children one at a time, in order; a parallel group starts all.
- A pending step whose `if` is false is skipped (a skipped group skips its whole subtree).
- A child that ended failed or timed out, without `continue_on_error`, stops its group: no
  further children start, running ones finish, then the group fails and the children that
  never started are skipped. (In a parallel group, children queued that no worker has taken
  yet are skipped before the plan: `runs.services.advance._skip_unstarted_after_failure`.)
- A group past its own `timeout` is ended `timed_out` before planning
  (`runs.services.advance`); here it is a failed child like any other.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from runs.state import STEP_ACTIVE, STEP_FAILED, STEP_TERMINAL, StepStatus


@dataclass
class Node:
    pk: int
    key: str
    kind: str
    status: str
    condition: str | None = None
    continue_on_error: bool = False
    parallel: bool = False
    error: str = ""
    children: list["Node"] = field(default_factory=list)

    @property
    def is_group(self) -> bool:
        return self.kind == "group"

    @property
    def blocks(self) -> bool:
        """Whether this step's outcome stops its group."""
        return self.status in STEP_FAILED and not self.continue_on_error


@dataclass(frozen=True)
class Decision:
    pk: int
    status: str  # the status to move the step to
    reason: str = ""


@dataclass(frozen=True)
class Outcome:
    """What the engine concluded about the run as a whole."""

    decisions: list[Decision]
    finished: bool  # nothing is active and nothing more will start
    failed_step: Node | None  # the step whose failure failed the run


# Returns True/False for an `if:` expression, or raises with a message for the step's log.
ConditionFn = Callable[[Node], bool]


class _Planner:
    def __init__(self, condition_holds: ConditionFn) -> None:
        self.condition_holds = condition_holds
        self.decisions: list[Decision] = []

    def decide(self, node: Node, status: str, reason: str = "") -> None:
        node.status = status
        node.error = reason or node.error
        self.decisions.append(Decision(node.pk, status, reason))

    def skip_subtree(self, node: Node, reason: str) -> None:
        self.decide(node, StepStatus.SKIPPED, reason)
        for child in node.children:
            if child.status == StepStatus.PENDING:
                self.skip_subtree(child, reason)

    def start(self, node: Node) -> None:
        """Starts a pending node if its condition holds."""
        if node.condition:
            try:
                holds = self.condition_holds(node)
            except Exception as error:
                self.decide(node, StepStatus.FAILED, f"`if` failed: {error}")
                return
            if not holds:
                self.skip_subtree(node, f"`if` was false: {node.condition}")
                return
        if node.is_group:
            self.decide(node, StepStatus.RUNNING)
            self.walk(node)
        else:
            self.decide(node, StepStatus.QUEUED)

    def visit(self, node: Node) -> None:
        if node.status == StepStatus.PENDING:
            self.start(node)
        elif node.is_group and node.status == StepStatus.RUNNING:
            self.walk(node)

    def walk(self, group: Node) -> None:
        """Starts what is ready inside a running group and ends the group when it is done."""
        # Only visiting a child changes its status, so one scan up front and a check after
        # each visit keep this linear in the group's width.
        stopped = any(child.blocks for child in group.children)
        for child in group.children:
            if stopped:
                # Stopped by a failure: start nothing new, but let running subgroups go on.
                if child.is_group and child.status == StepStatus.RUNNING:
                    self.walk(child)
                continue
            self.visit(child)
            stopped = child.blocks
            if not group.parallel and child.status not in STEP_TERMINAL:
                break
        self.maybe_finish(group)

    def maybe_finish(self, group: Node) -> None:
        if any(child.status in STEP_ACTIVE for child in group.children):
            return
        failed = next((child for child in group.children if child.blocks), None)
        if failed is None and any(c.status == StepStatus.PENDING for c in group.children):
            return
        for child in group.children:
            if child.status == StepStatus.PENDING:
                self.skip_subtree(child, "not run: an earlier step failed")
        if group.pk == ROOT:
            group.status = StepStatus.FAILED if failed else StepStatus.SUCCEEDED
            return
        if failed:
            self.decide(group, StepStatus.FAILED, f"step {failed.key} {failed.status}")
        else:
            self.decide(group, StepStatus.SUCCEEDED)


ROOT = 0


def plan(top_level: list[Node], condition_holds: ConditionFn) -> Outcome:
    """Plans the next moves of a run whose top-level steps are `top_level`."""
    root = Node(pk=ROOT, key="", kind="group", status=StepStatus.RUNNING, children=top_level)
    planner = _Planner(condition_holds)
    planner.walk(root)
    finished = root.status in STEP_TERMINAL
    return Outcome(
        decisions=planner.decisions,
        finished=finished,
        failed_step=_first_blocking_leaf(root) if root.status == StepStatus.FAILED else None,
    )


def _first_blocking_leaf(group: Node) -> Node | None:
    for child in group.children:
        if child.blocks:
            # A group that timed out is the cause itself, whatever that stopped inside it.
            if child.is_group and child.status != StepStatus.TIMED_OUT:
                return _first_blocking_leaf(child) or child
            return child
    return None


def cancel_plan(top_level: list[Node]) -> list[Decision]:
    """Cancels everything that has not started; running steps are stopped by their workers."""
    decisions: list[Decision] = []

    def visit(node: Node) -> None:
        # Pending and queued steps never started; an open approval holds nothing to stop.
        if node.status in (StepStatus.PENDING, StepStatus.QUEUED) or (
            node.kind == "approval" and node.status == StepStatus.WAITING
        ):
            decisions.append(Decision(node.pk, StepStatus.CANCELLED, "run cancelled"))
            node.status = StepStatus.CANCELLED
        for child in node.children:
            visit(child)

    for node in top_level:
        visit(node)
    return decisions


def close_groups(top_level: list[Node], status: str, reason: str) -> list[Decision]:
    """Ends running groups whose children are all done, once a run stops early."""
    decisions: list[Decision] = []

    def visit(node: Node) -> None:
        for child in node.children:
            visit(child)
        if (
            node.is_group
            and node.status == StepStatus.RUNNING
            and all(child.status in STEP_TERMINAL for child in node.children)
        ):
            node.status = status
            decisions.append(Decision(node.pk, status, reason))

    for node in top_level:
        visit(node)
    return decisions
