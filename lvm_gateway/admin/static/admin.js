// The status page: swap in the server-rendered rollouts every 2 s; send actions with the token.
"use strict";
const REFRESH_MS = 2000;
const actionsOn = document.body.dataset.actions === "on";
const live = document.getElementById("live");
const flash = document.getElementById("flash");
const main = document.getElementById("rollouts");

function token() {
  return sessionStorage.getItem("lvmgw-admin-token") || "";
}

function enableButtons() {
  const on = actionsOn && token() !== "";
  for (const b of document.querySelectorAll("button.action")) {
    b.disabled = !on;
    b.title = on ? "" : actionsOn ? "enter the actions token above" : "read-only server";
  }
}

function show(message, kind) {
  flash.textContent = message;
  flash.className = kind;
  flash.hidden = false;
}

async function refresh() {
  try {
    const resp = await fetch("partials/rollouts", { cache: "no-store" });
    const body = await resp.text();
    if (!resp.ok) throw new Error(body || resp.statusText);
    main.innerHTML = body;
    enableButtons();
    live.textContent = "updated " + new Date().toISOString().slice(11, 19) + " UTC";
    live.classList.remove("stale");
  } catch (err) {
    live.textContent = "not updating: " + err.message;
    live.classList.add("stale");
  }
}

async function act(name, action) {
  const resp = await fetch(`api/v1/rollouts/${encodeURIComponent(name)}/${action}`, {
    method: "POST",
    headers: { Authorization: "Bearer " + token() },
  });
  let doc = {};
  try { doc = await resp.json(); } catch (_) { /* a proxy's HTML error page */ }
  if (resp.ok) {
    show(`${action} ${name}: now ${doc.rollout.phase} at ${doc.rollout.weight}% (${doc.rollout.reason})`, "ok");
  } else {
    show(`${action} ${name} refused (${resp.status}): ${doc.message || resp.statusText}`, "error");
  }
  await refresh();
}

main.addEventListener("click", (ev) => {
  const b = ev.target.closest("button.action");
  if (b && !b.disabled) act(b.dataset.rollout, b.dataset.action);
});

const form = document.getElementById("token-form");
form.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token");
  if (!input) return;
  sessionStorage.setItem("lvmgw-admin-token", input.value.trim());
  input.value = "";
  show(token() ? "Actions unlocked for this tab." : "Actions locked.", "ok");
  enableButtons();
});

enableButtons();
setInterval(refresh, REFRESH_MS);
