// The explainrec page: ask for one pair, show its explanation as it streams, and what the method knows about it.
// Plain script, no build step; it talks only to the server that served it.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { limits: null, auth: false, busy: false, abort: null };

function headers(json) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  const key = $("api_key").value;
  if (key) h["X-API-Key"] = key;
  return h;
}

class HttpError extends Error {
  constructor(status, body) {
    super(describeError(status, body));
    this.status = status;
  }
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers(false) });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new HttpError(response.status, body);
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

function setStatus(text) {
  $("status").textContent = text;
}

// ---------------------------------------------------------------- the model line and autocomplete

// While the server loads its model, /v1/model answers 503: say so and ask again.
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
    if (err.status === 503) {
      $("model-line").textContent = "the server is loading its model...";
      setTimeout(loadModel, 2000);
      return;
    }
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

// A pair that exists in the server's data (its user and item have an example together).
async function pickPair() {
  showError("");
  try {
    const pair = await getJSON("/v1/pairs/random");
    $("user").value = pair.user;
    $("item").value = pair.item;
    setStatus(pair.title ? `picked: ${pair.title}` : "picked a pair from the data");
  } catch (err) {
    showError(err.status === 404 ? "the server knows no pairs (start it with --data) -- type any ids" : err.message);
  }
}

// ---------------------------------------------------------------- explaining

function requestBody() {
  const body = { user: $("user").value.trim(), item: $("item").value.trim() };
  const int = (id) => { const v = $(id).value; return v === "" ? undefined : Number.parseInt(v, 10); };
  const num = (id) => { const v = $(id).value; return v === "" ? undefined : Number.parseFloat(v); };
  const text = (id) => $(id).value.trim() || undefined;
  body.title = text("title");
  body.user_profile = text("user_profile");
  body.item_profile = text("item_profile");
  const features = $("features").value.split(",").map((f) => f.trim()).filter(Boolean);
  if (features.length) body.features = features;
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

// Everything the previous answer left on the page goes before a new request starts.
function clearResult() {
  showError("");
  $("result").hidden = true;
  $("explanation").textContent = "";
  $("explanation").classList.remove("cut");
  $("item-title").textContent = "";
  for (const id of ["cold", "ungrounded", "cut", "note"]) $(id).hidden = true;
  for (const id of ["extras", "timing", "prompt"]) $(id).replaceChildren();
  $("prompt-source").textContent = "";
}

function setBusy(busy) {
  state.busy = busy;
  $("explain").disabled = busy;
  $("stop").hidden = !busy;
  $("explanation").classList.toggle("streaming", busy);
}

async function explain(event) {
  event.preventDefault();
  if (state.busy) return;
  clearResult();
  setBusy(true);
  const body = requestBody();
  const started = performance.now();
  let firstText = null;
  state.abort = new AbortController();
  setStatus("sending...");
  try {
    const response = await fetch("/v1/explain/stream", {
      method: "POST", headers: headers(true), body: JSON.stringify(body), signal: state.abort.signal,
    });
    if (!response.ok) {
      throw new HttpError(response.status, await response.json().catch(() => ({})));
    }
    let ended = false;
    for await (const [name, data] of events(response)) {
      if (name === "meta") {
        showPair(data);
        setStatus("queued: waiting for a batch...");
      } else if (name === "start") {
        setStatus(`generating (batch of ${data.batch_size})...`);
      } else if (name === "delta") {
        if (firstText === null) firstText = performance.now() - started;
        $("explanation").textContent += data.text;
      } else if (name === "done") {
        showAnswer(data, firstText, performance.now() - started);
        setStatus("done");
        ended = true;
      } else if (name === "error") {
        throw new Error(`${data.error_type}: ${data.error}`);
      }
    }
    if (!ended) throw new Error("the connection closed before the answer was complete");
  } catch (err) {
    if (err.name === "AbortError") {
      setStatus("stopped");
    } else {
      showError(err.message);
      setStatus("failed");
      if (!$("explanation").textContent) $("result").hidden = true;
    }
  } finally {
    state.abort = null;
    setBusy(false);
  }
}

// Stop: closing the stream tells the server, which stops generating for this request.
function stop() {
  if (state.abort) state.abort.abort();
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

// From the stream's first event: the pair, whether anything is known about it, and its prompt text.
function showPair(meta) {
  $("result").hidden = false;
  $("pair-title").textContent = `${meta.user} \u2192 ${meta.item}`;
  $("ungrounded").hidden = meta.grounded;
  showPrompt(meta.prompt);
}

function showPrompt(prompt) {
  $("prompt-source").textContent = `from ${prompt.source}: ${prompt.note}`;
  $("item-title").textContent = prompt.title ? `\u00b7 ${prompt.title}` : "";
  const entries = [["title", prompt.title], ["user profile", prompt.user_profile],
    ["item profile", prompt.item_profile], ["features", prompt.features]];
  rows($("prompt"), entries.filter(([, v]) => v !== null && v !== undefined && !(Array.isArray(v) && !v.length))
    .map(([k, v]) => [k, render(v)]));
}

function showAnswer(answer, firstText, totalClient) {
  $("explanation").textContent = answer.explanation;
  $("cold").hidden = !answer.cold_start;
  $("ungrounded").hidden = answer.grounded;
  if (answer.finish_reason === "length") {
    $("cut").textContent = `cut off: the text reached the ${answer.generation.max_new_tokens}-token limit`;
    $("cut").hidden = false;
    $("explanation").classList.add("cut");
  }
  if (answer.note) { $("note").textContent = answer.note; $("note").hidden = false; }
  const known = (v) => (v === null ? "any id (no id maps)" : v ? "yes" : "no (cold start)");
  rows($("extras"), [["method", answer.method], ["user seen in training", known(answer.known.user)],
    ["item seen in training", known(answer.known.item)],
    ...Object.entries(answer.extras).map(([k, v]) => [label(k), render(v)])]);
  const ms = (v) => (v === null || v === undefined ? "\u2013" : `${Math.round(v)} ms`);
  const tokens = (v) => (v === null || v === undefined ? "\u2013" : String(v));
  rows($("timing"), [["first text", ms(firstText)], ["queue", ms(answer.timing.queue_ms)],
    ["generation", ms(answer.timing.generation_ms)], ["server total", ms(answer.timing.total_ms)],
    ["page total", ms(totalClient)], ["batch size", String(answer.timing.batch_size)],
    ["tokens (prompt + text)", `${tokens(answer.usage.prompt_tokens)} + ${tokens(answer.usage.completion_tokens)}`],
    ["request id", answer.request_id]]);
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
  $("pick").addEventListener("click", pickPair);
  $("stop").addEventListener("click", stop);
  $("ask").addEventListener("submit", explain);
});
