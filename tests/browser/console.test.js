// End-to-end tests of the web console in headless Chromium, against a real `hearth serve` (SmolLM2) with
// the DingTalk connector attached to a real `hearth emulate dingtalk`. run.sh starts both and sets:
//   HEARTH_BASE_URL   http://127.0.0.1:PORT of hearth serve
//   EMULATOR_URL      http://127.0.0.1:PORT of the emulator
//   ADMIN_TOKEN       the server's admin token
//   SCREENSHOT_DIR    where the page screenshots go
//   CHROMIUM          the browser executable (default /usr/bin/chromium)
// Every test fails if the page requests anything that is not on loopback: the console must be served
// entirely from the binary. The server has an admin token, so the console's data needs it: every test but
// the "credential" one starts with the token already given (as the Admin page keeps it, in sessionStorage).
import { test, before, after, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BASE = process.env.HEARTH_BASE_URL;
const EMULATOR = process.env.EMULATOR_URL;
const ADMIN_TOKEN = process.env.ADMIN_TOKEN;
const SHOTS = process.env.SCREENSHOT_DIR ?? "target/console-screenshots";
assert.ok(BASE && EMULATOR && ADMIN_TOKEN, "run through tests/browser/run.sh (HEARTH_BASE_URL, EMULATOR_URL, ADMIN_TOKEN)");

let browser;
let page;
let offLoopback;
let pageErrors;
let consoleErrors;
let allowRefusals;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium", args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
});

beforeEach(async (t) => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, locale: "zh-CN" });
  if (!t.name.startsWith("credential")) {
    await context.addInitScript((token) => {
      if (sessionStorage.getItem("hearth.admin") === null) sessionStorage.setItem("hearth.admin", token);
    }, ADMIN_TOKEN);
  }
  page = await context.newPage();
  offLoopback = [];
  pageErrors = [];
  consoleErrors = [];
  // The only errors a page may log are the 401s of a wrong or missing token, which the admin and credential
  // tests send on purpose.
  allowRefusals = /^(admin|credential):/.test(t.name);
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });
  page.on("request", (request) => {
    const url = new URL(request.url());
    if (!["127.0.0.1", "localhost", "[::1]"].includes(url.hostname) && url.protocol !== "data:") offLoopback.push(request.url());
  });
  page.on("pageerror", (err) => pageErrors.push(err.message));
});

afterEach(async () => {
  await page.context().close();
  assert.deepEqual(offLoopback, [], "the console requested something off loopback");
  assert.deepEqual(pageErrors, [], "uncaught errors in the page");
  const unexpected = consoleErrors.filter((text) => !(allowRefusals && /status of 401/.test(text)));
  assert.deepEqual(unexpected, [], "errors in the browser console (a missing favicon is one)");
});

/** The engine's counters, read directly from the server. */
async function health() {
  const res = await fetch(`${BASE}/health`);
  return res.json();
}

/** Record the assistant message's text each time it changes while it is streaming. */
async function watchStreaming() {
  await page.evaluate(() => {
    window.__growth = [];
    new MutationObserver(() => {
      const msg = document.querySelector(".msg.assistant:last-child");
      if (msg?.dataset.state === "streaming") window.__growth.push(msg.querySelector(".body").textContent.length);
    }).observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true });
  });
}

test("chat: a typed message streams its answer token by token, rendered as Markdown", async () => {
  await page.goto(`${BASE}/#chat`);
  await page.locator("#chat-model").filter({ hasNotText: "…" }).waitFor();
  const model = (await health()).model;
  assert.equal(await page.locator("#model-name").textContent(), model);
  await page.fill("#max-tokens", "48");
  await page.fill("#temperature", "0");
  // SmolLM2 writes a token every few milliseconds, faster than the page's reads on a fast machine: the whole
  // answer can then land in one read and one render, and nothing would tell streaming from a single JSON
  // reply. A slow client link (Chromium's own network throttling, as in DevTools) delivers the SSE events
  // in 1460-byte packets a third of a second apart, whatever the engine's speed; the 48-token answer takes
  // about eight of them.
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Network.enable");
  await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: 4096, uploadThroughput: -1 });
  await watchStreaming();
  const response = page.waitForResponse((r) => r.url().endsWith("/v1/chat/completions"));
  await page.fill("#prompt", "Write a short list of three fruits, with one sentence about each.");
  await page.click("#send");
  assert.match((await response).headers()["content-type"], /^text\/event-stream/);
  await page.locator("#stop:not([disabled])").waitFor();
  const answer = page.locator(".msg.assistant").last();
  await page.locator(".msg.assistant[data-state=done]").waitFor({ timeout: 60_000 });
  const growth = await page.evaluate(() => window.__growth);
  const distinct = new Set(growth.filter((n) => n > 0));
  assert.ok(distinct.size >= 3, `the answer arrived in pieces while streaming, saw lengths ${JSON.stringify(growth)}`);
  assert.ok((await answer.locator(".body").textContent()).trim().length > 0);
  assert.ok((await answer.locator(".body ol > li").count()) >= 2, "the numbered list is rendered as <ol>");
  assert.match(await answer.locator(".meta").textContent(), /finish: (stop|length)/);
  assert.equal(await page.locator("#send").isDisabled(), false);

  await cdp.send("Network.emulateNetworkConditions", { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });

  // A second turn carries the first: user, assistant, user.
  const second = page.waitForRequest((r) => r.url().endsWith("/v1/chat/completions"));
  await page.fill("#prompt", "用中文说你好。");
  await page.click("#send");
  const body = JSON.parse((await second).postData());
  assert.deepEqual(body.messages.map((m) => m.role), ["user", "assistant", "user"]);
  assert.equal(body.messages[2].content, "用中文说你好。");
  assert.equal(body.max_tokens, 48);
  assert.equal(body.temperature, 0);
  await page.locator(".msg.assistant[data-state=done]").nth(1).waitFor({ timeout: 60_000 });
  assert.equal(await page.locator(".msg.user").nth(1).textContent(), "user用中文说你好。");
  await page.screenshot({ path: join(SHOTS, "chat.png"), fullPage: true });
});

test("chat: Stop aborts the stream and the server cancels the generation", async () => {
  const before = await health();
  await page.goto(`${BASE}/#chat`);
  await page.fill("#max-tokens", "2000");
  await page.fill("#temperature", "1");
  await page.fill("#prompt", "Tell me a very long story about a lighthouse keeper.");
  await page.click("#send");
  await page.locator(".msg.assistant[data-state=streaming] .body").filter({ hasText: /\S/ }).waitFor({ timeout: 60_000 });
  await page.click("#stop");
  await page.locator(".msg.assistant[data-state=stopped]").waitFor();
  assert.match(await page.locator(".msg.assistant .meta").textContent(), /^stopped after \d+ chunks$/);
  assert.equal(await page.locator("#send").isDisabled(), false);
  assert.equal(await page.locator("#stop").isDisabled(), true);
  // The server counts the request as cancelled, and stops running it, once it notices the closed connection.
  await page.waitForFunction(
    async (cancelled) => {
      const h = await (await fetch("/health")).json();
      return h.requests_cancelled > cancelled && h.running === 0;
    },
    before.requests_cancelled,
    { polling: 100, timeout: 10_000 },
  );
});

test("IM preview: a simulated DingTalk user's message gets an AI card that fills in live", async () => {
  await page.goto(`${BASE}/#im`);
  await page.locator("#im-version").filter({ hasText: "robot connection" }).waitFor();
  await page.fill("#im-user", "console-test-user");
  await page.fill("#im-nick", "测试用户");
  // The phone number must reach the status page's audit table masked.
  await page.fill("#im-text", "Hello! What is the capital of France? Call me at 13812345678.");
  await page.click("#im-send");
  await page.locator("#im-posted").filter({ hasText: "pushed to the robot" }).waitFor();
  const conversation = page.locator(".conv").filter({ hasText: "Hello! What is the capital of France?" });
  await conversation.locator(".entry.user .bubble").waitFor();
  const card = conversation.locator(".dcard");
  await card.waitFor({ timeout: 60_000 });
  await conversation.locator(".dcard[data-status=finished]").waitFor({ timeout: 90_000 });
  const cardId = await card.getAttribute("data-card");
  // The page shows what the emulator holds: the same final text and the same number of updates.
  const emulated = await (await fetch(`${EMULATOR}/_emulator/api/cards/${encodeURIComponent(cardId)}`)).json();
  assert.equal(emulated.status, "finished");
  assert.ok(emulated.text.trim().length > 0);
  assert.ok(emulated.updates.length >= 2, `the card was created, then streamed into and finalized: ${emulated.updates.length} updates`);
  const shown = (await card.locator(".text").textContent()).match(/[\p{L}\p{N}]+/gu) ?? [];
  assert.ok(shown.length > 0, "the card shows its text");
  for (const word of shown) assert.ok(emulated.text.includes(word), `${word} is in the card's text ${JSON.stringify(emulated.text)}`);
  await card.locator("summary").click();
  assert.equal(await card.locator(".timeline li").count(), emulated.updates.length);
  // The final frame, then the flowStatus that says the card is done ("finished").
  const timeline = await card.locator(".timeline li").allTextContents();
  assert.ok(timeline.some((line) => /finalize/.test(line)), `a finalize in ${JSON.stringify(timeline)}`);
  assert.match(timeline.at(-1), /finished/);
  await page.screenshot({ path: join(SHOTS, "im.png"), fullPage: true });
});

test("status: live figures and charts, polled every second, move with the load", async () => {
  await page.goto(`${BASE}/#status`);
  const model = (await health()).model;
  await page.locator("#st-model").filter({ hasText: model }).waitFor();
  assert.equal(await page.locator("#st-device").textContent(), "cpu");
  await page.locator("#st-platforms td").filter({ hasText: "dingtalk" }).waitFor();
  // Load the server while the page polls: the tokens/s figure must rise above zero.
  const load = fetch(`${BASE}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: "Count from one to fifty in words." }], max_tokens: 200, temperature: 0 }),
  });
  await page.waitForFunction(() => Number(document.getElementById("st-tps").textContent) > 0, null, { polling: 100, timeout: 60_000 });
  await (await load).json();
  await page.waitForFunction(() => Number(document.getElementById("chart-tps").dataset.points) >= 3, null, { polling: 100 });
  assert.match(await page.locator("#st-kv").textContent(), /^\d+\.\d % \(\d+\/\d+ blocks\)$/);
  assert.match(await page.locator("#st-requests").textContent(), /^\d+ total/);
  // The DingTalk connector's health, and the IM message of the preview test in the audit table, masked.
  await page.locator("#st-platforms td[data-state=ok]").filter({ hasText: "ok" }).waitFor();
  await page.locator("#st-platforms td").filter({ hasText: "connected since" }).waitFor();
  const audited = page.locator("#st-audit tr").filter({ hasText: "capital of France" });
  await audited.locator("td").filter({ hasText: "answered" }).waitFor();
  assert.match(await audited.textContent(), /Call me at \[masked\]/);
  assert.doesNotMatch(await page.locator("#page-status").textContent(), /13812345678/);
  await page.screenshot({ path: join(SHOTS, "status.png"), fullPage: true });
});

test("admin: the token unlocks the model list and reloads the skills", async () => {
  await page.goto(`${BASE}/#admin`);
  await page.fill("#admin-token", "wrong-token-wrong-token");
  await page.click("#admin-login button");
  await page.locator("#admin-error").filter({ hasText: "admin token" }).waitFor();
  await page.fill("#admin-token", ADMIN_TOKEN);
  await page.click("#admin-login button");
  const model = (await health()).model;
  await page.locator("#admin-models td").filter({ hasText: `${model} (active)` }).waitFor();
  assert.equal(await page.locator("#admin-error").isHidden(), true);
  await page.click("#reload-skills");
  await page.locator("#skills-result").filter({ hasText: /^dingtalk: .*help/ }).waitFor();
  assert.equal(await page.locator("#admin-error").isHidden(), true);
  await page.screenshot({ path: join(SHOTS, "admin.png"), fullPage: true });
});

test("credential: the console's data needs the admin token, which the Admin page takes", async () => {
  await page.goto(`${BASE}/#status`);
  await page.locator("#st-updated").filter({ hasText: "Enter the admin token on the Admin page" }).waitFor();
  assert.equal(await page.locator("#st-model").textContent(), "…");
  // The data itself is refused without the token.
  const refused = await page.evaluate(async () => (await fetch("/console/api/status")).status);
  assert.equal(refused, 401);
  await page.goto(`${BASE}/#admin`);
  await page.fill("#admin-token", ADMIN_TOKEN);
  await page.click("#admin-login button");
  const model = (await health()).model;
  await page.locator("#model-name").filter({ hasText: model }).waitFor();
  await page.goto(`${BASE}/#status`);
  await page.locator("#st-model").filter({ hasText: model }).waitFor();
});
