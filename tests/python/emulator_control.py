"""Driving one of hearth's emulators through its control API (`/_emulator/api/...`) from the SDK tests.

`call` posts as simulated users, injects faults and reads state; `wait_until` awaits a condition by
long-polling the change feed, so the tests never sleep.
"""

import json
import time
import urllib.request


class Emulator:
    def __init__(self, base, patience=30.0, on_state=None):
        """`on_state()` runs before every check of `wait_until` (for failures to report early)."""
        self.base = base
        self.patience = patience
        self.on_state = on_state or (lambda: None)

    def call(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=self.patience + 5) as response:
            return json.loads(response.read())

    def wait_until(self, check, what):
        """Await `check(state)` being truthy, re-reading the state after each change."""
        deadline = time.monotonic() + self.patience
        while True:
            state = self.call("/_emulator/api/state")
            self.on_state()
            found = check(state)
            if found:
                return found
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {what}; state: {json.dumps(state)[:3000]}"
            self.call(f"/_emulator/api/wait?after={state['version']}&timeout_ms={int(left * 1000)}")
