// The official Feishu/Lark SDK for Node (npm @larksuiteoapi/node-sdk, pinned in ../package.json) against
// `hearth emulate feishu` (FEISHU_EMULATOR_URL, set by ../run-feishu.sh).
//
// Both clients take the emulator as their `domain`, as a deployment would take https://open.feishu.cn:
// `WSClient` finds the long connection through discovery there (`POST /callback/ws/endpoint`) and `Client`
// sends its OpenAPI calls there. The test posts messages as simulated users through the emulator's control
// API and reads the result back.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { test } from "node:test";

import * as lark from "@larksuiteoapi/node-sdk";

import { emulator } from "../control.mjs";

const BASE = process.env.FEISHU_EMULATOR_URL;
assert.ok(BASE, "FEISHU_EMULATOR_URL is set by run-feishu.sh");
const APP_ID = process.env.FEISHU_APP_ID ?? "cli_a1b2c3d4e5f60718";
const APP_SECRET = process.env.FEISHU_APP_SECRET ?? "emulator-app-secret";

// Errors of the reply chains the event handler starts; reported at the next state check.
const failures = [];
const { control, waitUntil } = emulator(BASE, { onState: () => assert.deepEqual(failures, []) });

function checked(response, what) {
  assert.equal(response?.code, 0, `${what}: ${JSON.stringify(response)}`);
  return response;
}

// Fatal only: the client logs every refused call as an error, and the test makes one on purpose (the stale
// sequence); every call's code is asserted instead.
const client = new lark.Client({ appId: APP_ID, appSecret: APP_SECRET, domain: BASE, loggerLevel: lark.LoggerLevel.fatal });

const streamingCard = {
  schema: "2.0",
  config: { update_multi: true, streaming_mode: true, summary: { content: "thinking" } },
  body: { elements: [{ tag: "markdown", content: "…", element_id: "answer" }] },
};

/** Text reply (or a send into the group), then a card entity streamed in three snapshots and settled. */
async function answerWithACard(message) {
  const question = JSON.parse(message.content).text.replace("@_user_1", "").trim();
  const text = JSON.stringify({ text: `Got: ${question}` });
  if (message.chat_type === "group") {
    checked(
      await client.im.v1.message.create({
        params: { receive_id_type: "chat_id" },
        data: { receive_id: message.chat_id, msg_type: "text", content: text },
      }),
      "send into the group",
    );
  } else {
    checked(
      await client.im.v1.message.reply({
        path: { message_id: message.message_id },
        data: { msg_type: "text", content: text, uuid: randomUUID() },
      }),
      "text reply",
    );
  }
  const created = checked(
    await client.cardkit.v1.card.create({ data: { type: "card_json", data: JSON.stringify(streamingCard) } }),
    "card",
  );
  const cardId = created.data.card_id;
  checked(
    await client.im.v1.message.reply({
      path: { message_id: message.message_id },
      data: { msg_type: "interactive", content: JSON.stringify({ type: "card", data: { card_id: cardId } }) },
    }),
    "card reply",
  );
  const answer = `You said: ${question}`;
  let sequence = 0;
  for (const end of [4, 9, answer.length]) {
    sequence += 1;
    checked(
      await client.cardkit.v1.cardElement.content({
        path: { card_id: cardId, element_id: "answer" },
        data: { uuid: randomUUID(), content: answer.slice(0, end), sequence },
      }),
      `content ${sequence}`,
    );
  }
  // A stale sequence is refused with the platform's code (the SDK throws on the HTTP 400).
  let stale;
  try {
    stale = await client.cardkit.v1.cardElement.content({
      path: { card_id: cardId, element_id: "answer" },
      data: { content: answer, sequence },
    });
  } catch (err) {
    stale = err?.response?.data ?? { thrown: String(err) };
  }
  assert.equal(stale?.code, 300317, JSON.stringify(stale));
  checked(
    await client.cardkit.v1.card.settings({
      path: { card_id: cardId },
      data: {
        settings: JSON.stringify({ config: { streaming_mode: false, summary: { content: answer } } }),
        uuid: randomUUID(),
        sequence: sequence + 1,
      },
    }),
    "settings",
  );
}

function settledCard(state, chatId) {
  const chat = state.chats.find((c) => c.chatId === chatId);
  return chat?.cards.find((c) => !c.streamingMode && c.sequence === 4);
}

test("the Node SDK connects, answers events and streams a CardKit card", async () => {
  const dispatcher = new lark.EventDispatcher({}).register({
    "im.message.receive_v1": async (data) => {
      // Answer at once (the platform wants a response within 3 s); the reply runs on.
      answerWithACard(data.message).catch((err) => failures.push(String(err?.stack ?? err)));
    },
  });
  const ws = new lark.WSClient({ appId: APP_ID, appSecret: APP_SECRET, domain: BASE, loggerLevel: lark.LoggerLevel.warn });
  ws.start({ eventDispatcher: dispatcher });
  try {
    await waitUntil((s) => s.stats.liveConnections >= 1, "the SDK to connect");
    const p2p = await control("/_emulator/api/messages", { chatType: "p2p", userId: "nora", text: "hello node" });
    const group = await control("/_emulator/api/messages", {
      chatType: "group", chatId: "oc_node_group", userId: "ned", text: "hi from the group", mentionBot: true,
    });
    assert.ok(p2p.pushed && group.pushed);
    for (const [posted, question] of [[p2p, "hello node"], [group, "hi from the group"]]) {
      const card = await waitUntil((s) => settledCard(s, posted.chatId), `a settled card in ${posted.chatId}`);
      const answer = `You said: ${question}`;
      assert.equal(card.text, answer);
      assert.equal(card.summary, answer);
      assert.deepEqual(card.history.map((op) => op.api), ["create", "send", "content", "content", "content", "settings"]);
      assert.deepEqual(
        card.history.filter((op) => op.api === "content").map((op) => op.content),
        [answer.slice(0, 4), answer.slice(0, 9), answer],
      );
      assert.equal(card.rejectedCalls, 1);
      const chat = await control(`/_emulator/api/chats/${posted.chatId}`);
      const texts = chat.messages.filter((m) => m.kind === "bot" && m.msgType === "text").map((m) => m.text);
      assert.deepEqual(texts, [`Got: ${question}`]);
    }
    // Both events answered with code 200 (nothing left to redeliver); the SDK pinged with its service_id.
    const stats = await waitUntil((s) => s.stats.eventsAcked === 2 && s.stats.pings >= 1 && s.stats, "the SDK's responses");
    assert.equal(stats.unacked, 0);
    assert.equal(stats.redeliveries, 0);
    assert.equal(stats.badServiceFrames, 0);
    assert.equal(stats.undecodableFrames, 0);
    assert.ok(stats.tokensIssued >= 1);
  } finally {
    ws.close({ force: true });
  }
});
