// The platform frontend's run-view hook, as a script: follow one execution over Socket.IO.
//
//   node run_view.mjs <serviceUrl> <executionId> [timeoutMs]
//
// Like the hook: io("<service>/workflows", {path: "/socket.io", transports: ["websocket"]}),
// on connect emit both `join` and `subscribe` {executionId}, and `leave` on cleanup.
// stdout gets, per event received, one JSON line {"event", "payload"} and then the view's log
// line(s) for it ("[HH:MM:SS] <nodeName>: <status>"); log lines start with "[", JSON with "{".
// Exit codes: 0 the execution reached COMPLETED/FAILED/CANCELLED (after `leave`), 2 usage,
// 3 connect error, 4 timeout (default 60 s), 5 disconnected before the end, 6 join refused.
import { io } from "socket.io-client";

const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
const LEAVE_WAIT_MS = 5000;

const [url, executionId, timeoutArg] = process.argv.slice(2);
if (!url || !executionId) {
  process.stderr.write("usage: node run_view.mjs <serviceUrl> <executionId> [timeoutMs]\n");
  process.exit(2);
}
const timeoutMs = Number(timeoutArg ?? process.env.RUN_VIEW_TIMEOUT_MS ?? 60000);

function clock(timestamp) {
  const at = timestamp ? new Date(timestamp) : new Date();
  return (Number.isNaN(at.getTime()) ? new Date() : at).toISOString().slice(11, 19);
}

function log(timestamp, text) {
  process.stdout.write(`[${clock(timestamp)}] ${text}\n`);
}

// The log lines the run view writes for an event.
const views = {
  joined: (p) => log(null, `Joined execution ${p?.executionId}`),
  left: (p) => log(null, `Left execution ${p?.executionId}`),
  "execution:update": (p) => {
    const at = p.currentNodeName ?? p.currentNodeId;
    log(p.timestamp, `Execution ${p.status}${at ? ` at ${at}` : ""}`);
    if (p.error) log(p.timestamp, `Execution error: ${p.error}`);
  },
  "node:update": (p) => {
    const name = p.nodeName ?? p.nodeId;
    log(p.timestamp, `${name}: ${p.status}`);
    const data = p.data ?? {};
    for (const line of data.logs ?? []) {
      log(p.timestamp, `${name}: ${typeof line === "string" ? line : JSON.stringify(line)}`);
    }
    if (data.prompt !== undefined) log(p.timestamp, `${name}: asks "${data.prompt}"`);
    if (data.agentMessage !== undefined) log(p.timestamp, `${name}: says "${data.agentMessage}"`);
    const output = data.output;
    if (output && typeof output === "object" && output._subExecutionId) {
      const child = output._subWorkflowName ?? output._subWorkflowId;
      log(p.timestamp, `${name}: sub-workflow ${child} (${output._subExecutionId})`);
    }
    if (data.error) log(p.timestamp, `${name}: error: ${data.error}`);
  },
  "execution:error": (p) => log(p.timestamp, `Error: ${p.error}`),
  error: (p) => log(null, `Refused ${p?.event}: ${p?.error}`),
};

const socket = io(`${url.replace(/\/+$/, "")}/workflows`, {
  path: "/socket.io",
  transports: ["websocket"],
  reconnection: false,
  timeout: 10000,
});

let finished = false;
const deadline = setTimeout(() => stop(4, `no terminal status within ${timeoutMs} ms`), timeoutMs);

function stop(code, why) {
  if (finished) return;
  finished = true;
  clearTimeout(deadline);
  if (why) process.stderr.write(`run_view: ${why}\n`);
  process.exitCode = code;
  socket.disconnect();
  // Nothing else should keep the process alive; make sure of it.
  setTimeout(() => process.exit(code), 1000).unref();
}

function leaveThenStop() {
  // The hook's cleanup: `leave`, then the socket goes. Wait (boundedly) for `left`.
  const bound = setTimeout(() => stop(0, `no 'left' within ${LEAVE_WAIT_MS} ms`), LEAVE_WAIT_MS);
  socket.once("left", () => {
    clearTimeout(bound);
    stop(0);
  });
  socket.emit("leave", { executionId });
}

socket.on("connect", () => {
  socket.emit("join", { executionId });
  socket.emit("subscribe", { executionId });
});

socket.on("connect_error", (err) => stop(3, `connect error: ${err.message}`));

socket.on("disconnect", (reason) => {
  if (!finished) stop(5, `disconnected before the end: ${reason}`);
});

let ending = false;
socket.onAny((event, payload) => {
  process.stdout.write(`${JSON.stringify({ event, payload: payload ?? null })}\n`);
  views[event]?.(payload ?? {});
  if (event === "error" && ["join", "subscribe"].includes(payload?.event)) {
    stop(6, `${payload.event} refused: ${payload.error}`);
  } else if (
    event === "execution:update" &&
    payload?.executionId === executionId &&
    TERMINAL.has(payload.status) &&
    !ending
  ) {
    ending = true;
    leaveThenStop();
  }
});
