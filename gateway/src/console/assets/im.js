// The IM preview: the attached emulator's conversations (DingTalk's, or Feishu's chats), with each card
// rendered as the platform's client shows it (its current text and status) and its update timeline. It follows the emulator's change feed
// (long-polling /console/api/im/wait, which hearth proxies to the emulator's control API) and re-reads the
// state after each change, so cards fill in live as the connector streams into them.
import { renderMarkdown, escapeHtml } from "./markdown.js";
import { consoleFetch } from "./auth.js";

const $ = (id) => document.getElementById(id);
let running = false;
let controller = null;

export function init() {
  $("im-form").addEventListener("submit", (e) => {
    e.preventDefault();
    post();
  });
}

export function show() {
  if (running) return;
  running = true;
  follow();
}

export function hide() {
  running = false;
  controller?.abort();
}

async function getJson(url, options = {}) {
  const res = await consoleFetch(url, options);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error?.message ?? body.error ?? `HTTP ${res.status}`);
  return body;
}

/** Render, then wait for the next change, until the page is hidden. */
async function follow() {
  let version = 0;
  while (running) {
    controller = new AbortController();
    try {
      const state = await getJson("/console/api/im/state", { signal: controller.signal });
      $("im-error").hidden = true;
      feishu = Boolean(state.chats);
      render(state);
      version = state.version;
      await getJson(`/console/api/im/wait?after=${version}&timeout_ms=25000`, { signal: controller.signal });
    } catch (err) {
      if (err.name === "AbortError") return;
      $("im-error").textContent = `Cannot read the emulator: ${err.message}`;
      $("im-error").hidden = false;
      // The emulator is down or not attached: try again in a while rather than spinning.
      await new Promise((resolve) => setTimeout(resolve, 3000));
    }
  }
}

const time = (ms) => new Date(ms).toLocaleTimeString();

function renderCard(card) {
  if (!card) return `<div class="dcard" data-status="missing"><span class="status">card not found</span></div>`;
  const timeline = card.updates.map((u) => {
    const flags = [u.isFull ? "full" : null, u.isFinalize ? "finalize" : null, u.isError ? "error" : null].filter(Boolean).join(", ");
    const content = u.content == null ? "" : ` “${escapeHtml(u.content.length > 60 ? `…${u.content.slice(-60)}` : u.content)}”`;
    return `<li>${time(u.atMs)} <b>${escapeHtml(u.api)}</b>${flags ? ` (${flags})` : ""} → ${escapeHtml(u.statusAfter)}${content}</li>`;
  }).join("");
  return `<div class="dcard" data-status="${escapeHtml(card.status)}" data-card="${escapeHtml(card.outTrackId)}">
    <span class="status">AI card · ${escapeHtml(card.status)}</span>
    <div class="text body">${renderMarkdown(card.text)}</div>
    <details><summary class="hint">${card.updates.length} updates${card.rejectedCalls ? ` · ${card.rejectedCalls} rejected` : ""}</summary>
    <ol class="timeline">${timeline}</ol></details>
  </div>`;
}

/** A Feishu CardKit card: its text, streaming or finished (with its chat-list summary), and its calls. */
function renderFeishuCard(card) {
  if (!card) return `<div class="dcard" data-status="missing"><span class="status">card not found</span></div>`;
  const status = card.streamingMode ? "streaming" : "finished";
  const timeline = card.history.map((op) => {
    const seq = op.sequence == null ? "" : ` #${op.sequence}`;
    const content = op.content == null || op.api !== "content" ? "" : ` “${escapeHtml(op.content.length > 60 ? `…${op.content.slice(-60)}` : op.content)}”`;
    return `<li>${time(op.atMs)} <b>${escapeHtml(op.api)}</b>${seq} → ${op.streamingModeAfter ? "streaming" : "not streaming"}${content}</li>`;
  }).join("");
  const summary = !card.streamingMode && card.summary ? ` · “${escapeHtml(card.summary)}”` : "";
  return `<div class="dcard" data-status="${status}" data-card="${escapeHtml(card.cardId)}">
    <span class="status">card · ${status}${summary}</span>
    <div class="text body">${renderMarkdown(card.text)}</div>
    <details><summary class="hint">${card.history.length} calls${card.rejectedCalls ? ` · ${card.rejectedCalls} refused` : ""}</summary>
    <ol class="timeline">${timeline}</ol></details>
  </div>`;
}

/** Feishu's chats: user messages, the bot's cards (replies) and text replies. */
function renderFeishu(state) {
  return state.chats.map((chat) => {
    const cards = new Map(chat.cards.map((c) => [c.cardId, c]));
    const entries = chat.messages.map((m) => {
      if (m.kind === "user") {
        const unpushed = m.pushed ? "" : " · not pushed";
        return `<div class="entry user"><small>${escapeHtml(m.name)} · ${time(m.atMs)}${unpushed}</small><br><span class="bubble">${escapeHtml(m.text)}</span></div>`;
      }
      if (m.cardId) return `<div class="entry card"><small>bot · ${time(m.atMs)}</small>${renderFeishuCard(cards.get(m.cardId))}</div>`;
      return `<div class="entry robot"><small>bot (${escapeHtml(m.msgType)} reply) · ${time(m.atMs)}</small><br><span class="bubble">${escapeHtml(m.text)}</span></div>`;
    }).join("");
    return `<div class="conv" data-conversation="${escapeHtml(chat.chatId)}"><h3>${escapeHtml(chat.name)} <small>${escapeHtml(chat.chatType)}</small></h3>${entries}</div>`;
  }).join("");
}

function render(state) {
  $("im-version").textContent = `(emulator version ${state.version}, ${state.connections.length} robot connection${state.connections.length === 1 ? "" : "s"})`;
  const open = new Set([...document.querySelectorAll(".dcard details[open]")].map((d) => d.closest(".dcard").dataset.card));
  const html = state.chats ? renderFeishu(state) : state.conversations.map((conv) => {
    const cards = new Map(conv.cards.map((c) => [c.outTrackId, c]));
    const entries = conv.messages.map((m) => {
      if (m.kind === "user") {
        return `<div class="entry user"><small>${escapeHtml(m.senderNick)} · ${time(m.atMs)}</small><br><span class="bubble">${escapeHtml(m.text)}</span></div>`;
      }
      if (m.kind === "card") return `<div class="entry card"><small>robot · ${time(m.atMs)}</small>${renderCard(cards.get(m.outTrackId))}</div>`;
      return `<div class="entry robot"><small>robot (${escapeHtml(m.via)}) · ${time(m.atMs)}</small><br><span class="bubble">${escapeHtml(m.text)}</span></div>`;
    }).join("");
    return `<div class="conv" data-conversation="${escapeHtml(conv.conversationId)}"><h3>${escapeHtml(conv.title)} <small>${escapeHtml(conv.kind)}</small></h3>${entries}</div>`;
  }).join("");
  $("conversations").innerHTML = html || `<p class="hint">No conversations yet: send a message as a user.</p>`;
  for (const id of open) document.querySelector(`.dcard[data-card="${CSS.escape(id)}"] details`)?.setAttribute("open", "");
}

/** The message as the attached emulator takes it: Feishu's chats are told apart by `chats` in its state. */
function feishuMessage(kind) {
  const message = {
    chatType: kind === "group" ? "group" : "p2p",
    userId: $("im-user").value.trim(),
    name: $("im-nick").value.trim() || null,
    text: $("im-text").value,
    mentionBot: true,
  };
  if (kind === "group") message.chatId = $("im-group").value.trim() || "oc_group1";
  return message;
}

let feishu = false;

async function post() {
  const kind = $("im-kind").value;
  const message = feishu ? feishuMessage(kind) : {
    conversationType: kind,
    userId: $("im-user").value.trim(),
    nick: $("im-nick").value.trim() || null,
    text: $("im-text").value,
    atBot: true,
  };
  if (kind === "group" && !feishu) message.conversationId = $("im-group").value.trim() || "group-1";
  try {
    const posted = await getJson("/console/api/im/messages", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(message),
    });
    $("im-text").value = "";
    $("im-posted").textContent = `Posted to ${posted.conversationId ?? posted.chatId} (${posted.pushed ? "pushed to the robot" : "not pushed"}).`;
  } catch (err) {
    $("im-posted").textContent = `Not posted: ${err.message}`;
  }
}
