// The console shell: shows one page per URL hash (#chat, #im, #status, #admin) and starts its module.
import * as chat from "./chat.js";
import * as im from "./im.js";
import * as status from "./status.js";
import * as admin from "./admin.js";
import { consoleFetch } from "./auth.js";

const pages = { chat, im, status, admin };
const started = new Set();
let current = null;

/** Show the page the hash names (default: chat), start it on first show, pause the one left. */
function route() {
  const name = (location.hash.slice(1) in pages) ? location.hash.slice(1) : "chat";
  if (current === name) return;
  if (current) {
    document.getElementById(`page-${current}`).hidden = true;
    pages[current].hide?.();
  }
  current = name;
  document.getElementById(`page-${name}`).hidden = false;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === name);
  if (!started.has(name)) {
    started.add(name);
    pages[name].init();
  }
  pages[name].show?.();
}

/** The active model's name, in the header and the chat settings. */
async function loadModel() {
  try {
    const res = await consoleFetch("/console/api/status");
    const body = await res.json();
    for (const id of ["model-name", "chat-model"]) document.getElementById(id).textContent = body.model.name;
  } catch (err) {
    document.getElementById("model-name").textContent = `model unknown (${err.message})`;
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("hearth:credential", loadModel);
route();
loadModel();
