// What every emulator's page (`/_emulator`) shares, served at `/_emulator/page.js`: an element helper, the
// loop that re-renders the state after every change (long-polling the change feed), and posting as a user.
"use strict";

/** A new element with an optional class and text. */
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** Render the state now and again after every change, for as long as the page is open. */
async function follow(render) {
  for (;;) {
    try {
      const state = await (await fetch("/_emulator/api/state")).json();
      render(state);
      await fetch(`/_emulator/api/wait?after=${state.version}&timeout_ms=20000`);
    } catch (e) {
      await new Promise(r => setTimeout(r, 1000));
    }
  }
}

/** Post a simulated user's message; an error is shown, and the text box emptied either way. */
async function postMessage(body) {
  const r = await fetch("/_emulator/api/messages", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  if (!r.ok) alert((await r.json()).error);
  document.getElementById("text").value = "";
}
