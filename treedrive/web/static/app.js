// TreeDrive dashboard: state from the JSON API once, then kept live by the event stream.
"use strict";

const PAGE = 50;
const PEER_ROWS = 200; // the peers table shows the first 200 by id, and how many more there are
const state = {
  status: null, authorized: false, peers: new Map(), peerTotal: 0, scope: "both", offset: 0, total: 0,
  files: [], transfers: new Map(), samples: [], connected: false,
};
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function humanSize(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(1)} ${units[i]}`;
}
function humanRate(bps) { return `${humanSize(bps)}/s`; }
function ago(t) { return `${Math.max(0, Math.round(Date.now() / 1000 - t))} s ago`; }
function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
function when(ts) {
  const n = Number(ts);
  return Number.isFinite(n) && n > 0 ? new Date(n * 1000).toLocaleString() : String(ts);
}
function fileSize(f) { return humanSize(f.size_bytes ?? f.file_size * 1048576); }

function toast(message, bad = false) {
  const t = el("div", { class: bad ? "toast bad" : "toast" }, message);
  $("#toasts").append(t);
  setTimeout(() => t.remove(), bad ? 8000 : 4000);
}

async function api(method, path, body, headers = {}) {
  const resp = await fetch(path, { method, body, headers, credentials: "same-origin" });
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { error: text }; }
  if (!resp.ok) throw new Error((data && data.error) || `${resp.status} ${resp.statusText}`);
  return data;
}

// -- rendering ---------------------------------------------------------------------------------
function renderStatus() {
  const s = state.status;
  if (!s) return;
  $("#peer-id").textContent = s.peer_id;
  $("#p2p").textContent = `p2p ${s.host}:${s.port}`;
  $("#uptime").textContent = `up ${duration(Date.now() / 1000 - s.started_at)}`;
  $("#fingerprint").textContent = s.fingerprint ? `key ${s.fingerprint}` : "";
  $("#n-peers").textContent = Math.max(state.peerTotal, state.peers.size);
  $("#n-files").textContent = s.counts.files;
  $("#n-local").textContent = s.counts.local;
  $("#n-remote").textContent = s.counts.remote;
  $("#n-transfers").textContent = state.transfers.size;
  const banner = $("#banner");
  banner.hidden = state.authorized;
  banner.textContent = state.authorized ? "" :
    "Read-only view: open the dashboard address that `treedrive run` printed (it carries the node's token) to push, fetch or delete files.";
  $("#push-label").classList.toggle("disabled", !state.authorized);
  $("#push-input").disabled = !state.authorized;
  // Why the node has not joined (an unreachable bootstrap host, say): shown while it lasts.
  const problem = $("#problem");
  problem.hidden = !s.bootstrap_problem;
  problem.textContent = s.bootstrap_problem ? `⚠ Not joined: ${s.bootstrap_problem}` : "";
  renderRefused();
}

// Messages refused because their peer id is pinned to another key (or unsigned, or forged):
// the count by reason and the latest one, shown while the node runs.
function renderRefused() {
  const s = state.status;
  const box = $("#refused");
  const counts = (s && s.refused_peers) || {};
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const last = s && s.last_refused_peer;
  box.hidden = total === 0 || !last;
  if (box.hidden) { box.textContent = ""; return; }
  const by = Object.entries(counts).filter(([, n]) => n > 0).map(([k, n]) => `${n} ${k.replace("_", " ")}`);
  box.textContent = `⚠ ${total} peer message${total === 1 ? "" : "s"} refused (${by.join(", ")}); latest from ${last.source}: ${last.reason}`;
}

function renderPeers() {
  const body = $("#peers tbody");
  body.replaceChildren();
  const peers = [...state.peers.values()].sort((a, b) => a.peer_id.localeCompare(b.peer_id)).slice(0, PEER_ROWS);
  for (const p of peers) {
    body.append(el("tr", { "data-peer": p.peer_id },
      el("td", { class: "mono" }, p.peer_id),
      el("td", { class: "mono" }, `${p.host}:${p.port}`),
      el("td", { class: "seen", "data-t": p.last_seen }, ago(p.last_seen)),
      el("td", {}, el("span", { class: p.treedrive ? "badge td" : "badge" }, p.treedrive ? "TreeDrive" : "classic"))));
  }
  const total = Math.max(state.peerTotal, state.peers.size);
  if (total > peers.length) body.append(el("tr", {}, el("td", { colspan: 4, class: "muted" }, `and ${total - peers.length} more`)));
  $("#no-peers").hidden = peers.length > 0;
  $("#n-peers").textContent = total;
}

function arriving(fileId) {
  for (const t of state.transfers.values()) if (t.file_id === fileId && t.direction === "in") return true;
  return false;
}

function copyId(f) {
  const done = () => toast(`copied ${f.file_id}`);
  if (navigator.clipboard) navigator.clipboard.writeText(f.file_id).then(done, () => toast(f.file_id));
  else toast(f.file_id);
}

function fileRow(f) {
  const actions = el("td", {});
  // A file whose bytes are arriving (a fetch, or a push from a peer) is not offered for a fetch.
  if (!f.has_copy && arriving(f.file_id)) actions.append(el("span", { class: "muted arriving", "data-act": "arriving" }, "arriving…"));
  else if (!f.has_copy) actions.append(el("button", { class: "act", "data-act": "fetch", disabled: !state.authorized || !f.holders.length, onclick: () => fetchFile(f) }, "Fetch"));
  if (f.has_copy) actions.append(el("a", { class: "button", "data-act": "download", href: `/api/files/${f.file_id}/content`, download: f.display_name }, "Download"));
  if (f.mine) actions.append(" ", el("button", { class: "act danger", "data-act": "delete", disabled: !state.authorized, onclick: () => deleteFile(f) }, "Delete"));
  return el("tr", { "data-file": f.file_id },
    el("td", { class: "name", title: f.file_name }, f.display_name),
    el("td", { class: "id", title: `${f.file_id} (click to copy)`, onclick: () => copyId(f) }, f.file_id.slice(0, 12)),
    el("td", {}, f.file_owner),
    el("td", {}, fileSize(f)),
    el("td", {}, when(f.file_timestamp)),
    el("td", {}, f.has_copy ? "yes" : "no"),
    el("td", { title: f.holders.join(", ") }, f.holders.length ? f.holders.join(", ") : "–"),
    actions);
}

function refreshRow(fileId) {
  const f = state.files.find((x) => x.file_id === fileId);
  const row = f && document.querySelector(`tr[data-file="${fileId}"]`);
  if (row) row.replaceWith(fileRow(f));
}

function renderFiles() {
  const body = $("#files tbody");
  body.replaceChildren(...state.files.map(fileRow));
  $("#no-files").hidden = state.files.length > 0;
  const last = Math.min(state.offset + state.files.length, state.total);
  $("#page-info").textContent = state.total ? `${state.offset + 1}–${last} of ${state.total}` : "";
  $("#prev").disabled = state.offset === 0;
  $("#next").disabled = state.offset + PAGE >= state.total;
  for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("active", b.dataset.scope === state.scope);
}

function renderTransfers() {
  const box = $("#transfers");
  box.replaceChildren();
  for (const t of state.transfers.values()) {
    const pct = t.percent === null ? null : Math.min(100, t.percent);
    box.append(el("div", { class: "transfer", "data-transfer": t.transfer_id },
      el("div", {}, `${t.direction === "in" ? "⬇" : "⬆"} ${t.file_name}`, el("div", { class: "muted" }, t.peer_id || "")),
      el("div", { class: "bar" }, el("div", { style: `width:${pct ?? 0}%` })),
      el("div", { class: "muted" },
        `${humanSize(t.bytes_done)}${t.bytes_total ? " / " + humanSize(t.bytes_total) : ""}` +
        `${pct === null ? "" : ` · ${pct.toFixed(0)}%`} · ${humanRate(t.rate)} · ETA ${duration(t.eta)}`)));
  }
  $("#no-transfers").hidden = state.transfers.size > 0;
  $("#n-transfers").textContent = state.transfers.size;
}

function renderChart() {
  const canvas = $("#chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600, h = canvas.clientHeight || 160;
  canvas.width = w * ratio; canvas.height = h * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, w, h);
  const now = Date.now() / 1000, span = 120;
  const pts = state.samples.filter((s) => s.t > now - span);
  const max = Math.max(1024, ...pts.map((s) => Math.max(s.in, s.out)));
  ctx.strokeStyle = "#e3e6ea"; ctx.lineWidth = 1;
  for (let i = 1; i < 4; i++) { ctx.beginPath(); ctx.moveTo(0, (h * i) / 4); ctx.lineTo(w, (h * i) / 4); ctx.stroke(); }
  ctx.fillStyle = "#6b7480"; ctx.font = "11px system-ui";
  ctx.fillText(humanRate(max), 4, 12);
  for (const [key, color] of [["in", "#2f7d4f"], ["out", "#3a6fd8"]]) {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    pts.forEach((s, i) => {
      const x = w - ((now - s.t) / span) * w, y = h - (s[key] / max) * (h - 16);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  const last = pts[pts.length - 1];
  $("#rate-now").textContent = last ? `now: in ${humanRate(last.in)}, out ${humanRate(last.out)}` : "";
}

// -- loading -----------------------------------------------------------------------------------
async function loadStatus() {
  state.status = await api("GET", "/api/status");
  state.authorized = !!state.status.authorized;
  renderStatus();
}
async function loadPeers() {
  const data = await api("GET", `/api/peers?limit=${PEER_ROWS}`);
  state.peers = new Map(data.peers.map((p) => [p.peer_id, p]));
  state.peerTotal = data.total;
  renderPeers();
}
async function loadFiles() {
  const data = await api("GET", `/api/files?scope=${state.scope}&offset=${state.offset}&limit=${PAGE}`);
  if (data.total > 0 && data.offset >= data.total) { state.offset = Math.max(0, data.total - PAGE); return loadFiles(); }
  state.files = data.files; state.total = data.total;
  renderFiles();
}
async function loadTransfers() {
  const data = await api("GET", "/api/transfers");
  // Keep this page's own uploads (negative ids): the node does not list them until they land.
  const uploads = [...state.transfers.values()].filter((t) => t.transfer_id < 0);
  state.transfers = new Map([...data.active, ...uploads].map((t) => [t.transfer_id, t]));
  renderTransfers();
  if (state.files.length) renderFiles(); // "arriving…" follows the transfers
}
async function loadThroughput() {
  state.samples = (await api("GET", "/api/throughput")).samples;
  renderChart();
}
async function loadAll() {
  await Promise.all([loadStatus(), loadPeers(), loadFiles(), loadTransfers(), loadThroughput()]);
}

// Coalesce bursts of events (thousands of records arriving at once) into one small refresh.
const pending = { files: false, status: false, peers: false, peerRows: false };
let flushTimer = null;
function soon(what) {
  pending[what] = true;
  if (flushTimer) return;
  flushTimer = setTimeout(async () => {
    flushTimer = null;
    const jobs = [];
    if (pending.files) jobs.push(loadFiles());
    if (pending.status) jobs.push(loadStatus());
    if (pending.peers) jobs.push(loadPeers());
    else if (pending.peerRows) renderPeers();
    pending.files = pending.status = pending.peers = pending.peerRows = false;
    try { await Promise.all(jobs); } catch (e) { console.warn(e); }
  }, 300);
}

function inScope(f) {
  return state.scope === "both" || (state.scope === "local") === f.has_copy;
}

function upsertFile(f) {
  const i = state.files.findIndex((x) => x.file_id === f.file_id);
  if (i >= 0 && inScope(f)) {
    state.files[i] = f;
    const row = document.querySelector(`tr[data-file="${f.file_id}"]`);
    if (row) { const fresh = fileRow(f); fresh.classList.add("flash"); row.replaceWith(fresh); }
  } else {
    soon("files"); // a new row, or one that left this view: the page's order changed
  }
  soon("status");
}

// -- live events -------------------------------------------------------------------------------
function onEvent(ev) {
  switch (ev.type) {
    case "Hello":
      state.status = ev.status; renderStatus();
      loadAll().catch((e) => toast(`reload failed: ${e.message}`, true));
      break;
    case "PeerSeen":
      // Thousands of peers gossip each interval: one table refresh per burst, not per peer.
      if (state.peers.has(ev.peer.peer_id)) { state.peers.set(ev.peer.peer_id, ev.peer); soon("peerRows"); }
      if (ev.new) { soon("peers"); soon("status"); } // a first peer ends a bootstrap problem
      break;
    case "PeerExpired":
      state.peers.delete(ev.peer_id); soon("peers"); soon("status"); break;
    case "FileAdvertised":
      // A new record or holder: the page's rows (and totals) change; coalesced.
      soon("files"); soon("status");
      break;
    case "FileStored":
      if (ev.file) upsertFile(ev.file);
      toast(`stored ${ev.file ? ev.file.display_name : ev.file_id.slice(0, 12)}`);
      break;
    case "Resync":
      loadAll().catch((e) => toast(`reload failed: ${e.message}`, true));
      break;
    case "FileDeleted": {
      const i = state.files.findIndex((x) => x.file_id === ev.file_id);
      if (i >= 0) soon("files");
      soon("status");
      break;
    }
    case "TransferProgress": {
      const known = state.transfers.has(ev.transfer.transfer_id);
      state.transfers.set(ev.transfer.transfer_id, ev.transfer); renderTransfers();
      if (!known) refreshRow(ev.transfer.file_id); // its Fetch button gives way to "arriving…"
      break;
    }
    case "TransferFinished":
      state.transfers.delete(ev.transfer.transfer_id); renderTransfers();
      refreshRow(ev.transfer.file_id);
      if (!ev.ok) toast(`transfer of ${ev.transfer.file_name} from ${ev.transfer.peer_id} failed: ${ev.error}`, true);
      break;
    case "FileRefused":
      toast(`refused ${ev.file_id.slice(0, 12)}… from ${ev.peer_id}: ${ev.reason}`, true); break;
    case "PeerRefused":
      toast(ev.reason, true);
      if (state.status) {
        const counts = state.status.refused_peers || (state.status.refused_peers = {});
        counts[ev.code] = (counts[ev.code] || 0) + 1;
        state.status.last_refused_peer = ev;
        renderRefused();
      }
      soon("status");
      break;
    case "Throughput":
      state.samples.push({ t: ev.t, in: ev.in, out: ev.out });
      if (state.samples.length > 300) state.samples.shift();
      renderChart(); break;
  }
}

const EVENT_TYPES = [
  "Hello", "Resync", "Throughput", "PeerSeen", "PeerExpired", "FileAdvertised", "FileStored",
  "FileDeleted", "TransferProgress", "TransferFinished", "FileRefused", "PeerRefused",
];

function connect() {
  const source = new EventSource("/api/events");
  source.onopen = () => {
    state.connected = true;
    const c = $("#conn"); c.className = "conn live"; c.textContent = "live";
  };
  // Each event comes with its type on an event: line (and an id: the browser sends the last
  // one back when it reconnects, and gets the events it missed).
  const handle = (m) => { try { onEvent(JSON.parse(m.data)); } catch (e) { console.warn(e); } };
  for (const type of EVENT_TYPES) source.addEventListener(type, handle);
  source.onmessage = handle; // an event with no type (none today)
  source.onerror = () => {
    state.connected = false;
    const c = $("#conn"); c.className = "conn lost"; c.textContent = "lost the node — reconnecting…";
    // EventSource retries by itself (retry: 2000); a closed stream needs a new one.
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 2000);
  };
}

// -- actions -----------------------------------------------------------------------------------
async function fetchFile(f) {
  toast(`fetching ${f.display_name}…`);
  try { await api("POST", `/api/files/${f.file_id}/fetch`); }
  catch (e) { toast(`fetch failed: ${e.message}`, true); }
}
async function deleteFile(f) {
  if (!confirm(`Delete ${f.display_name} everywhere?`)) return;
  try { await api("DELETE", `/api/files/${f.file_id}`); toast(`deleted ${f.display_name}`); }
  catch (e) { toast(`delete failed: ${e.message}`, true); }
}
function pushFiles(list) {
  if (!state.authorized) { toast("read-only view: open the address with the token to push", true); return; }
  for (const file of list) {
    const xhr = new XMLHttpRequest();
    const id = -Math.floor(Math.random() * 1e9);
    const t = { transfer_id: id, file_name: file.name, direction: "out", peer_id: "upload", bytes_done: 0, bytes_total: file.size, percent: 0, rate: 0, eta: null };
    const started = Date.now();
    state.transfers.set(id, t); renderTransfers();
    xhr.upload.onprogress = (e) => {
      const secs = (Date.now() - started) / 1000;
      t.bytes_done = e.loaded; t.percent = file.size ? (100 * e.loaded) / file.size : 100;
      t.rate = secs > 0 ? e.loaded / secs : 0; t.eta = t.rate > 0 ? (file.size - e.loaded) / t.rate : null;
      renderTransfers();
    };
    xhr.onloadend = () => {
      state.transfers.delete(id); renderTransfers();
      let body = null; try { body = JSON.parse(xhr.responseText); } catch {}
      if (xhr.status === 201) toast(`pushed ${file.name}`);
      else if (xhr.status === 200 && body && body.existing) toast(`${file.name} is already shared as ${body.file_id.slice(0, 12)} (not pushed again)`);
      else { let m = xhr.statusText; try { m = JSON.parse(xhr.responseText).error; } catch {} toast(`push of ${file.name} failed: ${m || "connection lost"}`, true); }
    };
    xhr.open("POST", `/api/files?name=${encodeURIComponent(file.name)}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.send(file);
  }
}

function wire() {
  $("#push-input").addEventListener("change", (e) => { pushFiles(e.target.files); e.target.value = ""; });
  const drop = $("#drop");
  for (const name of ["dragenter", "dragover"]) document.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const name of ["dragleave", "drop"]) document.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  document.addEventListener("drop", (e) => { if (e.dataTransfer && e.dataTransfer.files.length) pushFiles(e.dataTransfer.files); });
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => { state.scope = b.dataset.scope; state.offset = 0; loadFiles(); });
  $("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); loadFiles(); });
  $("#next").addEventListener("click", () => { state.offset += PAGE; loadFiles(); });
  // The status (counts, a bootstrap problem) is read again besides the events: every 2 s while
  // the node has no peer or a problem to show, else every 10 s.
  let tick = 0;
  setInterval(() => {
    tick++;
    const lonely = state.peers.size === 0 || (state.status && state.status.bootstrap_problem);
    if (state.connected && (lonely || tick % 5 === 0)) loadStatus().catch((e) => console.warn(e));
  }, 2000);
  setInterval(() => {
    for (const td of document.querySelectorAll("td.seen")) td.textContent = ago(Number(td.dataset.t));
    if (state.status && state.connected) $("#uptime").textContent = `up ${duration(Date.now() / 1000 - state.status.started_at)}`;
  }, 1000);
  window.addEventListener("resize", renderChart);
}

wire();
connect();
