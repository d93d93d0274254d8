"""The official Feishu/Lark SDK for Python (lark-oapi on PyPI) against `hearth emulate feishu`.

Its `lark.ws.Client` finds the long connection through discovery on the emulator's domain, keeps it with
pings, receives `im.message.receive_v1` events posted by simulated users and answers them; its OpenAPI
client fetches a tenant token, replies and sends messages, and creates a CardKit card entity, sends it,
streams its element content and ends streaming mode through settings. The emulator's control API
(`/_emulator/api/...`) posts the messages and reads everything back. FEISHU_EMULATOR_URL is set by
run-feishu.sh.
"""

import json
import os
import sys
import threading
import uuid

import lark_oapi as lark
from lark_oapi.api.cardkit.v1 import (
    ContentCardElementRequest,
    ContentCardElementRequestBody,
    CreateCardRequest,
    CreateCardRequestBody,
    SettingsCardRequest,
    SettingsCardRequestBody,
)
from lark_oapi.api.im.v1 import (
    CreateMessageRequest,
    CreateMessageRequestBody,
    P2ImMessageReceiveV1,
    ReplyMessageRequest,
    ReplyMessageRequestBody,
)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from emulator_control import Emulator  # noqa: E402

BASE = os.environ["FEISHU_EMULATOR_URL"]
APP_ID = os.environ.get("FEISHU_APP_ID", "cli_a1b2c3d4e5f60718")
APP_SECRET = os.environ.get("FEISHU_APP_SECRET", "emulator-app-secret")
PATIENCE = 30.0

# The OpenAPI client: its domain is the emulator, as a deployment's would be open.feishu.cn.
CLIENT = lark.Client.builder().app_id(APP_ID).app_secret(APP_SECRET).domain(BASE).build()
FAILURES = []


def no_failures():
    assert not FAILURES, FAILURES


EMULATOR = Emulator(BASE, patience=PATIENCE, on_state=no_failures)
control = EMULATOR.call
wait_until = EMULATOR.wait_until


def checked(response, what):
    assert response.success(), f"{what}: code {response.code}, msg {response.msg}"
    return response


def streaming_card():
    return {
        "schema": "2.0",
        "config": {"update_multi": True, "streaming_mode": True, "summary": {"content": "thinking"}},
        "body": {"elements": [{"tag": "markdown", "content": "…", "element_id": "answer"}]},
    }


def answer_with_a_card(message):
    """Text reply (or a send into the group), then a card entity streamed in three snapshots and settled."""
    question = json.loads(message.content)["text"].replace("@_user_1", "").strip()
    text = json.dumps({"text": f"Got: {question}"})
    if message.chat_type == "group":
        body = CreateMessageRequestBody.builder().receive_id(message.chat_id).msg_type("text").content(text).build()
        request = CreateMessageRequest.builder().receive_id_type("chat_id").request_body(body).build()
        checked(CLIENT.im.v1.message.create(request), "send into the group")
    else:
        body = ReplyMessageRequestBody.builder().msg_type("text").content(text).uuid(str(uuid.uuid4())).build()
        request = ReplyMessageRequest.builder().message_id(message.message_id).request_body(body).build()
        checked(CLIENT.im.v1.message.reply(request), "text reply")

    body = CreateCardRequestBody.builder().type("card_json").data(json.dumps(streaming_card())).build()
    created = checked(CLIENT.cardkit.v1.card.create(CreateCardRequest.builder().request_body(body).build()), "card")
    card_id = created.data.card_id
    card_content = json.dumps({"type": "card", "data": {"card_id": card_id}})
    body = ReplyMessageRequestBody.builder().msg_type("interactive").content(card_content).build()
    request = ReplyMessageRequest.builder().message_id(message.message_id).request_body(body).build()
    checked(CLIENT.im.v1.message.reply(request), "card reply")

    answer = f"You said: {question}"
    sequence = 0
    for end in (4, 9, len(answer)):
        sequence += 1
        body = (
            ContentCardElementRequestBody.builder()
            .uuid(str(uuid.uuid4()))
            .content(answer[:end])
            .sequence(sequence)
            .build()
        )
        request = (
            ContentCardElementRequest.builder().card_id(card_id).element_id("answer").request_body(body).build()
        )
        checked(CLIENT.cardkit.v1.card_element.content(request), f"content {sequence}")

    # A stale sequence is refused, and the SDK surfaces the platform's code.
    body = ContentCardElementRequestBody.builder().content(answer).sequence(sequence).build()
    request = ContentCardElementRequest.builder().card_id(card_id).element_id("answer").request_body(body).build()
    stale = CLIENT.cardkit.v1.card_element.content(request)
    assert not stale.success() and stale.code == 300317, (stale.code, stale.msg)

    settings = json.dumps({"config": {"streaming_mode": False, "summary": {"content": answer}}})
    body = SettingsCardRequestBody.builder().settings(settings).uuid(str(uuid.uuid4())).sequence(sequence + 1).build()
    checked(
        CLIENT.cardkit.v1.card.settings(SettingsCardRequest.builder().card_id(card_id).request_body(body).build()),
        "settings",
    )


def on_message(data: P2ImMessageReceiveV1) -> None:
    """Return at once (the platform wants an answer within 3 s); answer on a thread."""
    message = data.event.message

    def run():
        try:
            answer_with_a_card(message)
        except Exception as err:  # noqa: BLE001 - reported to the test through FAILURES
            FAILURES.append(repr(err))

    threading.Thread(target=run, daemon=True).start()


def start_ws_client():
    handler = lark.EventDispatcherHandler.builder("", "").register_p2_im_message_receive_v1(on_message).build()
    ws = lark.ws.Client(APP_ID, APP_SECRET, event_handler=handler, domain=BASE, log_level=lark.LogLevel.INFO)
    threading.Thread(target=ws.start, daemon=True).start()


def settled_card(chat_id):
    def check(state):
        for chat in state["chats"]:
            if chat["chatId"] == chat_id:
                done = [c for c in chat["cards"] if not c["streamingMode"] and c["sequence"] == 4]
                return done[0] if done else None
        return None

    return check


def test_sdk_connects_answers_events_and_streams_a_card():
    start_ws_client()
    wait_until(lambda s: s["stats"]["liveConnections"] >= 1, "the SDK to connect")

    p2p = control("/_emulator/api/messages", {"chatType": "p2p", "userId": "alice", "text": "hello there"})
    group = control(
        "/_emulator/api/messages",
        {"chatType": "group", "chatId": "oc_sdk_group", "chatName": "SDK group", "userId": "bob",
         "name": "Bob", "text": "what is up", "mentionBot": True},
    )
    assert p2p["pushed"] and group["pushed"]

    for posted, question in ((p2p, "hello there"), (group, "what is up")):
        card = wait_until(settled_card(posted["chatId"]), f"a settled card in {posted['chatId']}")
        answer = f"You said: {question}"
        assert card["text"] == answer
        assert card["summary"] == answer
        ops = [op["api"] for op in card["history"]]
        assert ops == ["create", "send", "content", "content", "content", "settings"], ops
        streamed = [op["content"] for op in card["history"] if op["api"] == "content"]
        assert streamed == [answer[:4], answer[:9], answer]
        assert card["rejectedCalls"] == 1  # the stale sequence
        chat = control(f"/_emulator/api/chats/{posted['chatId']}")
        texts = [m["text"] for m in chat["messages"] if m["kind"] == "bot" and m["msgType"] == "text"]
        assert texts == [f"Got: {question}"]

    # Both events were answered with code 200 (nothing left to redeliver), and the SDK pinged with the
    # service_id of its URL.
    stats = wait_until(
        lambda s: s["stats"] if s["stats"]["eventsAcked"] == 2 and s["stats"]["pings"] >= 1 else None,
        "the SDK's responses",
    )
    assert stats["unacked"] == 0
    assert stats["redeliveries"] == 0
    assert stats["badServiceFrames"] == 0
    assert stats["undecodableFrames"] == 0
    assert stats["tokensIssued"] == 1
