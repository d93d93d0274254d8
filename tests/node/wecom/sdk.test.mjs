// The official WeCom intelligent-robot SDK for Node (npm @wecom/aibot-node-sdk, pinned in package.json)
// against `hearth emulate wecom` (WECOM_EMULATOR_URL, set by ../run-wecom.sh).
//
// The SDK's WebSocket URL is only a default: WSClient takes a documented `wsUrl` option, so it is pointed
// at the emulator without patching. The test posts messages as simulated users through the emulator's
// control API and asserts on the emulator's read-back of what the SDK sent.

import assert from "node:assert/strict";
import { test } from "node:test";

import { WSClient } from "@wecom/aibot-node-sdk";

import { emulator } from "../control.mjs";

const BASE = process.env.WECOM_EMULATOR_URL;
assert.ok(BASE, "WECOM_EMULATOR_URL is set by run-wecom.sh");
const WS_URL = BASE.replace(/^http/, "ws");
const BOT_ID = process.env.WECOM_BOT_ID ?? "aibemulatorbot";
const SECRET = process.env.WECOM_SECRET ?? "emulator-bot-secret";
const quiet = { debug() {}, info() {}, warn: (...a) => console.warn(...a), error: (...a) => console.error(...a) };

const { control, waitUntil } = emulator(BASE);

function client(options = {}) {
  return new WSClient({ botId: BOT_ID, secret: SECRET, wsUrl: WS_URL, heartbeatInterval: 500, logger: quiet, ...options });
}

function once(emitter, event) {
  return new Promise((resolve, reject) => {
    emitter.once(event, resolve);
    emitter.once("error", reject);
  });
}

test("the Node SDK subscribes, receives messages and streams replies to finish", async () => {
  const bot = client();
  const acks = [];
  bot.on("message.text", async (frame) => {
    const question = frame.body.text.content;
    const streamId = `node-${frame.body.msgid}`;
    const answer = `You said: ${question}`;
    // Full snapshots, the same stream.id, then finish; each waits for the emulator's acknowledgement.
    for (const [content, finish] of [["<think></think>", false], [answer.slice(0, 8), false], [answer, true]]) {
      acks.push(await bot.replyStream(frame, streamId, content, finish));
    }
  });
  const authenticated = once(bot, "authenticated");
  bot.connect();
  try {
    await authenticated;
    const single = await control("/_emulator/api/messages", { chattype: "single", userid: "nora", text: "hello node" });
    const group = await control("/_emulator/api/messages", {
      chattype: "group", chatid: "wrNodeGroup", userid: "ned", text: "hi from the group",
    });
    for (const [posted, question] of [[single, "hello node"], [group, "@hearth hi from the group"]]) {
      const stream = await waitUntil(
        (s) => s.streams.find((k) => k.msgid === posted.msgid && k.finish),
        `the finished stream of ${posted.msgid}`,
      );
      const answer = `You said: ${question}`;
      assert.equal(stream.id, `node-${posted.msgid}`);
      assert.equal(stream.content, answer);
      assert.equal(stream.status, "finished");
      assert.deepEqual(stream.updates.map((u) => [u.content, u.finish, u.errcode, u.via]), [
        ["<think></think>", false, 0, "respond_msg"],
        [answer.slice(0, 8), false, 0, "respond_msg"],
        [answer, true, 0, "respond_msg"],
      ]);
      const message = await control(`/_emulator/api/messages/${posted.msgid}`);
      assert.equal(message.state, "answered");
      assert.equal(message.pushes, 1);
    }
    assert.ok(acks.every((ack) => ack.errcode === 0), JSON.stringify(acks));
    // A proactive send into a chat the user opened, acknowledged through the SDK's reply queue.
    const sent = await bot.sendMessage("nora", { msgtype: "markdown", markdown: { content: "**proactive**" } });
    assert.equal(sent.errcode, 0);
    const conversation = await control("/_emulator/api/conversations/nora");
    assert.deepEqual(conversation.entries.map((e) => e.kind), ["user", "stream", "robot"]);
    assert.equal(conversation.entries[2].via, "send_msg");
    // The SDK's heartbeat (every 500 ms here) is acknowledged.
    const stats = await waitUntil((s) => s.stats.pings_acked >= 2 && s.stats, "the SDK's pings");
    assert.equal(stats.subscribes_ok, 1);
    assert.equal(stats.replies_refused, 0);
  } finally {
    bot.disconnect();
  }
});

test("a second SDK client for the same bot takes the connection over", async () => {
  const first = client();
  const firstUp = once(first, "authenticated");
  const replaced = new Promise((resolve) => first.on("event", (frame) => {
    if (frame.body?.event?.eventtype === "disconnected_event") resolve(frame);
  }));
  first.connect();
  await firstUp;
  const second = client();
  const secondUp = once(second, "authenticated");
  second.connect();
  try {
    await secondUp;
    const event = await replaced;
    assert.equal(event.body.aibotid, BOT_ID);
    await waitUntil((s) => s.stats.takeovers >= 1 && s.connections.filter((c) => c.active).length === 1, "the takeover");
  } finally {
    first.disconnect();
    second.disconnect();
  }
});
