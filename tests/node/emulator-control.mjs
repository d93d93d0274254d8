// The emulators' control API (`/_emulator/api/...`) for the SDK tests: JSON calls, and awaiting a state by
// re-reading it after each change (the long-poll change feed, no sleeps).

import assert from "node:assert/strict";

const PATIENCE_MS = 30_000;

/** `control(path, body?)` (GET, or POST `body` as JSON; the JSON answer) and `waitUntil(check, what)`. */
export function emulatorControl(base) {
  async function control(path, body) {
    const response = await fetch(base + path, {
      method: body === undefined ? "GET" : "POST",
      headers: { "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    assert.ok(response.ok, `${path}: HTTP ${response.status} ${await response.clone().text()}`);
    return response.json();
  }

  /** Await `check(state)` being truthy, re-reading the state after each change. */
  async function waitUntil(check, what) {
    const deadline = Date.now() + PATIENCE_MS;
    for (;;) {
      const state = await control("/_emulator/api/state");
      const found = check(state);
      if (found) return found;
      const left = deadline - Date.now();
      assert.ok(left > 0, `timed out waiting for ${what}; state: ${JSON.stringify(state).slice(0, 3000)}`);
      await control(`/_emulator/api/wait?after=${state.version}&timeout_ms=${left}`);
    }
  }

  return { control, waitUntil };
}
