"""What each node type does: START, END, CONDITIONAL, TRANSFORM compute; AGENT, TOOL call out."""

from __future__ import annotations

from typing import Any

from orchestrator.application.ports import (
    AgentInvoker,
    AttemptHook,
    CallContext,
    FailureHook,
    Retrier,
    ToolInvoker,
)
from orchestrator.domain.engine import CompiledWorkflow
from orchestrator.domain.execution import WorkflowExecution
from orchestrator.domain.retry import RetryPolicy
from orchestrator.domain.workflow import NodeType

EXTERNAL = frozenset({NodeType.AGENT, NodeType.TOOL})


class NodeRunner:
    """Runs one node of an execution; recording what happens is the caller's job."""

    def __init__(
        self,
        agents: AgentInvoker,
        tools: ToolInvoker,
        retrier: Retrier,
        default_retries: int,
    ) -> None:
        self._agents = agents
        self._tools = tools
        self._retrier = retrier
        self._default_retries = default_retries

    @staticmethod
    def calls_out(node_type: NodeType) -> bool:
        """True for the node types that call agent-service or tool-service."""
        return node_type in EXTERNAL

    @staticmethod
    def compute(
        workflow: CompiledWorkflow, node_id: str, node_input: Any, execution: WorkflowExecution
    ) -> Any:
        """The output of a node that calls nothing (raises ExpressionError)."""
        node = workflow.nodes[node_id]
        if node.type == NodeType.TRANSFORM:
            return workflow.transform(node_id, node_input, execution)
        if node.type == NodeType.CONDITIONAL:
            # Evaluated now so that a condition that fails, fails this node.
            workflow.condition(node_id, node_input)
        return node_input

    def policy(self, workflow: CompiledWorkflow, node_id: str) -> RetryPolicy:
        """The node's retry policy."""
        return RetryPolicy.from_config(
            workflow.nodes[node_id].config.get("retry"), self._default_retries
        )

    async def call(
        self,
        workflow: CompiledWorkflow,
        node_id: str,
        node_input: Any,
        execution: WorkflowExecution,
        first_attempt: int,
        on_attempt: AttemptHook,
        on_failure: FailureHook,
    ) -> Any:
        """Call agent-service or tool-service under the node's retry policy and timeout."""
        node = workflow.nodes[node_id]
        timeout_ms = node.config.get("timeoutMs")
        ctx = CallContext(
            execution_id=execution.id,
            workflow_id=execution.workflow_id,
            node_id=node_id,
            user_id=execution.user_id,
            idempotency_key=f"{execution.id}:{node_id}",
            timeout_s=timeout_ms / 1000 if timeout_ms else None,
        )
        if node.type == NodeType.AGENT:
            agent_id = node.config["agentId"]

            async def call() -> Any:
                return await self._agents.execute_agent(agent_id, node_input, ctx)

        else:
            tool_id = node.config["toolId"]
            parameters = workflow.tool_parameters(node_id, node_input, execution)

            async def call() -> Any:
                return await self._tools.execute_tool(tool_id, parameters, ctx)

        return await self._retrier.run(
            call, self.policy(workflow, node_id), first_attempt, on_attempt, on_failure
        )
