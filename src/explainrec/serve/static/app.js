// The explainrec page: ask for one pair, show its explanation as it streams, and what the method knows about it.
// Plain script, no build step; it talks only to the server that served it.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { limits: null, auth: false, busy: false };

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = $("api_key").value;
  if (key) h["X-API-Key"] = key;
  return h;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers(false) });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(describeError(response.status, body));
  return body;
}

function describeError(status, body) {
  const field = body && body.field ? ` (field ${body.field})` : "";
  return `${status}: ${(body && body.error) || "request failed"}${field}`;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// ---------------------------------------------------------------- the model line and autocomplete

async function loadModel() {
  try {
    const health = await getJSON("/healthz");
    state.auth = health.auth;
    $("key-row").hidden = !health.auth;
    if (health.auth) $("settings").open = true;
    const info = await getJSON("/v1/model");
    state.limits = info.limits;
    $("max_new_tokens").value = info.limits.default_new_tokens;
    $("max_new_tokens").max = info.limits.max_new_tokens;
    $("num_beams").max = info.limits.max_num_beams;
    const data = info.served_data ? `data ${info.served_data.name}` : "no --data";
    $("model-line").textContent =
      `${info.method} on ${info.model || "?"} \u00b7 ${info.precision} \u00b7 ${data} \u00b7 explainrec ${info.version}`;
  } catch (err) {
    $("model-line").textContent = `model description unavailable: ${err.message}`;
  }
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

const asked = { users: 0, items: 0 };

// Fill the datalist with the ids matching the field's text; an answer to an older query is dropped (answers can
// overtake each other). The list's data-query says which text its options answer.
async function suggest(kind, input, list) {
  const query = input.value;
  const ticket = ++asked[kind];
  try {
    const found = await getJSON(`/v1/${kind}?q=${encodeURIComponent(query)}&limit=20`);
    if (ticket !== asked[kind]) return found.results;
    list.dataset.query = query;
    list.replaceChildren(...found.results.map((hit) => {
      const option = document.createElement("option");
      option.value = hit.id;
      if (hit.text) option.label = hit.text.length > 80 ? hit.text.slice(0, 77) + "..." : hit.text;
      return option;
    }));
    return found.results;
  } catch (err) {
    return [];
  }
}

async function pickPair() {
  const users = await suggest("users", { value: "" }, $("user-options"));
  const items = await suggest("items", { value: "" }, $("item-options"));
  if (!users.length || !items.length) {
    showError("the server knows no users or items (start it with --data) -- type any ids");
    return;
  }
  $("user").value = users[Math.floor(Math.random() * users.length)].id;
  $("item").value = items[Math.floor(Math.random() * items.length)].id;
}

// ---------------------------------------------------------------- explaining

function requestBody() {
  const body = { user: $("user").value.trim(), item: $("item").value.trim() };
  const int = (id) => { const v = $(id).value; return v === "" ? undefined : Number.parseInt(v, 10); };
  const num = (id) => { const v = $(id).value; return v === "" ? undefined : Number.parseFloat(v); };
  body.max_new_tokens = int("max_new_tokens");
  body.num_beams = int("num_beams");
  if ($("do_sample").checked) {
    body.do_sample = true;
    body.temperature = num("temperature");
    body.top_p = num("top_p");
    body.seed = int("seed");
  }
  for (const key of Object.keys(body)) if (body[key] === undefined || Number.isNaN(body[key])) delete body[key];
  return body;
}

async function explain(event) {
  event.preventDefault();
  if (state.busy) return;
  state.busy = true;
  $("explain").disabled = true;
  showError("");
  const body = requestBody();
  const started = performance.now();
  let firstText = null;
  $("result").hidden = false;
  $("pair-title").textContent = `${body.user} \u2192 ${body.item}`;
  $("item-title").textContent = "";
  $("explanation").textContent = "";
  $("explanation").classList.add("streaming");
  $("cold").hidden = true;
  $("note").hidden = true;
  for (const id of ["extras", "timing", "prompt"]) $(id).replaceChildren();
  $("prompt-source").textContent = "";
  $("status").textContent = "waiting for a batch...";
  try {
    const response = await fetch("/v1/explain/stream", {
      method: "POST", headers: headers(true), body: JSON.stringify(body),
    });
    if (!response.ok) {
      throw new Error(describeError(response.status, await response.json().catch(() => ({}))));
    }
    for await (const [name, data] of events(response)) {
      if (name === "meta") {
        showPrompt(data.prompt);
        $("status").textContent = "generating...";
      } else if (name === "delta") {
        if (firstText === null) firstText = performance.now() - started;
        $("explanation").textContent += data.text;
      } else if (name === "done") {
        showAnswer(data, firstText, performance.now() - started);
        $("status").textContent = "done";
      } else if (name === "error") {
        throw new Error(`${data.error_type}: ${data.error}`);
      }
    }
  } catch (err) {
    showError(err.message);
    $("status").textContent = "failed";
  } finally {
    $("explanation").classList.remove("streaming");
    $("explain").disabled = false;
    state.busy = false;
  }
}

// Server-sent events from a fetch body: yields [event name, parsed data].
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      yield [name, JSON.parse(data.join("\n"))];
    }
  }
}

// ---------------------------------------------------------------- rendering

function rows(table, entries) {
  table.replaceChildren(...entries.map(([key, value]) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    const td = document.createElement("td");
    th.textContent = key;
    if (value instanceof Node) td.append(value); else td.textContent = value;
    tr.append(th, td);
    return tr;
  }));
}

function label(key) {
  return key.replace(/_/g, " ");
}

// Any extra field a method reports: numbers and text as they are, lists joined, lists of lists one per line.
function render(value) {
  if (value === null || value === undefined) return "\u2013";
  if (Array.isArray(value)) {
    if (value.some(Array.isArray)) {
      const list = document.createElement("ol");
      for (const inner of value) {
        const li = document.createElement("li");
        li.textContent = Array.isArray(inner) ? inner.map(String).join(" \u2192 ") : JSON.stringify(inner);
        list.append(li);
      }
      return list;
    }
    return value.map((v) => (typeof v === "object" ? JSON.stringify(v) : String(v))).join(", ") || "none";
  }
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function showPrompt(prompt) {
  $("prompt-source").textContent = `from ${prompt.source}: ${prompt.note}`;
  if (prompt.title) $("item-title").textContent = `\u00b7 ${prompt.title}`;
  const entries = [["title", prompt.title], ["user profile", prompt.user_profile],
    ["item profile", prompt.item_profile], ["features", prompt.features]];
  rows($("prompt"), entries.filter(([, v]) => v !== null && v !== undefined && !(Array.isArray(v) && !v.length))
    .map(([k, v]) => [k, render(v)]));
}

function showAnswer(answer, firstText, totalClient) {
  $("explanation").textContent = answer.explanation;
  $("cold").hidden = !answer.cold_start;
  if (answer.note) { $("note").textContent = answer.note; $("note").hidden = false; }
  const known = (v) => (v === null ? "any id (no id maps)" : v ? "yes" : "no (cold start)");
  rows($("extras"), [["method", answer.method], ["user seen in training", known(answer.known.user)],
    ["item seen in training", known(answer.known.item)],
    ...Object.entries(answer.extras).map(([k, v]) => [label(k), render(v)])]);
  const ms = (v) => `${Math.round(v)} ms`;
  rows($("timing"), [["first text", firstText === null ? "\u2013" : ms(firstText)],
    ["queue", ms(answer.timing.queue_ms)], ["generation", ms(answer.timing.generation_ms)],
    ["server total", ms(answer.timing.total_ms)], ["page total", ms(totalClient)],
    ["batch size", String(answer.timing.batch_size)]]);
  showPrompt(answer.prompt);
}

// ---------------------------------------------------------------- wiring

document.addEventListener("DOMContentLoaded", () => {
  loadModel();
  const userSuggest = debounce(() => suggest("users", $("user"), $("user-options")), 150);
  const itemSuggest = debounce(() => suggest("items", $("item"), $("item-options")), 150);
  $("user").addEventListener("input", userSuggest);
  $("item").addEventListener("input", itemSuggest);
  $("user").addEventListener("focus", userSuggest);
  $("item").addEventListener("focus", itemSuggest);
  $("pick").addEventListener("click", () => { showError(""); pickPair(); });
  $("ask").addEventListener("submit", explain);
});
