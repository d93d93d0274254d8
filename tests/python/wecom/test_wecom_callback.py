"""WeCom URL mode of `hearth emulate wecom` (WECOM_EMULATOR_URL, set by ../run-wecom.sh), checked against an
independent implementation of the documented algorithm (shared/protocols/wecom.md §3): AES-256-CBC from
Python's `cryptography` with the padding, layout and signature written here from the documentation, never
from the emulator's code.

A robot's callback server runs in this process on a free port. The tests point the emulator at it (which
makes the emulator send the verification GET), post user messages through the control API, and read back
what the emulator accepted.
"""

import base64
import hashlib
import json
import os
import queue
import struct
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from emulator_control import Emulator  # noqa: E402

PATIENCE_S = 30.0

BASE = os.environ["WECOM_EMULATOR_URL"]
TOKEN = os.environ.get("WECOM_TOKEN", "emulatortoken")
ENCODING_AES_KEY = os.environ.get("WECOM_ENCODING_AES_KEY", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
KEY = base64.b64decode(ENCODING_AES_KEY + "=")


def signature(timestamp: str, nonce: str, encrypt: str) -> str:
    return hashlib.sha1("".join(sorted([TOKEN, timestamp, nonce, encrypt])).encode()).hexdigest()


def aes(data: bytes, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(KEY), modes.CBC(KEY[:16]))
    op = cipher.encryptor() if encrypt else cipher.decryptor()
    return op.update(data) + op.finalize()


def seal(message: bytes, receive_id: bytes = b"", block: int = 32) -> str:
    plain = os.urandom(16) + struct.pack(">I", len(message)) + message + receive_id
    pad = block - len(plain) % block
    return base64.b64encode(aes(plain + bytes([pad]) * pad, True)).decode()


def unseal(encrypt: str) -> tuple[bytes, bytes]:
    plain = aes(base64.b64decode(encrypt), False)
    pad = plain[-1]
    assert len(plain) % 32 == 0, "padded to a multiple of 32 bytes"
    assert 1 <= pad <= 32 and plain[-pad:] == bytes([pad]) * pad, "PKCS#7 padding"
    body = plain[16:-pad]
    (length,) = struct.unpack(">I", body[:4])
    return body[4 : 4 + length], body[4 + length :]


def passive_reply(reply: dict, nonce: str, *, token_ok=True, block=32, receive_id=b"") -> bytes:
    encrypt = seal(json.dumps(reply).encode(), receive_id, block)
    timestamp = "1713000000"
    sig = signature(timestamp, nonce, encrypt) if token_ok else hashlib.sha1(b"forged").hexdigest()
    return json.dumps({"encrypt": encrypt, "msgsignature": sig, "timestamp": timestamp, "nonce": nonce}).encode()


class Robot:
    """The robot's side: verifies and decrypts every callback, queues it for the test, and answers with
    whatever the test puts in `answers` (a function of the decrypted body and the nonce)."""

    def __init__(self):
        self.calls: "queue.Queue[tuple[str, dict]]" = queue.Queue()
        self.answer = lambda body, nonce: b""
        robot = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _query(self):
                return {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query).items()}

            def _send(self, body: bytes):
                self.send_response(200)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                q = self._query()
                assert q["msg_signature"] == signature(q["timestamp"], q["nonce"], q["echostr"])
                plain, receive_id = unseal(q["echostr"])
                assert receive_id == b""
                robot.calls.put(("GET", {"echostr": plain.decode()}))
                self._send(plain)

            def do_POST(self):
                q = self._query()
                envelope = json.loads(self.rfile.read(int(self.headers["content-length"])))
                ok = q["msg_signature"] == signature(q["timestamp"], q["nonce"], envelope["encrypt"])
                message, receive_id = unseal(envelope["encrypt"])
                body = json.loads(message)
                body["_signature_ok"] = ok
                body["_receive_id"] = receive_id.decode()
                robot.calls.put(("POST", body))
                self._send(robot.answer(body, q["nonce"]))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/wecom"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def next(self):
        return self.calls.get(timeout=PATIENCE_S)


EMULATOR = Emulator(BASE, patience=PATIENCE_S)
control = EMULATOR.call
wait_until = EMULATOR.wait_until


@pytest.fixture(scope="module")
def robot():
    robot = Robot()
    # Saving the URL makes the emulator verify it: a signed, encrypted echostr whose plaintext we return.
    assert control("/_emulator/api/callback", {"url": robot.url}) == {"ok": True}
    method, body = robot.next()
    assert method == "GET" and body["echostr"].isdigit()
    yield robot
    control("/_emulator/api/callback", {"url": None})
    robot.server.shutdown()


def test_pushes_decrypt_here_and_python_sealed_replies_stream_to_finish(robot):
    snapshots = {}

    def answer(body, nonce):
        if body["msgtype"] == "text":
            snapshots[body["msgid"]] = 0
            return passive_reply({"msgtype": "stream", "stream": {"id": f"py-{body['msgid']}", "finish": False, "content": "Hel"}}, nonce)
        # A refresh callback: answer the next full snapshot of that stream.
        msgid = body["stream"]["id"].removeprefix("py-")
        snapshots[msgid] += 1
        done = snapshots[msgid] >= 2
        content = "Hello from Python" if done else "Hello"
        return passive_reply({"msgtype": "stream", "stream": {"id": body["stream"]["id"], "finish": done, "content": content}}, nonce)

    robot.answer = answer
    posted = control("/_emulator/api/messages", {"chattype": "single", "userid": "pia", "text": "你好, robot"})
    method, push = robot.next()
    assert method == "POST"
    assert push["_signature_ok"] and push["_receive_id"] == ""
    assert push["msgid"] == posted["msgid"]
    assert push["text"]["content"] == "你好, robot"
    assert push["from"]["userid"] == "pia" and push["chattype"] == "single"
    for _ in range(2):
        method, refresh = robot.next()
        assert refresh["_signature_ok"] and refresh["msgtype"] == "stream"
        assert refresh["stream"]["id"] == f"py-{posted['msgid']}"
    stream = wait_until(lambda s: next((k for k in s["streams"] if k["msgid"] == posted["msgid"] and k["finish"]), None), "the stream")
    assert stream["content"] == "Hello from Python"
    assert [(u["via"], u["content"], u["errcode"]) for u in stream["updates"]] == [
        ("passive_reply", "Hel", 0),
        ("refresh_reply", "Hello", 0),
        ("refresh_reply", "Hello from Python", 0),
    ]
    assert control(f"/_emulator/api/messages/{posted['msgid']}")["state"] == "answered"


def sixteen_byte_padded_reply(nonce):
    """A reply padded with ordinary 16-byte PKCS#7 to a length that is no multiple of 32."""
    reply = {"msgtype": "stream", "stream": {"id": "py-16", "finish": True, "content": "x"}}
    while (20 + len(json.dumps(reply).encode())) % 32 >= 16:
        reply["stream"]["content"] += "x"
    body = passive_reply(reply, nonce, block=16)
    assert len(base64.b64decode(json.loads(body)["encrypt"])) % 32 == 16
    return body


@pytest.mark.parametrize(
    "make, errcode",
    [
        (lambda nonce: passive_reply({"msgtype": "stream", "stream": {"id": "f", "finish": True, "content": "x"}}, nonce, token_ok=False), -40001),
        (sixteen_byte_padded_reply, -40007),
        (lambda nonce: passive_reply({"msgtype": "stream", "stream": {"id": "r", "finish": True, "content": "x"}}, nonce, receive_id=b"wwcorp"), -40005),
    ],
    ids=["forged signature", "16-byte padding", "foreign receiveid"],
)
def test_the_emulator_refuses_replies_the_platform_would(robot, make, errcode):
    robot.answer = lambda body, nonce: make(nonce)
    posted = control("/_emulator/api/messages", {"chattype": "single", "userid": f"refused{errcode}", "text": "check"})
    robot.next()
    message = wait_until(lambda s: next((m for m in s["messages"] if m["msgid"] == posted["msgid"] and m["errors"]), None), "the refusal")
    assert message["errors"][0]["errcode"] == errcode
    assert message["state"] == "pushed", "a refused reply answers nothing"


def test_a_response_url_takes_one_reply(robot):
    robot.answer = lambda body, nonce: b""
    posted = control("/_emulator/api/messages", {"chattype": "single", "userid": "rui", "text": "later please"})
    robot.next()
    reply = {"msgtype": "markdown", "markdown": {"content": "**later**"}}
    assert control(posted["response_url"].removeprefix(BASE), reply) == {"errcode": 0, "errmsg": "ok"}
    again = control(posted["response_url"].removeprefix(BASE), reply)
    assert again["errcode"] != 0
    conversation = control("/_emulator/api/conversations/rui")
    assert [e["kind"] for e in conversation["entries"]] == ["user", "robot"]
    assert conversation["entries"][1]["via"] == "response_url"
