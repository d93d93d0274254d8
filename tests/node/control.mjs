// Driving one of hearth's emulators through its control API (`/_emulator/api/...`) from the SDK tests:
// `control` posts as simulated users and reads state; `waitUntil` awaits a condition by long-polling the change
// feed, so the tests never sleep.

import assert from "node:assert/strict";

export function emulator(base, { patienceMs = 30_000, onState = () => {} } = {}) {
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
    const deadline = Date.now() + patienceMs;
    for (;;) {
      const state = await control("/_emulator/api/state");
      onState();
      const found = check(state);
      if (found) return found;
      const left = deadline - Date.now();
      assert.ok(left > 0, `timed out waiting for ${what}; state: ${JSON.stringify(state).slice(0, 3000)}`);
      await control(`/_emulator/api/wait?after=${state.version}&timeout_ms=${left}`);
    }
  }

  return { control, waitUntil };
}
