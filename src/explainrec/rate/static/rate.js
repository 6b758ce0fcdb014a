// The rating page: sign in, rate each pair's explanations (P, Q, U; 1-5, half points), resume where you stopped.
// Everything is reachable from the keyboard; nothing is loaded from outside this server.
"use strict";

const $ = (id) => document.getElementById(id);
const DIMS = ["P", "Q", "U"];
const NAMES = { P: "Personalization", Q: "Text Quality", U: "User Satisfaction" };
const state = { study: null, credential: null, rater: null, pair: null, total: 0, shown: 0 };

function storageKey(what) { return `explainrec-rate:${state.study.study}:${what}`; }

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.credential) headers["X-Rater"] = state.credential;
  const response = await fetch(path, body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) });
  const data = await response.json().catch(() => ({ error: `answer ${response.status} is not JSON` }));
  if (!response.ok) throw Object.assign(new Error(data.error || `error ${response.status}`), { status: response.status, field: data.field });
  return data;
}

function show(section) {
  for (const id of ["sign-in", "rating", "finished"]) $(id).hidden = id !== section;
  $("progress-line").hidden = section === "sign-in";
  $("who").hidden = section === "sign-in";
}

function setProgress(p) {
  state.total = p.total;
  $("progress").max = p.total;
  $("progress").value = p.done;
  const where = state.pair === null ? "" : `pair ${state.pair + 1} of ${p.total} · `;
  $("progress-text").textContent = `${where}${p.done} of ${p.total} rated`;
}

function buildCriteria(criteria) {
  const body = $("criteria-body");
  for (const c of criteria) {
    const h = document.createElement("h3");
    h.textContent = `${c.name} (${c.key})`;
    const p = document.createElement("p");
    p.textContent = c.guidance;
    const table = document.createElement("table");
    for (const level of c.levels) {
      const tr = table.insertRow();
      tr.insertCell().textContent = level.score;
      tr.insertCell().textContent = level.text;
    }
    body.append(h, p, table);
  }
  const note = document.createElement("p");
  note.textContent = state.study.note;
  body.append(note);
}

async function signIn(credential) {
  state.credential = credential;
  try {
    const progress = await api("/api/sign-in", { as: credential });
    state.rater = progress.rater;
    localStorage.setItem(storageKey("credential"), credential);
    $("rater-name").textContent = progress.rater;
    await goTo(progress.next, progress);
  } catch (err) {
    state.credential = null;
    localStorage.removeItem(storageKey("credential"));
    show("sign-in");
    $("sign-in-error").textContent = err.message;
    $("as").focus();
  }
}

async function goTo(k, progress) {
  if (k === null || k === undefined) {
    state.pair = null;
    setProgress(progress);
    show("finished");
    $("back-from-end").focus();
    $("status").textContent = "all pairs rated";
    return;
  }
  const data = await api(`/api/pair/${k}`);
  state.pair = k;
  state.shown = data.explanations.length;
  renderPair(data);
  setProgress(data);
  show("rating");
  $("score-0-P").focus();
  $("status").textContent = `showing pair ${k + 1}`;
}

function text(id, value) { $(id).textContent = value === undefined || value === null || value === "" ? "–" : value; }

function renderPair(data) {
  const c = data.context;
  $("pair-label").textContent = `Pair ${data.pair + 1} of ${data.total}:`;
  text("item-title", c.title || `item ${c.item}`);
  text("ctx-user", c.user);
  text("ctx-user-profile", c.user_profile);
  let history = (c.history || []).join("; ");
  if (c.history_total !== undefined && c.history_total > (c.history || []).length) history += ` (and ${c.history_total - (c.history || []).length} more)`;
  text("ctx-history", history);
  text("ctx-item", c.title ? `${c.title} (${c.item})` : c.item);
  text("ctx-item-profile", c.item_profile);
  const box = $("explanations");
  box.replaceChildren();
  const draft = JSON.parse(localStorage.getItem(storageKey(`draft:${state.rater}:${data.pair}`)) || "null");
  data.explanations.forEach((explanation, slot) => {
    const card = document.createElement("article");
    card.className = "card";
    const h = document.createElement("h3");
    h.textContent = `Explanation ${slot + 1}`;
    const p = document.createElement("p");
    p.className = "text";
    p.id = `text-${slot}`;
    p.textContent = explanation.trim() ? explanation : "(empty)";
    const scores = document.createElement("div");
    scores.className = "scores";
    for (const d of DIMS) {
      const label = document.createElement("label");
      label.title = NAMES[d];
      label.append(`${d} · ${NAMES[d]}`);
      const input = document.createElement("input");
      Object.assign(input, { type: "number", min: 1, max: 5, step: 0.5, id: `score-${slot}-${d}`, inputMode: "decimal" });
      input.setAttribute("aria-label", `Explanation ${slot + 1}, ${NAMES[d]} (1 to 5)`);
      const saved = data.saved ? data.saved[slot][d] : undefined;
      const value = draft && draft[slot] && draft[slot][d] !== "" ? draft[slot][d] : saved;
      if (value !== undefined && value !== null) input.value = value;
      input.addEventListener("input", saveDraft);
      label.append(input);
      scores.append(label);
    }
    card.append(h, p, scores);
    box.append(card);
  });
  $("form-error").textContent = "";
  $("prev").disabled = data.pair === 0;
}

function readForm() {
  const values = [];
  for (let slot = 0; slot < state.shown; slot++) {
    values.push({});
    for (const d of DIMS) values[slot][d] = $(`score-${slot}-${d}`).value.trim().replace(",", ".");
  }
  return values;
}

function saveDraft() {
  localStorage.setItem(storageKey(`draft:${state.rater}:${state.pair}`), JSON.stringify(readForm()));
}

function check(values) {
  let first = null;
  values.forEach((v, slot) => DIMS.forEach((d) => {
    const x = Number(v[d]);
    const ok = v[d] !== "" && Number.isFinite(x) && x >= 1 && x <= 5 && Number.isInteger(x * 2);
    const input = $(`score-${slot}-${d}`);
    input.setAttribute("aria-invalid", ok ? "false" : "true");
    if (!ok && first === null) first = { input, slot, d, given: v[d] };
  }));
  return first;
}

async function save(event) {
  event.preventDefault();
  const values = readForm();
  const bad = check(values);
  if (bad) {
    $("form-error").textContent = `Explanation ${bad.slot + 1}, ${NAMES[bad.d]}: ` +
      (bad.given === "" ? "missing" : `${bad.given} is not 1, 1.5, ..., 5`);
    bad.input.focus();
    return;
  }
  $("save").disabled = true;
  try {
    const scores = values.map((v) => Object.fromEntries(DIMS.map((d) => [d, Number(v[d])])));
    const progress = await api("/api/rate", { pair: state.pair, scores });
    localStorage.removeItem(storageKey(`draft:${state.rater}:${state.pair}`));
    $("status").textContent = `saved pair ${state.pair + 1}`;
    await goTo(progress.next, progress);
  } catch (err) {
    $("form-error").textContent = `Not saved: ${err.message}`;
  } finally {
    $("save").disabled = false;
  }
}

async function previous() {
  const k = state.pair === null ? state.total - 1 : state.pair - 1;
  if (k >= 0) await goTo(k);
}

function openCriteria() { if (!$("criteria").open) $("criteria").showModal(); }

function signOut() {
  localStorage.removeItem(storageKey("credential"));
  state.credential = state.rater = state.pair = null;
  show("sign-in");
  $("as").value = "";
  $("as").focus();
}

async function start() {
  state.study = await api("/api/study");
  buildCriteria(state.study.criteria);
  if (state.study.sign_in === "token") {
    $("as-label").textContent = "Your token";
    $("as").type = "password";
  }
  $("sign-in-form").addEventListener("submit", (e) => { e.preventDefault(); signIn($("as").value.trim()); });
  $("rate-form").addEventListener("submit", save);
  $("prev").addEventListener("click", previous);
  $("back-from-end").addEventListener("click", previous);
  $("criteria-open").addEventListener("click", openCriteria);
  $("sign-out").addEventListener("click", signOut);
  document.addEventListener("keydown", (e) => {
    if (e.key === "?" && !$("criteria").open) { e.preventDefault(); openCriteria(); }
    else if (e.altKey && e.key === "ArrowLeft" && !$("rating").hidden) { e.preventDefault(); previous(); }
  });
  const stored = localStorage.getItem(storageKey("credential"));
  if (stored) await signIn(stored);
  else { show("sign-in"); $("as").focus(); }
}

start().catch((err) => { $("status").textContent = `The study could not be loaded: ${err.message}`; });
