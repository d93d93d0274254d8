"""The emulators' control API (`/_emulator/api/...`) for the SDK tests: JSON calls, and awaiting a state by
re-reading it after each change (the long-poll change feed, no sleeps)."""

import json
import time
import urllib.request

PATIENCE = 30.0


class Control:
    """The control API of the emulator at `base` (http://HOST:PORT)."""

    def __init__(self, base: str):
        self.base = base

    def __call__(self, path: str, body=None):
        """GET `path`, or POST `body` as JSON; the JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=PATIENCE + 5) as response:
            return json.loads(response.read())

    def wait_until(self, check, what):
        """Await `check(state)` being truthy, re-reading the state after each change."""
        deadline = time.monotonic() + PATIENCE
        while True:
            state = self("/_emulator/api/state")
            found = check(state)
            if found:
                return found
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {what}; state: {json.dumps(state)[:2000]}"
            self(f"/_emulator/api/wait?after={state['version']}&timeout_ms={int(left * 1000)}")
