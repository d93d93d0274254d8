// The official DingTalk Stream SDK for Node (npm dingtalk-stream, pinned in ../package.json) against
// `hearth emulate dingtalk` (DINGTALK_EMULATOR_URL, set by ../run-dingtalk.sh).
//
// The SDK hard-codes https://api.dingtalk.com/v1.0/gateway/connections/open and
// https://oapi.dingtalk.com/gettoken and reads no option or environment variable for them, but it sends
// every HTTP call through axios's default instance: one request interceptor on that instance rewrites both
// hosts to the emulator. The WebSocket endpoint comes back from the open call, so it needs nothing.
// The test posts messages as simulated users through the emulator's control API and reads the result back.

import assert from "node:assert/strict";
import { test } from "node:test";

import axios from "axios";
import { DWClient, TOPIC_ROBOT } from "dingtalk-stream";

import { emulatorControl } from "../emulator-control.mjs";

const BASE = process.env.DINGTALK_EMULATOR_URL;
assert.ok(BASE, "DINGTALK_EMULATOR_URL is set by run-dingtalk.sh");
const CLIENT_ID = process.env.DINGTALK_CLIENT_ID ?? "dingemulatorappkey";
const CLIENT_SECRET = process.env.DINGTALK_CLIENT_SECRET ?? "emulator-app-secret";
const TEMPLATE = "382e4302-551d-4880-bf29-a30acfab2e71.schema";

// What a deployment does to aim the SDK at the emulator: rewrite the platform hosts on axios's default
// instance, which the SDK shares (it is hoisted to one copy by npm).
const HOSTS = ["https://api.dingtalk.com", "https://oapi.dingtalk.com"];
axios.interceptors.request.use((config) => {
  for (const host of HOSTS) {
    if (config.url?.startsWith(host)) config.url = BASE + config.url.slice(host.length);
  }
  return config;
});

const { control, waitUntil } = emulatorControl(BASE);

function conversation(state, id) {
  return state.conversations.find((c) => c.conversationId === id);
}

test("the Node SDK connects, ACKs, answers pings and replies with a card and a webhook message", async () => {
  const client = new DWClient({ clientId: CLIENT_ID, clientSecret: CLIENT_SECRET });
  // The legacy token call the SDK makes; its token works on the new-style API too.
  const token = await client.getAccessToken();
  assert.match(token, /^[0-9a-f]{32}$/);
  const api = (method, path, data) =>
    axios({ method, url: `https://api.dingtalk.com${path}`, data, headers: { "x-acs-dingtalk-access-token": token } });

  client.registerCallbackListener(TOPIC_ROBOT, async (downstream) => {
    // ACK at once, as the platform expects, then answer.
    client.socketCallBackResponse(downstream.headers.messageId, null);
    const message = JSON.parse(downstream.data);
    const question = message.text.content.trim();
    const answer = `You said: ${question}`;
    const outTrackId = `node-${message.msgId}`;
    const space = message.conversationType === "2"
      ? `dtv1.card//IM_GROUP.${message.conversationId}`
      : `dtv1.card//IM_ROBOT.${message.senderStaffId}`;
    await api("post", "/v1.0/card/instances/createAndDeliver", {
      cardTemplateId: TEMPLATE,
      outTrackId,
      cardData: { cardParamMap: { content: "", flowStatus: "1" } },
      callbackType: "STREAM",
      openSpaceId: space,
      userIdType: 1,
      imGroupOpenDeliverModel: { robotCode: CLIENT_ID },
      imRobotOpenDeliverModel: { spaceType: "IM_ROBOT", robotCode: CLIENT_ID },
    });
    for (const [n, isFinalize] of [[1, false], [2, true]]) {
      await api("put", "/v1.0/card/streaming", {
        outTrackId, guid: `${outTrackId}-${n}`, key: "content",
        content: isFinalize ? answer : answer.slice(0, 4), isFull: true, isFinalize, isError: false,
      });
    }
    await api("put", "/v1.0/card/instances", {
      outTrackId, cardData: { cardParamMap: { flowStatus: "3" } }, cardUpdateOptions: { updateCardDataByKey: true },
    });
    await axios.post(message.sessionWebhook, { msgtype: "text", text: { content: answer } });
  });
  await client.connect();
  try {
    await waitUntil((s) => s.stats.liveConnections >= 1, "the SDK to connect");
    const single = await control("/_emulator/api/messages", { conversationType: "single", userId: "nora", text: "hello node" });
    const group = await control("/_emulator/api/messages", {
      conversationType: "group", conversationId: "cidNodeGroup", userId: "ned", text: "hi from the group", atBot: true,
    });
    for (const [posted, question] of [[single, "hello node"], [group, "hi from the group"]]) {
      const card = await waitUntil((s) => {
        const found = conversation(s, posted.conversationId);
        const cards = found?.cards.filter((c) => c.status === "finished" && c.flowStatus === "3") ?? [];
        const replied = found?.messages.some((m) => m.kind === "robot" && m.via === "sessionWebhook");
        return replied && cards[0];
      }, `the answer in ${posted.conversationId}`);
      assert.equal(card.text, `You said: ${question}`);
      assert.deepEqual(card.updates.map((u) => u.api), ["createAndDeliver", "streaming", "streaming", "update"]);
    }
    // Both pushes ACKed (nothing left to redeliver), and the SDK's ping ACKs echoed the data.
    const stats = await waitUntil(
      (s) => s.stats.callbacksAcked === 2 && s.stats.pingsAcked >= 1 && s.stats,
      "the SDK's ACKs",
    );
    assert.equal(stats.unacked, 0);
    assert.equal(stats.badPingAcks, 0);
    assert.equal(stats.redeliveries, 0);
    assert.ok(stats.tokensIssued >= 1);
  } finally {
    client.disconnect();
  }
});
