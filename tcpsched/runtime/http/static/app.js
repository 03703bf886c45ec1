// tcpsched dashboard: plain JavaScript, no library, every asset served by the coordinator.
// Live figures come from one EventSource on /api/events (a snapshot a second); the jobs table,
// job and group pages read the REST API; a job's output streams from /api/jobs/ID/logs (SSE).
"use strict";

const $ = (sel) => document.querySelector(sel);
const CHART_POINTS = 300;  // five minutes of one-second samples
const samples = [];
let page = { after: null, stack: [] };
let jobs = [];
let logStream = null;
let snapshots = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}
const ago = (t) => t ? `${Math.max(0, Math.round(Date.now() / 1000 - t))}s ago` : "";
const when = (t) => t ? new Date(t * 1000).toLocaleTimeString() : "";
const what = (r) => r.kind === "shell" ? r.command : `${r.function}(${(r.args || []).map((a) => JSON.stringify(a)).join(", ")})`;
const stateTag = (s) => el("span", { class: `state ${s}` }, s);
const jobLink = (id) => el("a", { href: `#/job/${encodeURIComponent(id)}` }, id);

async function api(method, path, body) {
  const options = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let value = null;
  try { value = await response.json(); } catch (e) { value = null; }
  if (!response.ok) {
    const error = new Error((value && value.error) || `${response.status} ${response.statusText}`);
    error.status = response.status;
    error.kind = value && value.kind;
    throw error;
  }
  return value;
}

// -- live figures ---------------------------------------------------------------------------

function addSample(s) {
  const prev = samples[samples.length - 1];
  const rate = prev && s.t > prev.t ? Math.max(0, (s.finished - prev.finished) / (s.t - prev.t)) : 0;
  samples.push({ ...s, rate });
  if (samples.length > CHART_POINTS) samples.shift();
}

function drawChart(id, key) {
  const values = samples.map((s) => s[key]);
  const top = Math.max(1, ...values);
  // The last minute at least, up to five: a young chart is not a sliver at the right edge.
  const span = Math.min(CHART_POINTS, Math.max(60, values.length));
  const step = 300 / Math.max(1, span - 1);
  const offset = span - values.length;
  const points = values.map((v, i) => `${((offset + i) * step).toFixed(1)},${(78 - 76 * v / top).toFixed(1)}`);
  $(`#chart-${key} polyline`).setAttribute("points", points.join(" "));
  const last = values.length ? values[values.length - 1] : 0;
  $(`#now-${key}`).textContent = key === "rate" ? last.toFixed(1) : last;
}

function drawCharts() { drawChart("pending", "pending"); drawChart("running", "running"); drawChart("rate", "rate"); }

function showSnapshot(snap) {
  const stats = snap.stats;
  $("#leader").textContent = stats.leader;
  $("#epoch").textContent = stats.epoch;
  const coords = $("#coordinators tbody");
  coords.replaceChildren(...snap.coordinators.map((c) => el("tr", { "data-id": c.id },
    el("td", {}, `c${c.id} ${c.address}`), el("td", {}, c.role),
    el("td", {}, c.lag == null ? "" : `lag ${c.lag}`))));
  const workers = $("#workers tbody");
  workers.replaceChildren(...snap.workers.map((w) => el("tr", { "data-name": w.name },
    el("td", {}, w.name), el("td", { class: w.state }, w.state),
    el("td", {}, `${w.running}/${w.slots}`), el("td", {}, (w.tags || []).join(",")),
    el("td", {}, ago(w.last_heartbeat)))));
  addSample(snap.sample);
  drawCharts();
}

function connectEvents() {
  const source = new EventSource("/api/events");
  source.addEventListener("history", (e) => { for (const s of JSON.parse(e.data)) addSample(s); drawCharts(); });
  source.addEventListener("snapshot", (e) => {
    $("#live").textContent = "live"; $("#live").className = "on";
    showSnapshot(JSON.parse(e.data));
    if (!$("#overview").hidden && !page.after) refreshJobs();
    if (!$("#overview").hidden && ++snapshots % 5 === 0) showSchedules();
  });
  source.addEventListener("error", (e) => {
    $("#live").className = "off";
    $("#live").textContent = e.data ? JSON.parse(e.data).error : "disconnected, retrying…";
  });
}

// -- jobs -------------------------------------------------------------------------------------

async function refreshJobs() {
  const state = $("#state-filter").value;
  const params = new URLSearchParams({ limit: "50" });
  if (state) params.set("state", state);
  if (page.after) params.set("after", page.after);
  let value;
  try { value = await api("GET", `/api/jobs?${params}`); } catch (e) { return; }
  jobs = value.jobs;
  const text = $("#text-filter").value.trim().toLowerCase();
  const shown = text ? jobs.filter((r) => JSON.stringify([r.id, r.key, what(r), r.worker, r.group]).toLowerCase().includes(text)) : jobs;
  $("#jobs tbody").replaceChildren(...shown.map((r) => el("tr", { "data-id": r.id },
    el("td", {}, jobLink(r.id)), el("td", {}, stateTag(r.state)), el("td", {}, what(r)),
    el("td", {}, r.worker || ""),
    el("td", {}, r.group ? el("a", { href: `#/group/${encodeURIComponent(r.group)}` }, r.group) : ""),
    el("td", {}, when(r.submitted_at)))));
  $("#next").disabled = !value.next;
  $("#next").dataset.cursor = value.next || "";
  $("#prev").disabled = page.stack.length === 0;
}

async function submitForm(event) {
  event.preventDefault();
  const form = event.target;
  const body = {};
  const get = (name) => form.elements[name].value.trim();
  if (get("shell")) body.shell = get("shell");
  if (get("call")) body.call = get("call");
  for (const name of ["priority", "retries"]) if (get(name)) body[name] = parseInt(get(name), 10);
  if (get("timeout")) body.timeout = parseFloat(get("timeout"));
  if (get("tags")) body.tags = get("tags");
  const out = $("#submit-result");
  try {
    if (get("args")) body.args = JSON.parse(get("args"));
    const { id } = await api("POST", "/api/jobs", body);
    out.className = "";
    out.replaceChildren("queued ", jobLink(id));
    refreshJobs();
  } catch (e) {
    out.className = "error";
    out.textContent = e.message;
  }
}

// -- one job ----------------------------------------------------------------------------------

function showRecord(r) {
  $("#job-state").replaceChildren(stateTag(r.state));
  $("#job-record").textContent = JSON.stringify(r, null, 2);
}

async function showJob(id) {
  $("#job-id").textContent = id;
  $("#action-error").textContent = "";
  $("#job-stdout").textContent = ""; $("#job-stderr").textContent = "";
  let record;
  try { record = await api("GET", `/api/jobs/${encodeURIComponent(id)}`); } catch (e) {
    $("#job-record").textContent = e.message; return;
  }
  showRecord(record);
  showDeps(record);
  showExplain(id);
  followLogs(id);
}

// The job's live output: `output` events carry what each stream added (tail long polls in the
// coordinator), `attempt` says a new attempt started (its output starts afresh), `end` the record.
function followLogs(id) {
  if (logStream) logStream.close();
  $("#job-note").textContent = "";
  let state = null;
  const stream = logStream = new EventSource(`/api/jobs/${encodeURIComponent(id)}/logs`);
  stream.addEventListener("attempt", (e) => {
    const d = JSON.parse(e.data);
    $("#job-stdout").textContent = ""; $("#job-stderr").textContent = "";
    if (d.previous) $("#job-note").textContent = `attempt ${d.attempt} started (attempt ${d.previous} ended)`;
  });
  stream.addEventListener("output", (e) => {
    const d = JSON.parse(e.data);
    for (const name of ["stdout", "stderr"]) {
      if (d[`${name}_gap`]) $("#job-note").textContent = `${d[`${name}_gap`]} characters of ${name} were not kept while it ran`;
      if (d[name] !== undefined) $(`#job-${name}`).textContent += d[name];
    }
    if (d.state) $("#job-state").replaceChildren(stateTag(d.state));
    if (d.state !== state) { state = d.state; showExplain(id); }
  });
  stream.addEventListener("end", (e) => { showRecord(JSON.parse(e.data)); stream.close(); showExplain(id); });
}

async function showExplain(id) {
  try {
    const { reasons } = await api("GET", `/api/jobs/${encodeURIComponent(id)}/explain`);
    $("#job-explain").replaceChildren(...reasons.map((r) => el("li", {}, r)));
  } catch (e) { $("#job-explain").replaceChildren(el("li", {}, e.message)); }
}

async function showDeps(record) {
  const box = $("#job-deps");
  const parents = record.after || [];
  let children = [];
  try {
    children = (await api("GET", `/api/jobs/${encodeURIComponent(record.id)}/children`)).map((r) => r.id);
  } catch (e) { /* the parents still show */ }
  const list = (ids) => ids.length ? ids.map((i) => jobLink(i)).flatMap((a) => [a, " "]) : ["none"];
  box.replaceChildren(el("div", {}, "after: ", ...list(parents)), el("div", {}, "needed by: ", ...list(children)),
    record.group ? el("div", {}, "group: ", el("a", { href: `#/group/${encodeURIComponent(record.group)}` }, record.group)) : "");
}

async function jobAction(action) {
  const id = $("#job-id").textContent;
  $("#action-error").textContent = "";
  try {
    const record = await api("POST", `/api/jobs/${encodeURIComponent(id)}/${action}`);
    if (record && record.state) showRecord(Array.isArray(record) ? record[0] : record);
    if (action === "retry") showJob(id);  // the new attempt: its output, state and reasons
  } catch (e) {
    $("#action-error").textContent = e.kind === "no_route"
      ? `${action} is not available on this coordinator (${e.message})` : e.message;
  }
}

// -- groups and schedules -----------------------------------------------------------------------

async function showGroup(group) {
  $("#group-id").textContent = group;
  const name = encodeURIComponent(group);
  let summary, all;
  try {
    summary = await api("GET", `/api/groups/${name}`);
    all = (await api("GET", `/api/jobs?group=${name}&limit=1000`)).jobs;
  } catch (e) { $("#group-counts").textContent = e.message; return; }
  $("#group-bar").style.width = `${(100 * summary.progress).toFixed(1)}%`;
  const counts = Object.entries(summary.counts).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`);
  const rate = summary.throughput == null ? "" : ` · ${summary.throughput.toFixed(2)} jobs/s`;
  const eta = summary.eta_s == null || summary.eta_s === 0 ? "" : ` · ETA ${Math.round(summary.eta_s)}s`;
  $("#group-counts").textContent = `${summary.done}/${summary.total} finished · ${counts.join(" · ")}${rate}${eta}`;
  $("#group-jobs tbody").replaceChildren(...all.map((r) => el("tr", {}, el("td", {}, jobLink(r.id)),
    el("td", {}, stateTag(r.state)), el("td", {}, what(r)), el("td", {}, (r.after || []).join(" ")))));
}

async function showSchedules() {
  const box = $("#schedules");
  try {
    const rows = await api("GET", "/api/schedules");
    const list = Array.isArray(rows) ? rows : (rows.schedules || []);
    box.replaceChildren(list.length ? el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "name"),
      el("th", {}, "cron / every"), el("th", {}, "state"), el("th", {}, "next fire"), el("th", {}, "fired"))),
    el("tbody", {}, ...list.map((s) => el("tr", { "data-name": s.name },
      el("td", {}, s.name), el("td", {}, s.cron ? `${s.cron}${s.tz && s.tz !== "UTC" ? ` (${s.tz})` : ""}` : (s.every ? `every ${s.every}s` : "")),
      el("td", {}, s.paused ? "paused" : "active"),
      el("td", { class: "next-fire" }, s.next_at && s.next_at.length ? new Date(s.next_at[0] * 1000).toLocaleString() : "—"),
      el("td", {}, s.fired))))) : "no schedules");
  } catch (e) {
    box.textContent = e.kind === "no_route" ? "Schedules are not available on this coordinator (no /api/schedules)." : e.message;
  }
}

// -- pages ------------------------------------------------------------------------------------

function route() {
  const [, kind, arg] = (location.hash || "#/").split("/");
  const id = arg ? decodeURIComponent(arg) : "";
  $("#overview").hidden = kind !== "";
  $("#job-view").hidden = kind !== "job";
  $("#group-view").hidden = kind !== "group";
  if (kind !== "job" && logStream) { logStream.close(); logStream = null; }
  if (kind === "job") showJob(id);
  else if (kind === "group") showGroup(id);
  else { refreshJobs(); showSchedules(); }
}

$("#submit-form").addEventListener("submit", submitForm);
$("#state-filter").addEventListener("change", () => { page = { after: null, stack: [] }; refreshJobs(); });
$("#text-filter").addEventListener("input", refreshJobs);
$("#next").addEventListener("click", () => { page.stack.push(page.after); page.after = $("#next").dataset.cursor; refreshJobs(); });
$("#prev").addEventListener("click", () => { page.after = page.stack.pop() || null; refreshJobs(); });
$("#cancel-btn").addEventListener("click", () => jobAction("cancel"));
$("#retry-btn").addEventListener("click", () => jobAction("retry"));
window.addEventListener("hashchange", route);
connectEvents();
route();
