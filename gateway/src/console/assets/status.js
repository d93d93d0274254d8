// The status page: polls /console/api/status every second while shown, computes tokens/s between polls
// from the server's own clock, draws small live charts, and lists the IM connectors' health and the
// latest (masked) audit records.
import { Sparkline } from "./charts.js";
import { consoleFetch } from "./auth.js";

const $ = (id) => document.getElementById(id);
let timer = null;
let previous = null;
let charts = null;

export function init() {
  charts = { tps: new Sparkline($("chart-tps")), queue: new Sparkline($("chart-queue")), kv: new Sparkline($("chart-kv")) };
}

export function show() {
  poll();
  timer = setInterval(poll, 1000);
}

export function hide() {
  clearInterval(timer);
  timer = null;
}

/** Fill a `<tbody>` with rows of cells (text only); a cell may be `{ text, state }` to mark it. */
function rows(tbody, data, empty) {
  const columns = tbody.closest("table").querySelectorAll("th").length;
  tbody.replaceChildren(...(data.length ? data : [[empty]]).map((cells) => {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = typeof cell === "object" ? cell.text : cell;
      if (typeof cell === "object") td.dataset.state = cell.state;
      if (cells.length === 1) td.colSpan = columns;
      tr.append(td);
    }
    return tr;
  }));
}

const clock = (ms) => (ms ? new Date(ms).toLocaleTimeString() : "–");

/** One row of the platforms table. */
function platformRow(p, deliveries) {
  const mine = deliveries.filter((d) => d.platform === p.name);
  const total = mine.reduce((n, d) => n + d.count, 0);
  const failed = mine.filter((d) => d.outcome === "failed").reduce((n, d) => n + d.count, 0);
  const missing = p.missing_permissions.map((m) => m.permission);
  const health = p.status === "degraded" ? `degraded: missing permission ${missing.join(", ")}` : p.status;
  const connection = p.connected
    ? `connected since ${clock(p.since_ms)} · last frame ${clock(p.last_event_ms)} · ${p.connections} connection(s)`
    : `disconnected since ${clock(p.since_ms)}`;
  const problem = p.last_problem ? `${clock(p.last_problem.at_ms)}: ${p.last_problem.message}` : "none";
  return [
    `${p.name} (${p.api_base_url})`,
    { text: health, state: p.status },
    connection,
    failed ? `${failed} of ${total} failed` : `${total} delivered`,
    problem,
  ];
}

/** One row of the audit table. */
function auditRow(r) {
  return [
    clock(r.at_ms),
    r.sender_nick || r.sender_id,
    r.handler,
    r.question,
    r.answer,
    r.first_visible_ms == null ? "–" : `${r.first_visible_ms} ms`,
    { text: r.outcome, state: r.outcome === "failed" ? "down" : "ok" },
  ];
}

async function poll() {
  let s;
  try {
    const res = await consoleFetch("/console/api/status");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    s = await res.json();
  } catch (err) {
    $("st-updated").textContent = `status unavailable: ${err.message}`;
    return;
  }
  const tps = previous && s.now_ms > previous.now_ms
    ? (s.generated_tokens_total - previous.generated_tokens_total) / ((s.now_ms - previous.now_ms) / 1000)
    : 0;
  previous = s;
  const kvRatio = s.kv_blocks_total ? s.kv_blocks_used / s.kv_blocks_total : 0;
  $("st-model").textContent = s.model.name;
  $("st-model-detail").textContent = `${s.model.architecture} · ${s.model.quantization} · ctx ${s.model.context_length} · ${s.model.file}`;
  $("st-device").textContent = s.device;
  $("st-tps").textContent = tps.toFixed(1);
  $("st-queue").textContent = `${s.waiting} waiting · ${s.running} running`;
  $("st-kv").textContent = `${(kvRatio * 100).toFixed(1)} % (${s.kv_blocks_used}/${s.kv_blocks_total} blocks)`;
  $("st-requests").textContent = `${s.requests_total} total · ${s.requests_finished} finished · ${s.requests_cancelled} cancelled · ${s.requests_failed} failed`;
  charts.tps.push(tps);
  charts.queue.push(s.waiting);
  charts.kv.push(kvRatio * 100, 100);
  rows($("st-platforms"), s.platforms.map((p) => platformRow(p, s.im_deliveries)), "no IM connector runs in this server");
  rows($("st-audit"), s.audit.map(auditRow), "no IM messages yet");
  $("st-updated").textContent = `Last update ${new Date(s.now_ms).toLocaleTimeString()}.`;
  document.getElementById("page-status").dataset.polls = String(Number(document.getElementById("page-status").dataset.polls ?? 0) + 1);
}
