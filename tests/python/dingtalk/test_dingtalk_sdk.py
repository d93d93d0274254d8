"""The official DingTalk Stream SDK (dingtalk-stream on PyPI) against `hearth emulate dingtalk`.

The SDK connects with its own open call and WebSocket, receives bot messages posted by simulated users,
ACKs them, answers pings, and streams an AI card with its own AICardReplier. The emulator's control API
(`/_emulator/api/...`) posts the messages and reads the cards back. DINGTALK_EMULATOR_URL is set by run-dingtalk.sh.
"""

import asyncio
import os
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from emulator_control import Control  # noqa: E402

BASE = os.environ["DINGTALK_EMULATOR_URL"]
# The SDK reads its OpenAPI base from this variable when it is imported.
os.environ["DINGTALK_OPENAPI_ENDPOINT"] = BASE

import dingtalk_stream  # noqa: E402
from dingtalk_stream import card_replier, chatbot, stream, utils  # noqa: E402

# Belt and braces: redirect the module-level URL constants too, in case an SDK version hardcodes them.
for module in (utils, card_replier, chatbot, stream):
    module.DINGTALK_OPENAPI_ENDPOINT = BASE
stream.DingTalkStreamClient.OPEN_CONNECTION_API = BASE + "/v1.0/gateway/connections/open"

CLIENT_ID = os.environ.get("DINGTALK_CLIENT_ID", "dingemulatorappkey")
CLIENT_SECRET = os.environ.get("DINGTALK_CLIENT_SECRET", "emulator-app-secret")
TEMPLATE = "382e4302-551d-4880-bf29-a30acfab2e71.schema"
PATIENCE = 30.0


control = Control(BASE)
wait_until = control.wait_until


class StreamingCardBot(dingtalk_stream.ChatbotHandler):
    """Answers every message with an AI card streamed in three full snapshots, then finalized."""

    async def process(self, callback):
        incoming = dingtalk_stream.ChatbotMessage.from_dict(callback.data)
        question = incoming.text.content.strip()
        replier = dingtalk_stream.AICardReplier(self.dingtalk_client, incoming)
        card_id = await replier.async_start(TEMPLATE, {"content": ""})
        answer = f"You said: {question}"
        for end in (4, 9, len(answer)):
            await replier.async_streaming(card_id, "content", answer[:end], append=False, finished=False, failed=False)
        await replier.async_streaming(card_id, "content", answer, append=False, finished=True, failed=False)
        return dingtalk_stream.AckMessage.STATUS_OK, "OK"


def start_sdk_client():
    credential = dingtalk_stream.Credential(CLIENT_ID, CLIENT_SECRET)
    client = dingtalk_stream.DingTalkStreamClient(credential)
    client.register_callback_handler(dingtalk_stream.ChatbotMessage.TOPIC, StreamingCardBot())
    thread = threading.Thread(target=lambda: asyncio.run(client.start()), daemon=True)
    thread.start()
    return client


def card_in(conversation_id):
    def check(state):
        for conversation in state["conversations"]:
            if conversation["conversationId"] == conversation_id:
                finished = [c for c in conversation["cards"] if c["status"] == "finished"]
                return finished[0] if finished else None
        return None

    return check


def test_sdk_receives_acks_and_streams_an_ai_card():
    start_sdk_client()
    wait_until(lambda s: s["stats"]["liveConnections"] >= 1, "the SDK to connect")

    single = control("/_emulator/api/messages", {"conversationType": "single", "userId": "alice", "text": "hello there"})
    group = control(
        "/_emulator/api/messages",
        {"conversationType": "group", "conversationId": "cidSdkGroup", "conversationTitle": "SDK group",
         "userId": "bob", "nick": "Bob", "text": "what is up", "atBot": True},
    )
    assert single["pushed"] and group["pushed"]

    for posted, question in ((single, "hello there"), (group, "what is up")):
        card = wait_until(card_in(posted["conversationId"]), f"a finished card in {posted['conversationId']}")
        assert card["text"] == f"You said: {question}"
        assert card["cardTemplateId"] == TEMPLATE
        apis = [u["api"] for u in card["updates"]]
        # The SDK's two-step path: create, deliver, then three snapshots and the finalizing frame.
        assert apis == ["create", "deliver", "streaming", "streaming", "streaming", "streaming"], apis
        streamed = [u for u in card["updates"] if u["api"] == "streaming"]
        assert all(u["isFull"] for u in streamed)
        assert [u["isFinalize"] for u in streamed] == [False, False, False, True]
        assert len({u["guid"] for u in streamed}) == 4

    # Both pushes were ACKed by the SDK (nothing left to redeliver), and its ping ACKs echoed the data.
    stats = wait_until(
        lambda s: s["stats"] if s["stats"]["callbacksAcked"] == 2 and s["stats"]["pingsAcked"] >= 1 else None,
        "the SDK's ACKs",
    )
    assert stats["unacked"] == 0
    assert stats["badPingAcks"] == 0
    assert stats["redeliveries"] == 0
