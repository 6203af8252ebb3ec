"""Stand-ins for agent-service and tool-service, for end-to-end tests, benchmarks and the demo.

One process serves both services (``create_standin_app`` in ``app``; run it with
``python -m orchestrator.standins --host 127.0.0.1 --port 3002``):

- agent-service under a prefix, ``/api`` by default:
  ``POST /api/agents/{agentId}/execute`` with ``{"input": "<string>", "metadata": {...}}``
  answers an agent execution ``{"id", "agentId", "input", "output", "tokens", "status",
  "error", "startedAt", "completedAt"}``;
- tool-service at the root: ``POST /tools/execute`` with
  ``{"toolId", "parameters": {...}, "timeout"?, "userId"?}`` answers
  ``{"success", "data", "error", "executionTime"}`` (milliseconds);
- ``GET /health`` and ``GET /api/health`` answer ``{"status": "ok"}``.

So ``AGENT_SERVICE_URL=http://127.0.0.1:PORT/api`` and ``TOOL_SERVICE_URL=http://127.0.0.1:PORT``
both point at the same process.

The agentId or toolId picks the behaviour, the same for both services. "Fields" are the tool's
``parameters``, or the agent's ``input`` parsed as a JSON object when it is one (otherwise none).

============  ==============================================  ===================================
id            agent reply                                     tool reply
============  ==============================================  ===================================
echo          COMPLETED, output = the input unchanged         success, data = the parameters
(unknown id)  as echo                                         as echo
instant       as echo, on the shortest path (benchmarks)      as echo, on the shortest path
scorer        output = the JSON text of                       data = the same object, the score
              ``{"score", "ok", "input"}``, the score in      from sha256 of the parameters as
              [0, 1) from sha256 of the input,                canonical JSON
              ok = score > 0.5
slow          sleeps field ``delayMs`` ms (default 500, or    likewise, then as echo
              ``STANDIN_DEFAULT_DELAY_MS``), then as echo
flaky         HTTP 503 for the first ``failTimes`` calls      likewise
              (default 2) of each Idempotency-Key (or of
              each field ``flakyKey``), then echo
failing       HTTP 200, status FAILED,                        HTTP 200, success false,
              error "agent failed on purpose"                 error "tool failed on purpose"
error500      HTTP 500 ``{"message": ...}``                   likewise
badrequest    HTTP 400                                        likewise
              ``{"message": "bad request on purpose"}``
streaming     reports progress during the call (below),       as echo
              then as echo; ``tokens`` = ``{inputTokens,
              outputTokens, totalTokens, model}`` of the
              last report
streaming-    as streaming, then (after the reports) HTTP     as echo
flaky         503 like flaky for the first ``failTimes``
              calls of each key: a retried attempt has
              partial progress
============  ==============================================  ===================================

A streaming agent's fields: ``reports`` (default 5), ``intervalMs`` (50), ``model``
("standin-model"), ``inputTokens`` (10), ``outputPerReport`` (7), ``thinking`` (true) and
``progressUrl`` (default: ``--orchestrator-url`` or ``ORCHESTRATOR_URL``; with none it posts
nothing and just waits). Every ``intervalMs`` it posts ``{progressUrl}/internal/token-progress``
``{executionId, nodeId, inputTokens, outputTokens, totalTokens, model, iteration}`` (the counts
cumulative for this attempt, ``iteration`` the report's number from 1) and, when thinking,
``{progressUrl}/internal/thinking-step`` ``{executionId, nodeId, step, thought, plan?,
toolCalls?}`` (``plan`` on step 1, ``toolCalls`` on even steps); ``executionId`` and ``nodeId``
come from the request's ``metadata``, as do ``attempt`` and ``loop`` (from ``metadata.attempt``
and ``metadata.loopIteration``, when there). The posts carry ``Authorization: Bearer <token>``
when ``--internal-token`` or ``STANDIN_INTERNAL_TOKEN`` is set.

slow, streaming and streaming-flaky watch their client while they wait: when it closes the
connection (a cancelled call), they stop at once, report nothing more, and the
call is logged with status 499 and ``disconnectedAt``.

A body that breaks the contract (agent ``input`` not a string, tool ``toolId`` not a string or
``parameters`` not an object) gets HTTP 422 ``{"message": ...}``, so client bugs show up in tests.
The tool ``timeout`` and ``userId`` are recorded but not acted on.

Every execute request is recorded in memory (the last 100000) once answered: ``GET /_calls``
answers ``{"calls": [{"service", "id", "idempotencyKey", "body", "receivedAt", "answeredAt",
"status", "traceparent", "reports", "disconnectedAt"}]}`` oldest first, filtered by the optional
queries ``key``, ``service`` and ``id``. ``reports`` is what a streaming agent posted, each
``{"route", "body", "status"}`` (status null, with an ``error``, when the post failed);
``disconnectedAt`` is when the client was seen gone, else null. ``GET /_inflight`` (same
queries) answers ``{"calls": [{"service", "id", "idempotencyKey", "receivedAt"}]}``: the calls
whose body was read and that are not answered yet. ``DELETE /_calls`` clears the log and the
flaky counters.
"""
