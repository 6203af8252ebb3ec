"""The work of one node: resolve its input, do what its type does, choose its routes.

Expressions go through the Evaluator port (bounded in time and size); AGENT and TOOL call
out through their invokers under the node's retry policy. What happens is reported as the
engine's happenings; recording them is the stepper's job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from orchestrator.application.ports import (
    AgentInvoker,
    CallContext,
    Evaluator,
    InvocationError,
    Retrier,
    ToolInvoker,
)
from orchestrator.domain.engine import (
    AttemptStarted,
    CompiledWorkflow,
    Happening,
    InputResolved,
    NodeFailed,
    NodeStart,
    NodeSucceeded,
    tool_parameters,
)
from orchestrator.domain.errors import ExpressionError
from orchestrator.domain.execution import NodeStatus, WorkflowExecution
from orchestrator.domain.mapping import json_or_text
from orchestrator.domain.retry import RetryPolicy
from orchestrator.domain.workflow import NodeType

Report = Callable[[Happening], Awaitable[None]]
"""Records a happening (and commits it) before the work goes on."""


def idempotency_key(execution_id: str, node_id: str) -> str:
    """The same for every attempt of a node in an execution; the id is encoded to fit a header."""
    return f"{execution_id}:{quote(node_id, safe='')}"


class NodeWork:
    """Runs one node of an execution and says how it ended."""

    def __init__(
        self,
        agents: AgentInvoker,
        tools: ToolInvoker,
        retrier: Retrier,
        evaluator: Evaluator,
        default_retries: int,
    ) -> None:
        self._agents = agents
        self._tools = tools
        self._retrier = retrier
        self._evaluator = evaluator
        self._default_retries = default_retries

    async def run(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        start: NodeStart,
        report: Report,
    ) -> NodeSucceeded | NodeFailed:
        """Do the node's work; attempts and a resolved input are reported as they happen."""
        node_id = start.node_id
        node_input = workflow.default_input(node_id, execution)
        try:
            mapping = workflow.job(node_id, "inputMapping", execution, node_input)
            if mapping is not None:
                try:
                    node_input = await self._evaluator.evaluate(*mapping)
                except ExpressionError as exc:
                    return NodeFailed(node_id, None, f"Input mapping failed: {exc.message}")
                if workflow.calls_out(node_id):
                    await report(InputResolved(node_id, node_input))
            output, verdict = await self._act(workflow, execution, start, node_input, report)
            routes = await self._routes(workflow, execution, node_id, output, verdict)
        except (ExpressionError, InvocationError) as exc:
            return NodeFailed(node_id, node_input, exc.message)
        return NodeSucceeded(node_id, node_input, output, routes)

    async def _act(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        start: NodeStart,
        node_input: Any,
        report: Report,
    ) -> tuple[Any, bool | None]:
        """The node's output, and a CONDITIONAL's verdict."""
        node_id = start.node_id
        node = workflow.nodes[node_id]
        if node.type == NodeType.CONDITIONAL:
            work = workflow.job(node_id, "condition", execution, node_input)
            assert work is not None
            return node_input, bool(await self._evaluator.evaluate(*work))
        if node.type == NodeType.TRANSFORM:
            work = workflow.job(node_id, "expression", execution, node_input)
            if work is not None:
                return await self._evaluator.evaluate(*work), None
            work = workflow.job(node_id, "template", execution, node_input)
            if work is not None:
                rendered = await self._evaluator.evaluate(*work)
                return json_or_text(node.config["template"], rendered), None
            return node_input, None
        if not workflow.calls_out(node_id):
            return node_input, None
        return await self._call(workflow, execution, start, node_input, report), None

    async def _call(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        start: NodeStart,
        node_input: Any,
        report: Report,
    ) -> Any:
        node_id = start.node_id
        node = workflow.nodes[node_id]
        timeout_ms = node.config.get("timeoutMs")
        ctx = CallContext(
            execution_id=execution.id,
            workflow_id=execution.workflow_id,
            node_id=node_id,
            user_id=execution.user_id,
            idempotency_key=idempotency_key(execution.id, node_id),
            timeout_s=timeout_ms / 1000 if timeout_ms else None,
        )
        if node.type == NodeType.AGENT:
            agent_id = node.config["agentId"]

            async def call() -> Any:
                return await self._agents.execute_agent(agent_id, node_input, ctx)

        else:
            tool_id = node.config["toolId"]
            parameters = await self._parameters(workflow, execution, node_id, node_input)

            async def call() -> Any:
                return await self._tools.execute_tool(tool_id, parameters, ctx)

        failures: list[str] = []

        async def on_attempt(number: int) -> None:
            if number != start.attempt:  # that one was recorded by the step that started it
                await report(AttemptStarted(node_id, number, failures[-1] if failures else None))

        async def on_failure(number: int, error: InvocationError, delay_s: float) -> None:
            failures.append(error.message)

        policy = RetryPolicy.from_config(node.config.get("retry"), self._default_retries)
        return await self._retrier.run(call, policy, start.attempt, on_attempt, on_failure)

    async def _parameters(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        node_id: str,
        node_input: Any,
    ) -> dict[str, Any]:
        """A TOOL node's parameters: `config.parameters` (templated) over an object input."""
        work = workflow.job(node_id, "parameters", execution, node_input)
        resolved = None if work is None else await self._evaluator.evaluate(*work)
        return tool_parameters(node_input, resolved)

    async def unrouted(
        self, workflow: CompiledWorkflow, execution: WorkflowExecution
    ) -> dict[str, list[str]]:
        """The routes of completed nodes stored without them (before routes were recorded)."""
        found: dict[str, list[str]] = {}
        for node_id, node in execution.nodes.items():
            if node.status != NodeStatus.COMPLETED or node.routes is not None:
                continue
            verdict = None
            work = workflow.job(node_id, "condition", execution, node.input)
            if work is not None:
                verdict = bool(await self._evaluator.evaluate(*work))
            found[node_id] = await self._routes(workflow, execution, node_id, node.output, verdict)
        return found

    async def _routes(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        node_id: str,
        output: Any,
        verdict: bool | None,
    ) -> list[str]:
        """The outgoing edges the node takes: by a CONDITIONAL's verdict and edge conditions."""
        taken, conditional = workflow.route_work(node_id, output, verdict, execution)
        for edge_id, work in conditional:
            if await self._evaluator.evaluate(*work):
                taken.append(edge_id)
        return taken
