"""WorkflowExecution and NodeExecution, their statuses, and the one table of allowed transitions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from orchestrator.domain import usage as tokens
from orchestrator.domain.errors import Conflict, IllegalTransition, NotFound
from orchestrator.domain.workflow import NodeType


class ExecutionStatus(StrEnum):
    """Status of a whole execution."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """COMPLETED, FAILED and CANCELLED are final."""
        return self in TERMINAL_EXECUTION


class NodeStatus(StrEnum):
    """Status of one node within an execution."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    WAITING_INPUT = "WAITING_INPUT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """True once the node will not change again."""
        return self in TERMINAL_NODE


TERMINAL_EXECUTION = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
)
ACTIVE_EXECUTION = frozenset({ExecutionStatus.PENDING, ExecutionStatus.RUNNING})
TERMINAL_NODE = frozenset(
    {NodeStatus.COMPLETED, NodeStatus.FAILED, NodeStatus.SKIPPED, NodeStatus.CANCELLED}
)

EXECUTION_TRANSITIONS: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    ExecutionStatus.PENDING: frozenset(
        {ExecutionStatus.RUNNING, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
    ),
    ExecutionStatus.RUNNING: frozenset(
        {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
    ),
    ExecutionStatus.COMPLETED: frozenset(),
    ExecutionStatus.FAILED: frozenset(),
    ExecutionStatus.CANCELLED: frozenset(),
}

# RUNNING -> RUNNING is a new attempt of the same node; WAITING_INPUT waits for a person.
NODE_TRANSITIONS: dict[NodeStatus, frozenset[NodeStatus]] = {
    NodeStatus.PENDING: frozenset({NodeStatus.RUNNING, NodeStatus.SKIPPED, NodeStatus.CANCELLED}),
    NodeStatus.RUNNING: frozenset(
        {
            NodeStatus.RUNNING,
            NodeStatus.WAITING_INPUT,
            NodeStatus.COMPLETED,
            NodeStatus.FAILED,
            NodeStatus.CANCELLED,
        }
    ),
    NodeStatus.WAITING_INPUT: frozenset(
        {NodeStatus.RUNNING, NodeStatus.COMPLETED, NodeStatus.FAILED, NodeStatus.CANCELLED}
    ),
    NodeStatus.COMPLETED: frozenset(),
    NodeStatus.FAILED: frozenset(),
    NodeStatus.SKIPPED: frozenset(),
    NodeStatus.CANCELLED: frozenset(),
}


def check_execution_transition(old: ExecutionStatus, new: ExecutionStatus) -> None:
    """Raise IllegalTransition unless `old -> new` is allowed."""
    if new not in EXECUTION_TRANSITIONS[old]:
        raise IllegalTransition(f"execution cannot go from {old} to {new}")


def check_node_transition(node_id: str, old: NodeStatus, new: NodeStatus) -> None:
    """Raise IllegalTransition unless `old -> new` is allowed for a node."""
    if new not in NODE_TRANSITIONS[old]:
        raise IllegalTransition(f"node {node_id} cannot go from {old} to {new}")


@dataclass(frozen=True)
class Attempt:
    """One call of a node; `error` is set when it failed; `usage` is the tokens it used, by
    model (reported while it runs, then as the agent's reply says)."""

    number: int
    started_at: dt.datetime
    completed_at: dt.datetime | None = None
    error: str | None = None
    usage: tokens.Usage | None = None


@dataclass
class LoopProgress:
    """The iterations of one loop execution: how many started, which are not done yet."""

    started: int
    open: set[int]


def node_key(node_id: str, iteration: tuple[int, ...] = ()) -> str:
    """The key of a node's execution: its id, and in a loop body `id@i` (`id@i.j` nested)."""
    if not iteration:
        return node_id
    return f"{node_id}@{'.'.join(map(str, iteration))}"


@dataclass
class NodeExecution:
    """The state of one node in one execution (in a loop body: in one iteration)."""

    node_id: str
    node_type: NodeType
    status: NodeStatus = NodeStatus.PENDING
    input: Any = None
    output: Any = None
    error: str | None = None
    retry_count: int = 0
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    attempts: list[Attempt] = field(default_factory=list)
    # Position in the order in which nodes finished; rebuilds the variables after a restart.
    finished_order: int | None = None
    # The ids of the outgoing edges taken when the node completed (None before it completes).
    routes: list[str] | None = None
    # The iteration indices of the enclosing loops, outermost first (empty outside loops).
    iteration: tuple[int, ...] = ()
    # What a control node keeps while it runs: a wait (`wait`: "input" or "child", and what
    # it waits for), a FOR_EACH's items.
    state: dict[str, Any] | None = None
    # A person's answer to a wait, written by a resume (never by a step).
    answer: Any = None
    # Order of the node executions of an execution (creation order).
    position: int = 0
    # The tokens its attempts used: inputTokens, outputTokens, totalTokens and byModel.
    usage: dict[str, Any] | None = None
    # A loop's iterations, found once per load (not stored).
    progress: LoopProgress | None = field(default=None, compare=False, repr=False)
    # Bytes of the output as JSON, once measured (not stored: measured again after a load).
    output_bytes: int | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        """This node execution's key in `WorkflowExecution.nodes`."""
        return node_key(self.node_id, self.iteration)

    @property
    def waiting(self) -> str | None:
        """What the node waits for ("input" or "child"), or None when it does not wait."""
        if self.status == NodeStatus.WAITING_INPUT:
            return "input"
        running = self.status == NodeStatus.RUNNING and self.state is not None
        return "child" if running and self.state and self.state.get("wait") == "child" else None

    def move(self, new: NodeStatus, now: dt.datetime) -> None:
        """Change status through the transition table."""
        check_node_transition(self.node_id, self.status, new)
        if new == NodeStatus.RUNNING and self.started_at is None:
            self.started_at = now
        if new.terminal:
            self.completed_at = now
        self.status = new

    def start_attempt(self, number: int, now: dt.datetime) -> None:
        """Record the start of attempt `number` (1-based)."""
        self.move(NodeStatus.RUNNING, now)
        self.retry_count = number - 1
        if self.attempts and self.attempts[-1].number == number:
            # The same attempt again after a restart: it keeps its number, key and usage.
            self.attempts[-1] = Attempt(number, now, usage=self.attempts[-1].usage)
        else:
            self.attempts.append(Attempt(number, now))

    def fail_attempt(self, error: str, now: dt.datetime) -> None:
        """Record that the current attempt failed (the node may still be retried)."""
        if self.attempts:
            self.attempts[-1] = replace(self.attempts[-1], completed_at=now, error=error)
        self.error = error

    def snapshot(self) -> NodeExecution:
        """A copy that later changes of this node do not touch (attempts are immutable)."""
        clone = object.__new__(NodeExecution)
        clone.__dict__.update(self.__dict__)
        clone.attempts = list(self.attempts)
        return clone


@dataclass(frozen=True)
class NodeUpdated:
    """A node changed: `node` is its state at that moment (a copy)."""

    seq: int
    at: dt.datetime
    node: NodeExecution


@dataclass(frozen=True)
class ExecutionUpdated:
    """The execution's status changed: its state at that moment (copies)."""

    seq: int
    at: dt.datetime
    status: ExecutionStatus
    current_node_id: str | None
    output: Any
    error: str | None
    nodes: tuple[NodeExecution, ...]


@dataclass(frozen=True)
class ExecutionErrored:
    """The execution failed: names the node that caused it, if one did."""

    seq: int
    at: dt.datetime
    node_id: str | None
    message: str


@dataclass(frozen=True)
class NodeProgressed:
    """An agent reported progress on a running node: `kind` "tokens" (its counts so far in
    this attempt) or "thinking" (a step of its reasoning); `data` is the report."""

    seq: int
    at: dt.datetime
    node_id: str
    iteration: tuple[int, ...]
    attempt: int
    kind: str
    data: dict[str, Any]


DomainEvent = NodeUpdated | ExecutionUpdated | ExecutionErrored | NodeProgressed


@dataclass
class WorkflowExecution:
    """One run of one version of a workflow.

    Every change goes through the methods below: each checks the transition tables and
    returns the domain events that report it, numbered by `seq`.
    """

    id: str
    workflow_id: str
    workflow_version: int
    status: ExecutionStatus
    input: Any
    user_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    deadline_at: dt.datetime
    nodes: dict[str, NodeExecution]
    output: Any = None
    error: str | None = None
    current_node_id: str | None = None
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    idempotency_key: str | None = None
    retry_of: str | None = None
    last_seq: int = 0
    # A sub-workflow's execution names the execution and node that started it.
    parent_execution_id: str | None = None
    parent_node_id: str | None = None
    depth: int = 0
    # Set while every unfinished node waits (for a person or a child): EXECUTION_TIMEOUT does
    # not run while nobody works.
    waiting_since: dt.datetime | None = None
    # The W3C `traceparent` of the request that started it: its steps' spans nest under it.
    trace_parent: str | None = None
    # What started it when not a person: {type: "schedule", scheduleId, scheduledFor} or
    # {type: "webhook", webhookId}.
    trigger: dict[str, Any] | None = None
    # Pinned: retention never deletes it (not changed by steps).
    keep: bool = False
    # Tokens used by its nodes' attempts (and its sub-workflows), see domain/usage.py.
    usage: dict[str, Any] | None = None
    # {maxTotalTokens?, maxCostUsd?, onExceed: "fail" | "pause"}: set when it starts.
    budget: dict[str, Any] | None = None
    # Bytes of the completed nodes' outputs, once measured (not stored).
    output_bytes: int | None = field(default=None, compare=False, repr=False)

    def move(self, new: ExecutionStatus, now: dt.datetime) -> None:
        """Change status through the transition table; a terminal status is never left."""
        check_execution_transition(self.status, new)
        if new == ExecutionStatus.RUNNING and self.started_at is None:
            self.started_at = now
        if new.terminal:
            self.completed_at = now
        self.status = new
        self.updated_at = now

    @property
    def finished(self) -> bool:
        """True once the execution is in a terminal status."""
        return self.status.terminal

    def _seq(self) -> int:
        self.last_seq += 1
        return self.last_seq

    def _updated(self, now: dt.datetime) -> ExecutionUpdated:
        return ExecutionUpdated(
            self._seq(),
            now,
            self.status,
            self.current_node_id,
            self.output,
            self.error,
            tuple(n.snapshot() for n in self.nodes.values()),
        )

    def _node_updated(self, node_id: str, now: dt.datetime) -> NodeUpdated:
        return NodeUpdated(self._seq(), now, self.nodes[node_id].snapshot())

    def begin(self, now: dt.datetime) -> list[DomainEvent]:
        """PENDING -> RUNNING."""
        self.move(ExecutionStatus.RUNNING, now)
        return [self._updated(now)]

    def start_node(
        self, node_id: str, attempt: int, node_input: Any, now: dt.datetime
    ) -> list[DomainEvent]:
        """The one way a node becomes RUNNING: attempt `attempt` starts (again, after a restart)."""
        node = self.nodes[node_id]
        node.input = node_input
        node.start_attempt(attempt, now)
        self.current_node_id = node.node_id
        return [self._node_updated(node_id, now)]

    def set_input(self, node_id: str, node_input: Any, now: dt.datetime) -> list[DomainEvent]:
        """A RUNNING node's input, once its input mapping is resolved."""
        node = self.nodes[node_id]
        if node.status != NodeStatus.RUNNING:
            raise IllegalTransition(f"node {node_id} is {node.status}, not RUNNING")
        node.input = node_input
        return [self._node_updated(node_id, now)]

    def complete_node(
        self, node_id: str, output: Any, routes: list[str], now: dt.datetime
    ) -> list[DomainEvent]:
        """A RUNNING node COMPLETED with `output`, taking the edges `routes`."""
        node = self.nodes[node_id]
        order = 1 + max((n.finished_order or 0 for n in self.nodes.values()), default=0)
        node.move(NodeStatus.COMPLETED, now)
        if node.attempts:
            node.attempts[-1] = replace(node.attempts[-1], completed_at=now, error=None)
        node.output = output
        node.error = None
        node.routes = routes
        node.finished_order = order
        return [self._node_updated(node_id, now)]

    def wait_node(
        self, key: str, state: dict[str, Any], now: dt.datetime, for_input: bool
    ) -> list[DomainEvent]:
        """A RUNNING node waits: for a person (WAITING_INPUT) or for a child (still RUNNING)."""
        node = self.nodes[key]
        if node.status != NodeStatus.RUNNING:
            raise IllegalTransition(f"node {key} is {node.status}, not RUNNING")
        node.state = state
        if for_input:
            node.answer = None
            node.move(NodeStatus.WAITING_INPUT, now)
        return [self._node_updated(key, now)]

    def set_state(self, key: str, state: dict[str, Any] | None, now: dt.datetime) -> None:
        """A running control node's state changed (no event: nothing a watcher sees)."""
        self.nodes[key].state = state
        self.updated_at = now

    def add_nodes(self, added: list[NodeExecution]) -> None:
        """New PENDING node executions (an iteration's), after those already there."""
        position = len(self.nodes)
        for offset, node in enumerate(added):
            node.position = position + offset
            self.nodes[node.key] = node

    def waiting_node(self, node_id: str, iteration: tuple[int, ...] | None) -> NodeExecution:
        """The node execution of `node_id` that waits for a person's answer.

        NotFound when the execution has no such node; Conflict when it does not wait (or,
        in a loop body, when several iterations wait and `iteration` does not say which).
        """
        found = [n for n in self.nodes.values() if n.node_id == node_id]
        if not found:
            raise NotFound("Node", f"{node_id} in execution {self.id}")
        if self.finished:
            raise Conflict(f"Execution {self.id} is {self.status}; nothing waits any more")
        if iteration is not None:
            found = [n for n in found if n.iteration == iteration]
        waiting = [n for n in found if n.status == NodeStatus.WAITING_INPUT and n.answer is None]
        if len(waiting) == 1:
            return waiting[0]
        if not waiting:
            answered = any(n.status == NodeStatus.WAITING_INPUT for n in found)
            state = "was answered already" if answered else "does not wait for input"
            raise Conflict(f"Node {node_id} of execution {self.id} {state}")
        raise Conflict(
            f"Several iterations of node {node_id} wait: name one with `iteration` "
            f"({', '.join(str(list(n.iteration)) for n in waiting)})"
        )

    def record_usage(self, key: str, used: tokens.Usage | None) -> bool:
        """The current attempt of node `key` used `used` in all: the node's and the
        execution's sums change by the difference (so each token is counted once); False when
        nothing changed."""
        node = self.nodes[key]
        if not node.attempts:
            return False
        last = node.attempts[-1]
        if last.usage == used:
            return False
        node.attempts[-1] = replace(last, usage=used)
        delta = tokens.subtract(used, last.usage)
        node.usage = tokens.summary(tokens.add(tokens.parse(node.usage), delta))
        mine = tokens.parse(self.usage)
        self.usage = tokens.summary(tokens.add(mine, delta))
        return True

    @property
    def paused(self) -> str | None:
        """Why it waits for its budget to be raised (None: it does not)."""
        reason = (self.budget or {}).get("pausedBecause")
        return reason if isinstance(reason, str) else None

    def pause(self, reason: str, now: dt.datetime) -> list[DomainEvent]:
        """Past its budget with onExceed "pause": nothing runs until it is raised; nobody
        works meanwhile, so EXECUTION_TIMEOUT's clock stops."""
        self.budget = {**(self.budget or {}), "pausedBecause": reason, "pausedAt": now.isoformat()}
        if self.waiting_since is None:
            self.waiting_since = now
        self.updated_at = now
        return [self._updated(now)]

    def unpause(self, now: dt.datetime) -> list[DomainEvent]:
        """The budget was raised: work goes on."""
        self.budget = {
            k: v for k, v in (self.budget or {}).items() if k not in ("pausedBecause", "pausedAt")
        }
        self.updated_at = now
        return [self._updated(now)]

    def set_budget(self, budget: dict[str, Any] | None, now: dt.datetime) -> list[DomainEvent]:
        """A person changed the budget (a paused execution goes on when it is claimed next, if
        the new budget allows)."""
        if self.finished:
            raise Conflict(f"Execution {self.id} is already {self.status}")
        kept = {k: v for k, v in (self.budget or {}).items() if k in ("pausedBecause", "pausedAt")}
        self.budget = {**(budget or {}), **kept} or None
        self.updated_at = now
        return [self._updated(now)]

    def progressed(
        self, key: str, kind: str, data: dict[str, Any], now: dt.datetime
    ) -> list[DomainEvent]:
        """A progress report on running node `key`, as an event of its own."""
        node = self.nodes[key]
        event = NodeProgressed(
            self._seq(), now, node.node_id, node.iteration, node.retry_count + 1, kind, data
        )
        return [event]

    def resume_waiting(self, now: dt.datetime) -> None:
        """Work goes on after a wait: EXECUTION_TIMEOUT's clock runs again where it stopped."""
        if self.waiting_since is not None:
            self.deadline_at += now - self.waiting_since
            self.waiting_since = None

    def skip_node(self, node_id: str, now: dt.datetime) -> list[DomainEvent]:
        """A PENDING node that no taken branch reaches."""
        self.nodes[node_id].move(NodeStatus.SKIPPED, now)
        return [self._node_updated(node_id, now)]

    def complete(self, output: Any, now: dt.datetime) -> list[DomainEvent]:
        """Every node is done: the execution COMPLETED with `output`."""
        self.move(ExecutionStatus.COMPLETED, now)
        self.output = output
        self.current_node_id = None
        return [self._updated(now)]

    def fail(self, message: str, key: str | None, now: dt.datetime) -> list[DomainEvent]:
        """FAIL the execution: node `key` (if given) FAILED with `message`; others in flight stop.

        Node failures, timeouts, poison and internal errors all end an execution this way.
        """
        events: list[DomainEvent] = []
        node_id = None if key is None else self.nodes[key].node_id
        if key is not None and self.nodes[key].status in (
            NodeStatus.RUNNING,
            NodeStatus.WAITING_INPUT,
        ):
            node = self.nodes[key]
            node.fail_attempt(message, now)
            node.move(NodeStatus.FAILED, now)
            events.append(self._node_updated(key, now))
            where = f" (iteration {'.'.join(map(str, node.iteration))})" if node.iteration else ""
            message = f"Node {node_id}{where} failed: {message}"
        events += self._end(ExecutionStatus.FAILED, message, "Cancelled: the execution failed", now)
        events.append(ExecutionErrored(self._seq(), now, node_id, message))
        events.append(self._updated(now))
        return events

    def cancel(self, now: dt.datetime) -> list[DomainEvent]:
        """CANCEL at once: nodes not finished are CANCELLED."""
        events = self._end(ExecutionStatus.CANCELLED, "Cancelled by request", None, now)
        events.append(self._updated(now))
        return events

    def _end(
        self, status: ExecutionStatus, message: str, node_error: str | None, now: dt.datetime
    ) -> list[DomainEvent]:
        check_execution_transition(self.status, status)
        events: list[DomainEvent] = []
        # A cancel stops every unfinished node; a failure stops those in flight and leaves the
        # rest PENDING (they never ran), as the seed did.
        stopping = {NodeStatus.RUNNING, NodeStatus.WAITING_INPUT}
        if status == ExecutionStatus.CANCELLED:
            stopping.add(NodeStatus.PENDING)
        for node in self.nodes.values():
            if node.status in stopping:
                started = node.status != NodeStatus.PENDING
                node.move(NodeStatus.CANCELLED, now)
                if started:
                    node.error = node_error or node.error
                    events.append(self._node_updated(node.node_id, now))
        self.error = message
        self.move(status, now)
        return events
