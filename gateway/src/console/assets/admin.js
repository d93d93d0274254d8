// Admin actions, behind the admin token the user types in (kept for this tab only, in sessionStorage):
// list the configured models and switch the active one; reload the IM connectors' skills.

import { credentialChanged } from "./auth.js";

const $ = (id) => document.getElementById(id);

export function init() {
  const saved = sessionStorage.getItem("hearth.admin");
  if (saved) $("admin-token").value = saved;
  $("admin-login").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("hearth.admin", $("admin-token").value);
    credentialChanged();
    load();
  });
  $("reload-skills").addEventListener("click", reloadSkills);
  if (saved) load();
}

async function reloadSkills() {
  $("admin-error").hidden = true;
  $("reload-skills").disabled = true;
  try {
    const answer = await admin("/admin/skills/reload", { method: "POST" });
    $("skills-result").textContent = answer.platforms.map((p) => `${p.platform}: ${p.skills.join(", ")}`).join("; ");
  } catch (err) {
    $("skills-result").textContent = "";
    fail(err);
  }
  $("reload-skills").disabled = false;
}

async function admin(path, options = {}) {
  const res = await fetch(path, {
    ...options,
    headers: { authorization: `Bearer ${$("admin-token").value.trim()}`, "content-type": "application/json" },
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(body.error?.message ?? `HTTP ${res.status}`);
  return body;
}

function fail(err) {
  $("admin-error").textContent = err.message;
  $("admin-error").hidden = false;
}

async function load() {
  $("admin-error").hidden = true;
  let models;
  try {
    models = await admin("/admin/models");
  } catch (err) {
    fail(err);
    return;
  }
  $("admin-models").replaceChildren(...models.map((m) => {
    const tr = document.createElement("tr");
    const name = document.createElement("td");
    name.textContent = m.name + (m.active ? " (active)" : "") + (m.fallback ? " (fallback)" : "");
    const path = document.createElement("td");
    path.textContent = m.path;
    const action = document.createElement("td");
    const button = document.createElement("button");
    button.textContent = m.active ? "Active" : "Switch to";
    button.disabled = m.active;
    button.addEventListener("click", () => switchTo(m.name, button));
    action.append(button);
    tr.append(name, path, action);
    return tr;
  }));
}

async function switchTo(name, button) {
  button.disabled = true;
  $("admin-result").textContent = `Loading ${name}…`;
  try {
    const answer = await admin("/admin/models/active", { method: "POST", body: JSON.stringify({ model: name }) });
    $("admin-result").textContent = `Active model: ${answer.active} (was ${answer.previous}).`;
    for (const id of ["model-name", "chat-model"]) $(id).textContent = answer.active;
  } catch (err) {
    $("admin-result").textContent = "";
    fail(err);
  }
  load();
}
