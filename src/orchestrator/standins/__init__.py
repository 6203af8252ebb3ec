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
============  ==============================================  ===================================

A body that breaks the contract (agent ``input`` not a string, tool ``toolId`` not a string or
``parameters`` not an object) gets HTTP 422 ``{"message": ...}``, so client bugs show up in tests.
The tool ``timeout`` and ``userId`` are recorded but not acted on.

Every execute request is recorded in memory (the last 100000): ``GET /_calls`` answers
``{"calls": [{"service", "id", "idempotencyKey", "body", "receivedAt", "answeredAt",
"status"}]}`` oldest first, filtered by the optional queries ``key``, ``service`` and ``id``;
``DELETE /_calls`` clears the log and the flaky counters.
"""
