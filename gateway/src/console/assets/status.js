// The status page: polls /console/api/status every second while shown, computes tokens/s between polls
// from the server's own clock, and draws small live charts.
import { Sparkline } from "./charts.js";

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

/** Fill a `<tbody>` with rows of cells (text only). */
function rows(tbody, data, empty) {
  tbody.replaceChildren(...(data.length ? data : [[empty]]).map((cells) => {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = cell;
      if (cells.length === 1) td.colSpan = 3;
      tr.append(td);
    }
    return tr;
  }));
}

async function poll() {
  let s;
  try {
    const res = await fetch("/console/api/status");
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
  const delivered = (platform) => s.im_deliveries.filter((d) => d.platform === platform).reduce((n, d) => n + d.count, 0);
  const failed = (platform) => s.im_deliveries.filter((d) => d.platform === platform && d.outcome === "failed").reduce((n, d) => n + d.count, 0);
  rows($("st-platforms"), s.platforms.map((p) => [
    p.name, p.api_base_url,
    failed(p.name) ? `${failed(p.name)} of ${delivered(p.name)} deliveries failed` : `running · ${delivered(p.name)} delivered`,
  ]), "no IM connector runs in this server");
  rows($("st-deliveries"), s.im_deliveries.map((d) => [d.platform, d.outcome, String(d.count)]), "no IM deliveries yet");
  $("st-updated").textContent = `Last update ${new Date(s.now_ms).toLocaleTimeString()}.`;
  document.getElementById("page-status").dataset.polls = String(Number(document.getElementById("page-status").dataset.polls ?? 0) + 1);
}
