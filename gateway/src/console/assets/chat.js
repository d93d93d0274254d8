// The chat page: a multi-turn conversation streamed from POST /v1/chat/completions (stream: true),
// read with fetch + ReadableStream. Stop aborts the fetch; the server sees the connection close and
// cancels the generation.
import { renderMarkdown, escapeHtml } from "./markdown.js";
import { credentialChanged } from "./auth.js";

/** The conversation so far, as OpenAI messages (without the system prompt). */
const history = [];
/** The in-flight request's controller, or null. */
let inflight = null;

const $ = (id) => document.getElementById(id);

export function init() {
  for (const [id, key] of [["temperature", "t"], ["max-tokens", "n"], ["top-p", "p"], ["api-key", "k"], ["system-prompt", "s"]]) {
    const el = $(id);
    const saved = localStorage.getItem(`hearth.chat.${key}`);
    if (saved !== null) el.value = saved;
    el.addEventListener("change", () => {
      localStorage.setItem(`hearth.chat.${key}`, el.value);
      if (key === "k") credentialChanged();
    });
  }
  $("chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  $("stop").addEventListener("click", () => inflight?.abort());
  $("clear").addEventListener("click", () => {
    inflight?.abort();
    history.length = 0;
    $("messages").replaceChildren();
  });
}

export function show() {
  $("prompt").focus();
}

/** Append a message element; returns its body element. */
function addMessage(role, html, state) {
  const li = document.createElement("li");
  li.className = `msg ${role}`;
  li.dataset.state = state;
  li.innerHTML = `<div class="role">${role}</div><div class="body">${html}</div><div class="meta"></div>`;
  $("messages").append(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

/** Split an SSE buffer into complete events' data payloads; returns [payloads, rest]. */
export function takeEvents(buffer) {
  const events = buffer.replace(/\r\n/g, "\n").split("\n\n");
  const rest = events.pop();
  const payloads = events.map((event) =>
    event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n"),
  ).filter((p) => p !== "");
  return [payloads, rest];
}

async function send() {
  const text = $("prompt").value.trim();
  if (!text || inflight) return;
  $("prompt").value = "";
  $("chat-error").hidden = true;
  history.push({ role: "user", content: text });
  addMessage("user", escapeHtml(text), "done");
  const li = addMessage("assistant", "", "streaming");
  const body = li.querySelector(".body");
  const meta = li.querySelector(".meta");

  const messages = [...history];
  const system = $("system-prompt").value.trim();
  if (system) messages.unshift({ role: "system", content: system });
  const request = {
    model: $("chat-model").textContent,
    messages,
    stream: true,
    temperature: Number($("temperature").value),
    max_tokens: Number($("max-tokens").value),
    top_p: Number($("top-p").value),
  };
  const headers = { "content-type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.authorization = `Bearer ${key}`;

  inflight = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  let answer = "";
  let finish = null;
  let tokens = 0;
  const started = performance.now();
  try {
    const res = await fetch("/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(request), signal: inflight.signal });
    if (!res.ok) {
      const err = await res.json().catch(() => ({}));
      throw new Error(err.error?.message ?? `HTTP ${res.status}`);
    }
    const reader = res.body.getReader();
    // One decoder for the whole stream, so a multi-byte character (Chinese) split across chunks is kept whole.
    const decoder = new TextDecoder("utf-8");
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const [payloads, rest] = takeEvents(buffer);
      buffer = rest;
      for (const payload of payloads) {
        if (payload === "[DONE]") continue;
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new Error(chunk.error.message ?? "generation failed");
        const choice = chunk.choices?.[0];
        if (choice?.delta?.content) {
          answer += choice.delta.content;
          tokens++;
          body.innerHTML = renderMarkdown(answer);
          li.scrollIntoView({ block: "end" });
        }
        if (choice?.finish_reason) finish = choice.finish_reason;
      }
    }
    li.dataset.state = "done";
    meta.textContent = `${tokens} chunks · ${((performance.now() - started) / 1000).toFixed(1)} s · finish: ${finish ?? "?"}`;
  } catch (err) {
    if (err.name === "AbortError") {
      li.dataset.state = "stopped";
      meta.textContent = `stopped after ${tokens} chunks`;
    } else {
      li.dataset.state = "error";
      $("chat-error").textContent = err.message;
      $("chat-error").hidden = false;
    }
  } finally {
    body.innerHTML = renderMarkdown(answer);
    if (answer) history.push({ role: "assistant", content: answer });
    inflight = null;
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}
