"""The work of one node: resolve its input, do what its type does, choose its routes.

Expressions go through the Evaluator port (bounded in time and size); AGENT and TOOL call
out through their invokers under the node's retry policy. What happens is reported as the
engine's happenings; recording them is the stepper's job.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from orchestrator.application.ports import (
    AgentAnswer,
    AgentInvoker,
    CallContext,
    ChildExecutions,
    ChildRefused,
    Evaluator,
    InvocationError,
    Retrier,
    ToolInvoker,
)
from orchestrator.domain import usage as tokens
from orchestrator.domain.engine import (
    DEFAULT_HANDLE,
    TIMEOUT_HANDLE,
    AttemptStarted,
    CompiledWorkflow,
    Happening,
    InputResolved,
    LoopDecided,
    LoopItems,
    NodeFailed,
    NodeStart,
    NodeSucceeded,
    NodeWaiting,
    tool_parameters,
)
from orchestrator.domain.errors import ExpressionError
from orchestrator.domain.execution import (
    ExecutionStatus,
    NodeExecution,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.mapping import json_or_text, json_text
from orchestrator.domain.retry import RetryPolicy
from orchestrator.domain.validation import DEFAULT_MAX_ITEMS
from orchestrator.domain.workflow import NodeType

log = logging.getLogger(__name__)

Report = Callable[[Happening], Awaitable[None]]
"""Records a happening (and commits it) before the work goes on."""


def idempotency_key(execution_id: str, node: NodeExecution) -> str:
    """The same for every attempt of a node execution; the node id is encoded to fit a header
    (and so that an `@` in it never reads as an iteration's)."""
    key = f"{execution_id}:{quote(node.node_id, safe='')}"
    return f"{key}@{'.'.join(map(str, node.iteration))}" if node.iteration else key


ASK_USER_MARKER = "__ASK_USER__"
"""An AGENT with `allowAskUser` whose answer starts with this asks the user what follows."""
MAX_QUESTIONS = 10


class NodeWork:
    """Runs one node of an execution and says how it ended."""

    def __init__(
        self,
        agents: AgentInvoker,
        tools: ToolInvoker,
        retrier: Retrier,
        evaluator: Evaluator,
        default_retries: int,
        children: ChildExecutions,
    ) -> None:
        self._agents = agents
        self._tools = tools
        self._retrier = retrier
        self._evaluator = evaluator
        self._default_retries = default_retries
        self._children = children

    async def run(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        start: NodeStart,
        report: Report,
    ) -> Happening:
        """Do the node's work; attempts and a resolved input are reported as they happen."""
        key = start.key
        node = execution.nodes[key]
        if start.wake is not None or (start.index or 0) > 0:
            node_input = node.input  # resolved when the node first ran
        else:
            node_input = workflow.default_input(key, execution)
        try:
            if start.wake is None and not start.index:
                mapping = workflow.job(node.node_id, "inputMapping", execution, node_input, at=key)
                if mapping is not None:
                    try:
                        node_input = await self._evaluator.evaluate(*mapping)
                    except ExpressionError as exc:
                        return NodeFailed(key, None, f"Input mapping failed: {exc.message}")
                    if workflow.calls_out(node.node_id):
                        await report(InputResolved(key, node_input))
            return await self._act(workflow, execution, start, node_input, report)
        except (ExpressionError, InvocationError, ChildRefused) as exc:
            return NodeFailed(key, node_input, exc.message)

    async def _act(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        start: NodeStart,
        node_input: Any,
        report: Report,
    ) -> Happening:
        key = start.key
        node_id = execution.nodes[key].node_id
        node = workflow.nodes[node_id]
        match node.type:
            case NodeType.CONDITIONAL:
                work = workflow.job(node_id, "condition", execution, node_input, at=key)
                assert work is not None
                verdict = bool(await self._evaluator.evaluate(*work))
                return await self._succeed(
                    workflow, execution, key, node_input, node_input, str(verdict).lower()
                )
            case NodeType.SWITCH:
                return await self._switch(workflow, execution, key, node_input)
            case NodeType.TRANSFORM:
                output = await self._transform(workflow, execution, key, node_input)
                return await self._succeed(workflow, execution, key, node_input, output)
            case NodeType.FOR_EACH:
                return await self._items(workflow, execution, key, node_input)
            case NodeType.WHILE:
                index = start.index or 0
                value = node_input if index == 0 else workflow.item(key, index, execution)
                work = workflow.job(node_id, "condition", execution, value, at=key)
                assert work is not None
                go = bool(await self._evaluator.evaluate(*work))
                return LoopDecided(key, node_input, index, value, go)
            case NodeType.PROMPT:
                return await self._prompt(workflow, execution, start, node_input)
            case NodeType.SUBWORKFLOW:
                return await self._subworkflow(workflow, execution, start, node_input)
            case NodeType.AGENT | NodeType.TOOL:
                return await self._call(workflow, execution, start, node_input, report)
        return await self._succeed(workflow, execution, key, node_input, node_input)

    async def _succeed(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        key: str,
        node_input: Any,
        output: Any,
        choice: str | None = None,
    ) -> NodeSucceeded:
        routes = await self._routes(workflow, execution, key, output, choice)
        return NodeSucceeded(key, node_input, output, routes)

    async def _transform(
        self, workflow: CompiledWorkflow, execution: WorkflowExecution, key: str, node_input: Any
    ) -> Any:
        node = workflow.nodes[execution.nodes[key].node_id]
        work = workflow.job(node.id, "expression", execution, node_input, at=key)
        if work is not None:
            return await self._evaluator.evaluate(*work)
        work = workflow.job(node.id, "template", execution, node_input, at=key)
        if work is not None:
            rendered = await self._evaluator.evaluate(*work)
            return json_or_text(node.config["template"], rendered)
        return node_input

    async def _switch(
        self, workflow: CompiledWorkflow, execution: WorkflowExecution, key: str, node_input: Any
    ) -> NodeSucceeded:
        node = workflow.nodes[execution.nodes[key].node_id]
        work = workflow.job(node.id, "switchOn", execution, node_input, at=key)
        assert work is not None
        value = await self._evaluator.evaluate(*work)
        choice = DEFAULT_HANDLE
        for i, case in enumerate(node.config.get("cases") or []):
            if isinstance(case, dict) and _same(case.get("value"), value):
                choice = f"case_{i}"
                break
        return await self._succeed(workflow, execution, key, node_input, node_input, choice)

    async def _items(
        self, workflow: CompiledWorkflow, execution: WorkflowExecution, key: str, node_input: Any
    ) -> Happening:
        node = workflow.nodes[execution.nodes[key].node_id]
        work = workflow.job(node.id, "collection", execution, node_input, at=key)
        assert work is not None
        items = await self._evaluator.evaluate(*work)
        if not isinstance(items, list):
            return NodeFailed(
                key, node_input, f"collection must give a list, got {type(items).__name__}"
            )
        limit = node.config.get("maxItems") or DEFAULT_MAX_ITEMS
        if len(items) > limit:
            return NodeFailed(
                key, node_input, f"collection has {len(items)} items, more than maxItems ({limit})"
            )
        return LoopItems(key, node_input, items)

    async def _prompt(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        start: NodeStart,
        node_input: Any,
    ) -> Happening:
        key = start.key
        node = execution.nodes[key]
        config = workflow.nodes[node.node_id].config
        state = node.state or {}
        if start.wake == "answer":
            output = {"prompt": state.get("prompt"), "response": node.answer}
            return await self._succeed(workflow, execution, key, node_input, output)
        if start.wake == "timeout":
            if any(e.source_handle == TIMEOUT_HANDLE for e in workflow.outgoing[node.node_id]):
                output = {"prompt": state.get("prompt"), "response": None, "timedOut": True}
                return await self._succeed(
                    workflow, execution, key, node_input, output, TIMEOUT_HANDLE
                )
            return NodeFailed(
                key, node_input, f"no answer within timeoutMs ({config.get('timeoutMs')} ms)"
            )
        work = workflow.job(node.node_id, "prompt", execution, node_input, at=key)
        text = "" if work is None else await self._evaluator.evaluate(*work)
        prompt = text if isinstance(text, str) else json_text(text)
        return NodeWaiting(key, node_input, {"wait": "input", "prompt": prompt}, for_input=True)

    async def _subworkflow(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        start: NodeStart,
        node_input: Any,
    ) -> Happening:
        key = start.key
        node = execution.nodes[key]
        if start.wake == "child" and node.state is not None:
            state = node.state
            child_id = str(state["childExecutionId"])
            result = await self._children.result(child_id)
            if result is None or not result.status.terminal:
                return NodeWaiting(key, node_input, state, for_input=False)
            used = tokens.parse(result.usage)  # the child's tokens roll up to this node
            if result.status != ExecutionStatus.COMPLETED:
                return NodeFailed(
                    key,
                    node_input,
                    f"sub-workflow execution {child_id} ended {result.status}: {result.error}",
                    used,
                )
            output = result.output
            if isinstance(output, dict):
                output = {**output, **{k: v for k, v in state.items() if k.startswith("_")}}
            succeeded = await self._succeed(workflow, execution, key, node_input, output)
            return replace(succeeded, usage=used)
        config = workflow.nodes[node.node_id].config
        child = await self._children.start(
            execution, key, config["workflowId"], config.get("version"), node_input
        )
        state = {
            "wait": "child",
            "childExecutionId": child.execution_id,
            "_subExecutionId": child.execution_id,
            "_subWorkflowId": child.workflow_id,
            "_subWorkflowName": child.workflow_name,
        }
        return NodeWaiting(key, node_input, state, for_input=False)

    async def _call(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        start: NodeStart,
        node_input: Any,
        report: Report,
    ) -> Happening:
        key = start.key
        current = execution.nodes[key]
        node_id = current.node_id
        node = workflow.nodes[node_id]
        timeout_ms = node.config.get("timeoutMs")
        questions: list[dict[str, Any]] = list((current.state or {}).get("questions", []))
        if start.wake == "answer" and questions:
            questions[-1] = {**questions[-1], "answer": current.answer}
        suffix = f":answer-{len(questions)}" if questions else ""
        ctx = CallContext(
            execution_id=execution.id,
            workflow_id=execution.workflow_id,
            node_id=node_id,
            user_id=execution.user_id,
            idempotency_key=idempotency_key(execution.id, current) + suffix,
            timeout_s=timeout_ms / 1000 if timeout_ms else None,
            attempt=start.attempt,
            iteration=current.iteration,
        )
        if node.type == NodeType.AGENT:
            agent_id = node.config["agentId"]
            agent_input = _with_answers(node_input, questions)

            async def call() -> Any:
                return await self._agents.execute_agent(agent_id, agent_input, ctx)

        else:
            tool_id = node.config["toolId"]
            parameters = await self._parameters(workflow, execution, key, node_input)

            async def call() -> Any:
                return await self._tools.execute_tool(tool_id, parameters, ctx)

        failures: list[str] = []

        async def on_attempt(number: int) -> None:
            nonlocal ctx
            ctx = replace(ctx, attempt=number)
            if number != start.attempt:  # that one was recorded by the step that started it
                await report(AttemptStarted(key, number, failures[-1] if failures else None))

        async def on_failure(number: int, error: InvocationError, delay_s: float) -> None:
            failures.append(error.message)
            log.info(
                "attempt %d of node %s failed (%s); trying again in %.2f s",
                number,
                node_id,
                error.message,
                delay_s,
                extra={"attempt": number},
            )

        policy = RetryPolicy.from_config(node.config.get("retry"), self._default_retries)
        output = await self._retrier.run(call, policy, start.attempt, on_attempt, on_failure)
        usage = None
        if isinstance(output, AgentAnswer):  # an agent's, with the tokens it used
            earlier = tokens.normalize((current.state or {}).get("usage")) if questions else None
            reply = tokens.of_counts(output.usage, output.model)
            output, usage = output.output, tokens.add(earlier, reply)
        question = _question(output) if node.config.get("allowAskUser") is True else None
        if question is None:
            routes = await self._routes(workflow, execution, key, output, None)
            return NodeSucceeded(key, node_input, output, routes, usage)
        if len(questions) >= MAX_QUESTIONS:
            return NodeFailed(
                key, node_input, f"the agent asked more than {MAX_QUESTIONS} questions"
            )
        state = {"wait": "input", **question, "questions": [*questions, question]}
        if usage is not None:
            state["usage"] = usage
        return NodeWaiting(key, node_input, state, for_input=True)

    async def _parameters(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        key: str,
        node_input: Any,
    ) -> dict[str, Any]:
        """A TOOL node's parameters: `config.parameters` (templated) over an object input."""
        node_id = execution.nodes[key].node_id
        work = workflow.job(node_id, "parameters", execution, node_input, at=key)
        resolved = None if work is None else await self._evaluator.evaluate(*work)
        return tool_parameters(node_input, resolved)

    async def unrouted(
        self, workflow: CompiledWorkflow, execution: WorkflowExecution
    ) -> dict[str, list[str]]:
        """The routes of completed nodes stored without them (before routes were recorded)."""
        found: dict[str, list[str]] = {}
        for key, node in execution.nodes.items():
            if node.status != NodeStatus.COMPLETED or node.routes is not None:
                continue
            choice = None
            work = workflow.job(node.node_id, "condition", execution, node.input, at=key)
            if work is not None:
                choice = str(bool(await self._evaluator.evaluate(*work))).lower()
            found[key] = await self._routes(workflow, execution, key, node.output, choice)
        return found

    async def _routes(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        key: str,
        output: Any,
        choice: str | None,
    ) -> list[str]:
        """The outgoing edges the node takes: by its choice and by edge conditions."""
        taken, conditional = workflow.route_work(key, output, choice, execution)
        for edge_id, work in conditional:
            if await self._evaluator.evaluate(*work):
                taken.append(edge_id)
        return taken


def _same(case: Any, value: Any) -> bool:
    """JSON equality: `1 == 1.0`, but `true` is not `1`."""
    if isinstance(case, bool) or isinstance(value, bool):
        return isinstance(case, bool) and isinstance(value, bool) and case == value
    return bool(case == value)


def _question(output: Any) -> dict[str, Any] | None:
    """The question of an agent's answer that starts with ASK_USER_MARKER, else None.

    After the marker comes the question's text, or a JSON object with `question` and, if
    the agent offers choices, `proposals` and `questionType`.
    """
    if not isinstance(output, str) or not output.startswith(ASK_USER_MARKER):
        return None
    text = output[len(ASK_USER_MARKER) :].strip()
    parsed = json_or_text(text, text)
    if isinstance(parsed, dict) and isinstance(parsed.get("question"), str):
        asked = parsed["question"]
        question: dict[str, Any] = {"prompt": asked, "agentMessage": asked}
        for name in ("proposals", "questionType"):
            if name in parsed:
                question[name] = parsed[name]
        return question
    return {"prompt": text, "agentMessage": text}


def _with_answers(node_input: Any, questions: list[dict[str, Any]]) -> Any:
    """The agent's input again, with the questions it asked and the user's answers."""
    if not questions:
        return node_input
    text = node_input if isinstance(node_input, str) else json_text(node_input)
    lines = [text, ""]
    for asked in questions:
        lines += [f"You asked: {asked['prompt']}", f"The user answered: {asked.get('answer')}"]
    return "\n".join(lines)
