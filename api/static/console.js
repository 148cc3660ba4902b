/* bwfast web console. Plain JavaScript, no build step; charts by uPlot (vendor/).
   Every figure comes from the REST API (/bwiot/api/v1/) with the login's bearer token. */
"use strict";

const API = "/bwiot/api/v1/";
const TOKEN_KEY = "bwfast.console.token";
const main = document.getElementById("main");
let timers = [];      // intervals of the page on screen, cleared on navigation
let cleanups = [];    // other things to stop on navigation (live streams, charts)

// ---------------------------------------------------------------- helpers
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const fmt = new Intl.NumberFormat();
function num(n) { return n === null || n === undefined ? "–" : fmt.format(n); }
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const u = ["B", "KB", "MB", "GB", "TB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}
function when(ms) { return ms ? new Date(ms).toLocaleString() : "–"; }
function duration(s) {
  s = Math.floor(s); const d = Math.floor(s / 86400), hh = Math.floor(s % 86400 / 3600),
    m = Math.floor(s % 3600 / 60);
  return (d ? d + "d " : "") + (d || hh ? hh + "h " : "") + m + "m " + (s % 60) + "s";
}
function badge(active) {
  return h("span", {class: "badge " + (active ? "on" : "off")}, active ? "active" : "inactive");
}
function b64bytes(b64) { return Uint8Array.from(atob(b64), c => c.charCodeAt(0)); }
function asText(u8) {
  try { return new TextDecoder("utf-8", {fatal: true}).decode(u8); } catch (e) { return null; }
}
function asHex(u8) { return Array.from(u8, b => b.toString(16).padStart(2, "0")).join(" "); }
function payloadOf(row) {  // a REST row: message as text, or base64 with "encoding"
  return row.encoding === "base64" ? b64bytes(row.message) : new TextEncoder().encode(row.message);
}
function flash(text, ok) {
  const el = document.getElementById("flash");
  el.textContent = (ok ? "✓ " : "✗ ") + text;
  el.className = ok ? "ok" : "err";
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, 6000);
}
function every(ms, fn) { fn(); timers.push(setInterval(fn, ms)); }

// ---------------------------------------------------------------- API
function token() { return sessionStorage.getItem(TOKEN_KEY); }
class ApiError extends Error {
  constructor(status, body) {
    const reason = body && (body["bwapi-status-reason"] ||
      (body.status && body.status["bwapi-status-reason"]));
    super(reason || ("HTTP " + status)); this.status = status; this.body = body;
  }
}
async function call(method, path, fields) {
  let url = API + path;
  const opts = {method, headers: {}};
  if (token()) opts.headers.Authorization = "Bearer " + token();
  if (method === "GET" && fields) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(fields)) if (v !== undefined && v !== "") q.set(k, v);
    url += "?" + q;
  } else if (fields) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(fields);
  }
  const r = await fetch(url, opts);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (r.status === 401 && path !== "login") { loggedOut(); throw new ApiError(401, body); }
  const failed = body && (body["bwapi-status"] === "fail" ||
    (body.status && body.status["bwapi-status"] === "fail"));
  if (!r.ok || failed) throw new ApiError(r.status, body);
  return body;
}
const get = (path, q) => call("GET", path, q);
const post = (path, f) => call("POST", path, f);
async function act(what, fn) {  // run an action, say how it went
  try { const b = await fn(); flash(what + ": done", true); return b; }
  catch (e) { flash(what + ": " + e.message, false); return null; }
}

// ---------------------------------------------------------------- login / routing
function loggedOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  route();
}
function loginPage() {
  document.getElementById("top").hidden = true;
  const err = h("p", {id: "login-error", class: "error", role: "alert", hidden: true});
  const user = h("input", {id: "login-user", name: "username", autocomplete: "username", required: true});
  const pass = h("input", {id: "login-pass", name: "password", type: "password",
                           autocomplete: "current-password", required: true});
  const form = h("form", {id: "login-form", onsubmit: async ev => {
    ev.preventDefault();
    try {
      const b = await call("POST", "login", {username: user.value, password: pass.value});
      sessionStorage.setItem(TOKEN_KEY, b.access_token);
      route();
    } catch (e) { err.textContent = e.message; err.hidden = false; }
  }},
    h("label", {}, "Username", user), h("label", {}, "Password", pass),
    h("button", {class: "primary", type: "submit", id: "login-submit"}, "Log in"), err);
  main.replaceChildren(h("section", {class: "login", id: "page-login"},
    h("h1", {}, "bwfast console"), h("p", {class: "muted"}, "The [api] username and password."),
    form));
  user.focus();
}
document.getElementById("logout").addEventListener("click", async () => {
  try { await post("logout"); } catch (e) { /* already invalid: same outcome */ }
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = "#/";
  route();
});

const PAGES = {
  "": overviewPage, "devices": devicesPage, "device": devicePage, "credentials": credentialsPage,
  "acl": aclPage, "retained": retainedPage, "live": livePage,
};
function route() {
  timers.forEach(clearInterval); timers = [];
  cleanups.forEach(f => f()); cleanups = [];
  document.getElementById("flash").hidden = true;  // an outcome belongs to its page
  if (!token()) { loginPage(); return; }
  document.getElementById("top").hidden = false;
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const name = parts[0] in PAGES ? parts[0] : "";
  for (const a of document.querySelectorAll("nav a")) {
    const page = a.dataset.page === "overview" ? "" : a.dataset.page;
    if (page === name || (name === "device" && page === "devices")) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  main.replaceChildren();
  PAGES[name](parts.slice(1).map(decodeURIComponent));
}
window.addEventListener("hashchange", route);

// ---------------------------------------------------------------- Overview
function card(label, id) {
  return h("div", {class: "card"}, h("div", {class: "k"}, label), h("div", {class: "v", id}, "–"));
}
function makeChart(el, title, series, unit) {
  const opts = {
    title, width: Math.max(300, el.clientWidth - 16), height: 220,
    scales: {x: {time: true}},
    axes: [{}, {values: (u, vals) => vals.map(v => unit === "B" ? bytes(v) : num(v)), size: 70}],
    series: [{}, ...series.map(([label, stroke, dash]) => ({
      label, stroke, width: 2, dash,
      value: (u, v) => v === null || v === undefined ? "–"
        : unit === "B" ? bytes(v) + "/s" : unit === "n" ? num(Math.round(v)) + "/s" : num(v),
    }))],
  };
  const chart = new uPlot(opts, [[], ...series.map(() => [])], el);
  const resize = () => chart.setSize({width: Math.max(300, el.clientWidth - 16), height: 220});
  window.addEventListener("resize", resize);
  cleanups.push(() => { window.removeEventListener("resize", resize); chart.destroy(); });
  return chart;
}
function rates(t, totals) {  // running totals → per-second rates, one point per interval
  const out = [];
  for (let i = 1; i < t.length; i++) {
    const dt = t[i] - t[i - 1];
    out.push(dt > 0 ? Math.max(0, (totals[i] - totals[i - 1]) / dt) : 0);
  }
  return out;
}
function overviewPage() {
  const msgs = h("div", {class: "chart", id: "chart-messages"});
  const bts = h("div", {class: "chart", id: "chart-bytes"});
  const conn = h("div", {class: "chart", id: "chart-connected"});
  const listeners = h("tbody", {id: "listeners"});
  const workers = h("tbody", {id: "workers"});
  main.append(h("section", {id: "page-overview"},
    h("h1", {}, "Overview"),
    h("div", {class: "cards"},
      card("Connected clients", "stat-connected"), card("Messages in /s", "stat-in-rate"),
      card("Messages out /s", "stat-out-rate"), card("Retained", "stat-retained"),
      card("Subscriptions", "stat-subscriptions"), card("Queued", "stat-queued"),
      card("In flight", "stat-inflight"), card("Dropped", "stat-dropped"),
      card("Messages in", "stat-messages-in"), card("Messages out", "stat-messages-out"),
      card("Bytes in", "stat-bytes-in"), card("Bytes out", "stat-bytes-out"),
      card("Uptime", "stat-uptime"), card("Version", "stat-version")),
    h("div", {class: "charts"}, msgs, bts, conn),
    h("div", {class: "cols"},
      h("div", {}, h("h2", {}, "Connections per listener"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Listener"), h("th", {class: "num"}, "Clients"))), listeners)),
      h("div", {}, h("h2", {}, "Workers"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Worker"), h("th", {}, "State"),
          h("th", {class: "num"}, "Clients"), h("th", {class: "num"}, "CPU s"), h("th", {class: "num"}, "RSS"))), workers)))));
  const cm = makeChart(msgs, "Messages per second", [["in (solid)", "#0b5cad", undefined], ["out (dashed)", "#b35900", [6, 4]]], "n");
  const cb = makeChart(bts, "Bytes per second", [["in (solid)", "#0b5cad", undefined], ["out (dashed)", "#b35900", [6, 4]]], "B");
  const cc = makeChart(conn, "Connected clients", [["connected", "#17663a", undefined]], "c");
  let s = null;   // the series: t and running totals, 15 minutes
  const WINDOW = 900;
  function draw() {
    const t = s.t.slice(1);
    cm.setData([t, rates(s.t, s.messages_in), rates(s.t, s.messages_out)]);
    cb.setData([t, rates(s.t, s.bytes_in), rates(s.t, s.bytes_out)]);
    cc.setData([s.t, s.connected]);
  }
  async function tick() {
    let st;
    try { st = (await get("stats", s ? {} : {series: 1})).stats; } catch (e) { return; }
    if (!s) s = st.series;
    else {
      const t = st.time / 1000;
      if (!s.t.length || t > s.t[s.t.length - 1]) {
        s.t.push(t);
        for (const k of ["messages_in", "messages_out", "bytes_in", "bytes_out", "connected"]) s[k].push(st[k]);
        if (s.t.length > WINDOW) for (const k in s) s[k].shift();
      }
    }
    if (!document.getElementById("page-overview")) return;  // navigated away meanwhile
    const n = s.t.length;
    const rate = k => n > 1 ? rates(s.t.slice(-2), s[k].slice(-2))[0] : 0;
    const set = (id, v) => { document.getElementById(id).textContent = v; };
    set("stat-connected", num(st.connected));
    set("stat-in-rate", num(Math.round(rate("messages_in"))));
    set("stat-out-rate", num(Math.round(rate("messages_out"))));
    set("stat-retained", num(st.retained));
    set("stat-subscriptions", num(st.subscriptions));
    set("stat-queued", num(st.queued));
    set("stat-inflight", num(st.inflight));
    set("stat-dropped", num(st.dropped));
    set("stat-messages-in", num(st.messages_in));
    set("stat-messages-out", num(st.messages_out));
    set("stat-bytes-in", bytes(st.bytes_in));
    set("stat-bytes-out", bytes(st.bytes_out));
    set("stat-uptime", duration(st.uptime));
    set("stat-version", st.version);
    listeners.replaceChildren(...Object.entries(st.listeners).sort().map(([k, v]) =>
      h("tr", {}, h("td", {}, k), h("td", {class: "num"}, num(v)))));
    if (!Object.keys(st.listeners).length) listeners.append(h("tr", {}, h("td", {colspan: 2, class: "muted"}, "no clients connected")));
    workers.replaceChildren(...st.workers.map((w, i) => w === null
      ? h("tr", {}, h("td", {}, String(i)), h("td", {}, "✗ not answering"), h("td", {}), h("td", {}), h("td", {}))
      : h("tr", {}, h("td", {}, String(w.worker)), h("td", {}, "✓ up"), h("td", {class: "num"}, num(w.connected)),
          h("td", {class: "num"}, w.cpu_seconds.toFixed(1)), h("td", {class: "num"}, bytes(w.rss_bytes)))));
    draw();
  }
  every(1000, tick);
}

// ---------------------------------------------------------------- Devices
const devState = {status: "all", search: "", sort: "connected", order: "desc", page: 1, limit: 25};
function devicesPage() {
  const st = devState;
  const status = h("select", {id: "dev-status", onchange: () => { st.status = status.value; st.page = 1; load(); }},
    ...["all", "active", "inactive"].map(v => h("option", {value: v, selected: v === st.status}, v)));
  const search = h("input", {id: "dev-search", type: "search", placeholder: "client id or username", value: st.search});
  let debounce = null;
  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => { st.search = search.value.trim(); st.page = 1; load(); }, 250);
  });
  const sort = h("select", {id: "dev-sort", onchange: () => { st.sort = sort.value; load(); }},
    ...[["connected", "last connected"], ["id", "client id"], ["username", "username"], ["status", "status"]]
      .map(([v, l]) => h("option", {value: v, selected: v === st.sort}, l)));
  const order = h("select", {id: "dev-order", onchange: () => { st.order = order.value; load(); }},
    h("option", {value: "desc", selected: st.order === "desc"}, "descending"),
    h("option", {value: "asc", selected: st.order === "asc"}, "ascending"));
  const body = h("tbody", {id: "dev-rows"});
  const info = h("span", {id: "dev-pageinfo"});
  const prev = h("button", {id: "dev-prev", onclick: () => { if (st.page > 1) { st.page--; load(); } }}, "← Previous");
  const next = h("button", {id: "dev-next", onclick: () => { st.page++; load(); }}, "Next →");
  main.append(h("section", {id: "page-devices"}, h("h1", {}, "Devices"),
    h("div", {class: "row"}, h("label", {}, "Status", status), h("label", {}, "Search", search),
      h("label", {}, "Sort by", sort), h("label", {}, "Order", order)),
    h("table", {id: "dev-table"}, h("thead", {}, h("tr", {},
      ...["Client id", "Status", "Username", "Listener", "Address", "Last connected", "Worker"].map(t => h("th", {}, t)))), body),
    h("div", {class: "pager"}, prev, info, next)));
  let seq = 0;
  async function load() {
    const mine = ++seq;
    let b;
    try { b = await get("clients", {status: st.status, search: st.search, sort: st.sort, order: st.order, page: st.page, limit: st.limit}); }
    catch (e) { return; }
    if (mine !== seq) return;
    if (st.page > b.page) { st.page = b.page; return load(); }
    body.replaceChildren(...b.data.map(d => h("tr", {"data-id": d.device_id},
      h("td", {}, h("a", {href: "#/device/" + encodeURIComponent(d.device_id), class: "mono"}, d.device_id)),
      h("td", {}, badge(d.status === "active")), h("td", {}, d.username || "–"), h("td", {}, d.listener),
      h("td", {class: "mono"}, d.address || "–"), h("td", {}, when(d.device_connected_time)),
      h("td", {class: "num"}, d.worker ?? "–"))));
    if (!b.data.length) body.append(h("tr", {}, h("td", {colspan: 7, class: "muted"}, "no devices")));
    info.textContent = `page ${b.current_page} of ${b.page} · ${num(b.total)} devices`;
    prev.disabled = st.page <= 1; next.disabled = st.page >= b.page;
  }
  every(1000, load);
}

// ---------------------------------------------------------------- Device
function kv(pairs) {
  return h("dl", {class: "kv"}, ...pairs.flatMap(([k, v, id]) => [h("dt", {}, k), h("dd", {id}, v)]));
}
function messagesTable(rows, id) {
  if (!rows || !rows.length) return h("p", {class: "muted", id}, "none");
  return h("table", {id}, h("thead", {}, h("tr", {}, h("th", {}, "Time"), h("th", {}, "Topic"), h("th", {}, "Payload"))),
    h("tbody", {}, ...rows.map(r => h("tr", {}, h("td", {}, when(r.time)), h("td", {class: "mono"}, r.topic),
      h("td", {class: "mono"}, r.encoding === "base64" ? "hex: " + asHex(payloadOf(r)) : r.message)))));
}
function devicePage([cid]) {
  const info = h("div", {id: "device-info"});
  const history = h("div", {class: "cols"});
  const rules = h("div", {id: "device-acl"});
  // -- actions
  const sTopic = h("input", {id: "send-topic", required: true, placeholder: "topic"});
  const sMsg = h("input", {id: "send-message", placeholder: "message"});
  const sQos = h("select", {id: "send-qos"}, ...[0, 1, 2].map(q => h("option", {value: q}, "QoS " + q)));
  const sRetain = h("input", {id: "send-retain", type: "checkbox"});
  const send = h("form", {class: "row", id: "send-form", onsubmit: async ev => {
    ev.preventDefault();
    await act("Send message", () => post("send_client", {clientid: cid, topic: sTopic.value, message: sMsg.value,
      QoS: Number(sQos.value), retain: sRetain.checked ? 1 : 0}));
    load();
  }}, h("label", {}, "Topic", sTopic), h("label", {}, "Message", sMsg), h("label", {}, "QoS", sQos),
    h("label", {}, "Retain", sRetain), h("button", {class: "primary", type: "submit", id: "send-submit"}, "Send message"));
  const kick = h("button", {class: "danger", id: "kick", onclick: async () => {
    if (!confirm("Disconnect " + cid + "?")) return;
    await act("Kick", () => post("kick", {clientid: cid})); load();
  }}, "Kick (disconnect)");
  const clear = h("button", {id: "clear-queue", onclick: async () => {
    if (!confirm("Drop the queued messages of " + cid + "?")) return;
    await act("Clear queue", () => post("clear_queue", {clientid: cid})); load();
  }}, "Clear offline queue");
  const credBox = h("div", {id: "device-credentials"});
  const ruleTopic = h("input", {id: "device-acl-topic", placeholder: "topic filter"});
  const ruleAccess = accessSelect("device-acl-access");
  const ruleKind = h("select", {id: "device-acl-kind"}, h("option", {value: "clientid"}, "this client id"),
    h("option", {value: "username"}, "its username"));
  let username = null;
  const ruleForm = h("form", {class: "row", id: "device-acl-form", onsubmit: async ev => {
    ev.preventDefault();
    const who = ruleKind.value === "clientid" ? {clientid: cid} : {username: username || ""};
    await act("Add ACL rule", () => post("add_acl", {...who, topic: ruleTopic.value, access: ruleAccess.value}));
    loadRules();
  }}, h("label", {}, "For", ruleKind), h("label", {}, "Topic filter", ruleTopic), h("label", {}, "Access", ruleAccess),
    h("button", {type: "submit"}, "Add rule"));
  main.append(h("section", {id: "page-device"},
    h("p", {}, h("a", {href: "#/devices"}, "← Devices")),
    h("h1", {}, "Device ", h("code", {id: "device-id"}, cid)),
    info,
    h("h2", {}, "Actions"), send, h("div", {class: "row"}, kick, clear),
    h("h2", {}, "Credentials"), credBox,
    h("h2", {}, "ACL rules"), rules, ruleForm,
    history));
  async function loadRules() {
    const lists = [await get("acls", {clientid: cid}).catch(() => ({}))];
    if (username) lists.push(await get("acls", {username}).catch(() => ({})));
    const rows = lists.flatMap(b => b.acls || []);
    rules.replaceChildren(rows.length ? aclTable(rows, loadRules, "device-acl-table") : h("p", {class: "muted"}, "no run-time rules for this client or its username"));
  }
  let credFor;
  function credentials(user) {
    if (user === credFor) return;
    credFor = user;
    if (!user) { credBox.replaceChildren(h("p", {class: "muted"}, "connected without a username")); return; }
    const pw = h("input", {id: "device-new-password", type: "password", autocomplete: "new-password"});
    credBox.replaceChildren(h("form", {class: "row", onsubmit: async ev => {
      ev.preventDefault();
      await act("Change password of " + user, () => post("edit_auth", {username: user, new_password: pw.value}));
      pw.value = "";
    }}, h("span", {}, "Username ", h("code", {}, user)), h("label", {}, "New password", pw),
      h("button", {type: "submit"}, "Change password"),
      h("button", {type: "button", class: "danger", onclick: async () => {
        if (!confirm("Remove the credentials of " + user + "? Its connections are closed.")) return;
        await act("Remove credentials of " + user, () => post("remove_auth", {username: user}));
      }}, "Remove credentials")));
  }
  async function load() {
    let d;
    try { d = (await get("client", {clientid: cid})).client; }
    catch (e) { info.replaceChildren(h("p", {class: "error"}, e.message)); return; }
    const will = d.will;
    info.replaceChildren(
      kv([["Status", badge(d.connected), "device-status"], ["Protocol", d.protocol_version || "–"],
          ["Listener", d.listener || "–"], ["Address", d.address || "–"], ["Username", d.username || "–"],
          ["Keep alive", d.keepalive != null ? d.keepalive + " s" : "–"],
          ["Connected since", when(d.device_connected_time)],
          ["Session", d.persistent ? "persistent" : "clean"],
          ["Session expiry", d.session_expiry === null ? "never" : d.session_expiry + " s"],
          ["Queued", num(d.queued), "device-queued"], ["In flight", num(d.inflight), "device-inflight"],
          ["Worker", d.worker ?? "–"],
          ["Will", will ? `${will.topic} (QoS ${will.QoS}${will.retain ? ", retained" : ""}): ${will.encoding === "base64" ? "hex " + asHex(payloadOf(will)) : will.message}` : "none", "device-will"]]),
      h("h2", {}, "Subscriptions"),
      d.subscriptions.length ? h("table", {id: "device-subs"}, h("thead", {}, h("tr", {}, h("th", {}, "Topic filter"), h("th", {class: "num"}, "QoS"))),
        h("tbody", {}, ...d.subscriptions.map(s => h("tr", {}, h("td", {class: "mono"}, s.topic), h("td", {class: "num"}, String(s.QoS))))))
        : h("p", {class: "muted", id: "device-subs"}, "no subscriptions"));
    kick.disabled = !d.connected;
    if (d.username !== username) { username = d.username; loadRules(); }
    credentials(d.username);
    const ev = await get("last_events_by_device", {device_id: cid, limit: 10}).catch(() => ({}));
    const cm = await get("last_commands_to_device", {device_id: cid, limit: 10}).catch(() => ({}));
    history.replaceChildren(h("div", {}, h("h2", {}, "Last events (published by it)"), messagesTable(ev.events, "device-events")),
      h("div", {}, h("h2", {}, "Last commands (delivered to it)"), messagesTable(cm.commands, "device-commands")));
  }
  loadRules();
  every(2000, load);
}

// ---------------------------------------------------------------- Credentials
function credentialsPage() {
  const list = h("div", {id: "cred-list"});
  const user = h("input", {id: "cred-user", required: true, autocomplete: "off"});
  const pass = h("input", {id: "cred-pass", type: "password", required: true, autocomplete: "new-password"});
  main.append(h("section", {id: "page-credentials"}, h("h1", {}, "Credentials"),
    h("p", {class: "muted"}, "Username and password a device must present in CONNECT when [authentication] is enabled."),
    h("form", {class: "row", id: "cred-form", onsubmit: async ev => {
      ev.preventDefault();
      const b = await act("Add " + user.value, () => post("add_auth", {username: user.value, password: pass.value}));
      if (b) { user.value = ""; pass.value = ""; }
      load();
    }}, h("label", {}, "Username", user), h("label", {}, "Password", pass), h("button", {class: "primary", type: "submit", id: "cred-add"}, "Add")),
    list));
  async function load() {
    const b = await get("credentials").catch(() => ({usernames: []}));
    if (!b.usernames.length) { list.replaceChildren(h("p", {class: "muted"}, "no credentials")); return; }
    list.replaceChildren(h("table", {id: "cred-table"}, h("thead", {}, h("tr", {}, h("th", {}, "Username"), h("th", {}, "Change password"), h("th", {}, ""))),
      h("tbody", {}, ...b.usernames.map(u => {
        const pw = h("input", {type: "password", "aria-label": "new password for " + u, autocomplete: "new-password"});
        return h("tr", {"data-user": u}, h("td", {class: "mono"}, u),
          h("td", {}, h("form", {class: "row", onsubmit: async ev => {
            ev.preventDefault();
            await act("Change password of " + u, () => post("edit_auth", {username: u, new_password: pw.value}));
            pw.value = "";
          }}, pw, h("button", {type: "submit"}, "Change"))),
          h("td", {}, h("button", {class: "danger", onclick: async () => {
            if (!confirm("Remove " + u + "? Its connections are closed.")) return;
            await act("Remove " + u, () => post("remove_auth", {username: u})); load();
          }}, "Remove")));
      }))));
  }
  load();
}

// ---------------------------------------------------------------- ACL
function accessSelect(id) {
  return h("select", {id}, ...["read", "write", "readwrite", "deny"].map(a => h("option", {value: a}, a)));
}
function aclTable(rows, reload, id) {
  return h("table", {id}, h("thead", {}, h("tr", {}, ...["Kind", "Who", "Topic filter", "Access", ""].map(t => h("th", {}, t)))),
    h("tbody", {}, ...rows.map(r => h("tr", {}, h("td", {}, r.kind), h("td", {class: "mono"}, r.who || "(everyone)"),
      h("td", {class: "mono"}, r.topic), h("td", {}, r.access),
      h("td", {}, h("button", {class: "danger", onclick: async () => {
        const who = r.kind === "pattern" ? {pattern: true} : {[r.kind]: r.who};
        await act("Remove rule", () => post("remove_acl", {...who, topic: r.topic})); reload();
      }}, "Remove"))))));
}
function aclPage() {
  const list = h("div", {id: "acl-list"});
  const kind = h("select", {id: "acl-kind"}, ...["username", "clientid", "pattern"].map(k => h("option", {value: k}, k)));
  const who = h("input", {id: "acl-who", placeholder: "username or client id"});
  const topic = h("input", {id: "acl-topic", required: true, placeholder: "e.g. sensors/%u/#"});
  const access = accessSelect("acl-access");
  kind.addEventListener("change", () => { who.disabled = kind.value === "pattern"; });
  main.append(h("section", {id: "page-acl"}, h("h1", {}, "Access control"),
    h("p", {class: "muted"}, "Run-time rules (applied at once, also to live subscriptions). Rules of the [acl] file are not listed. A pattern applies to everyone; %u and %c stand for the username and client id."),
    h("form", {class: "row", id: "acl-form", onsubmit: async ev => {
      ev.preventDefault();
      const w = kind.value === "pattern" ? {pattern: true} : {[kind.value]: who.value};
      await act("Add rule", () => post("add_acl", {...w, topic: topic.value, access: access.value}));
      load();
    }}, h("label", {}, "Kind", kind), h("label", {}, "Who", who), h("label", {}, "Topic filter", topic),
      h("label", {}, "Access", access), h("button", {class: "primary", type: "submit", id: "acl-add"}, "Add rule")),
    list));
  async function load() {
    const b = await get("acls").catch(() => ({}));
    list.replaceChildren(b.acls && b.acls.length ? aclTable(b.acls, load, "acl-table") : h("p", {class: "muted"}, "no run-time rules"));
  }
  load();
}

// ---------------------------------------------------------------- Retained
function payloadView(u8, id) {
  const text = asText(u8);
  const pre = h("pre", {class: "payload", id}, text !== null ? text : asHex(u8));
  const mode = h("select", {"aria-label": "show payload as", onchange: () => {
    pre.textContent = mode.value === "hex" || text === null ? asHex(u8) : text;
  }}, h("option", {value: "text", disabled: text === null}, "text"), h("option", {value: "hex", selected: text === null}, "hex"));
  return h("div", {}, h("label", {}, "Show as", mode), pre);
}
function retainedPage() {
  const prefix = h("input", {id: "ret-prefix", type: "search", placeholder: "topic prefix, e.g. sensors/"});
  const body = h("tbody", {id: "ret-rows"});
  const more = h("button", {id: "ret-more", hidden: true}, "More →");
  const view = h("div", {id: "ret-view"});
  const info = h("p", {class: "muted", id: "ret-info"});
  let last = "";
  main.append(h("section", {id: "page-retained"}, h("h1", {}, "Retained messages"),
    h("form", {class: "row", onsubmit: ev => { ev.preventDefault(); load(true); }},
      h("label", {}, "Topic prefix", prefix), h("button", {type: "submit", id: "ret-browse"}, "Browse")),
    info,
    h("table", {id: "ret-table"}, h("thead", {}, h("tr", {}, ...["Topic", "QoS", "Size", "Stored", "Payload", ""].map(t => h("th", {}, t)))), body),
    more, view));
  more.addEventListener("click", () => load(false));
  async function open(topic) {
    try {
      const r = (await get("retained_message", {topic})).retained;
      view.replaceChildren(h("h2", {}, "Payload of ", h("code", {}, r.topic)), payloadView(payloadOf(r), "ret-payload"));
    } catch (e) { flash(e.message, false); }
  }
  async function load(fresh) {
    if (fresh) { last = ""; body.replaceChildren(); }
    const b = await get("retained", {prefix: prefix.value, after: last, limit: 50}).catch(e => { flash(e.message, false); return {}; });
    const rows = b.retained || [];
    for (const r of rows) {
      const u8 = payloadOf(r), text = asText(u8);
      body.append(h("tr", {"data-topic": r.topic}, h("td", {class: "mono"}, h("a", {href: "#/retained", onclick: ev => { ev.preventDefault(); open(r.topic); }}, r.topic)),
        h("td", {class: "num"}, String(r.QoS)), h("td", {class: "num"}, bytes(r.size)), h("td", {}, when(r.time)),
        h("td", {class: "mono"}, (text !== null ? text.slice(0, 80) : "hex: " + asHex(u8.slice(0, 24))) + (r.truncated || (text && text.length > 80) ? "…" : "")),
        h("td", {}, h("button", {class: "danger", onclick: async () => {
          if (!confirm("Delete the retained message of " + r.topic + "?")) return;
          const ok = await act("Delete " + r.topic, () => post("remove_retained", {topic: r.topic}));
          if (ok) setTimeout(() => load(true), 300);
        }}, "Delete"))));
      last = r.topic;
    }
    if (!body.children.length) body.append(h("tr", {}, h("td", {colspan: 6, class: "muted"}, "no retained messages")));
    info.textContent = b.total !== undefined ? `${num(b.total)} retained messages stored in all` : "";
    more.hidden = !b.more;
  }
  load(true);
}

// ---------------------------------------------------------------- Live
function livePage() {
  const filter = h("input", {id: "live-filter", value: "#", required: true});
  const start = h("button", {class: "primary", type: "submit", id: "live-start"}, "Subscribe");
  const stop = h("button", {type: "button", id: "live-stop", disabled: true}, "Stop");
  const state = h("span", {id: "live-state", role: "status"}, "not subscribed");
  const mode = h("select", {id: "live-mode"}, h("option", {value: "text"}, "text"), h("option", {value: "hex"}, "hex"));
  const body = h("tbody", {id: "live-rows"});
  const pTopic = h("input", {id: "pub-topic", required: true, placeholder: "topic"});
  const pMsg = h("input", {id: "pub-message", placeholder: "message"});
  const pQos = h("select", {id: "pub-qos"}, ...[0, 1, 2].map(q => h("option", {value: q}, "QoS " + q)));
  const pRetain = h("input", {id: "pub-retain", type: "checkbox"});
  let abort = null;
  main.append(h("section", {id: "page-live"}, h("h1", {}, "Live messages"),
    h("form", {class: "row", onsubmit: ev => { ev.preventDefault(); subscribe(); }},
      h("label", {}, "Topic filter", filter), start, stop, h("label", {}, "Payload as", mode), state),
    h("form", {class: "row", id: "pub-form", onsubmit: async ev => {
      ev.preventDefault();
      await act("Publish", () => post("send_all", {topic: pTopic.value, message: pMsg.value, QoS: Number(pQos.value), retain: pRetain.checked ? 1 : 0}));
    }}, h("label", {}, "Topic", pTopic), h("label", {}, "Message", pMsg), h("label", {}, "QoS", pQos),
      h("label", {}, "Retain", pRetain), h("button", {type: "submit", id: "pub-submit"}, "Publish")),
    h("table", {id: "live-table"}, h("thead", {}, h("tr", {}, ...["Time", "Topic", "QoS", "Retain", "Payload"].map(t => h("th", {}, t)))), body)));
  function render(td, u8, truncated) {
    const text = asText(u8);
    td.textContent = (mode.value === "hex" || text === null ? asHex(u8) : text) + (truncated ? " …" : "");
  }
  mode.addEventListener("change", () => {
    for (const tr of body.children) if (tr._u8) render(tr.lastChild, tr._u8, tr._cut);
  });
  function stopLive() { if (abort) { abort.abort(); abort = null; } start.disabled = false; stop.disabled = true; }
  stop.addEventListener("click", () => { stopLive(); state.textContent = "stopped"; });
  cleanups.push(stopLive);
  async function subscribe() {
    stopLive();
    body.replaceChildren();
    const ctl = new AbortController(); abort = ctl;
    start.disabled = true; stop.disabled = false;
    state.textContent = "subscribing…";
    try {
      const r = await fetch(API + "live?" + new URLSearchParams({filter: filter.value}),
        {headers: {Authorization: "Bearer " + token()}, signal: ctl.signal});
      if (!r.ok) {
        let reason = "HTTP " + r.status;
        try { reason = (await r.json())["bwapi-status-reason"] || reason; } catch (e) { /* keep */ }
        if (r.status === 401) { loggedOut(); return; }
        throw new Error(reason);
      }
      const reader = r.body.getReader(), dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += dec.decode(value, {stream: true});
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
          for (const line of chunk.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const m = JSON.parse(line.slice(6));
            if (m.subscribed !== undefined) { state.textContent = "✓ subscribed to " + m.subscribed; continue; }
            const u8 = b64bytes(m.payload);
            const td = h("td", {class: "mono"});
            const tr = h("tr", {}, h("td", {}, new Date().toLocaleTimeString()), h("td", {class: "mono"}, m.topic),
              h("td", {class: "num"}, String(m.qos)), h("td", {}, m.retain ? "yes" : "no"), td);
            tr._u8 = u8; tr._cut = m.truncated;
            render(td, u8, m.truncated);
            body.prepend(tr);
            while (body.children.length > 500) body.lastChild.remove();
          }
        }
      }
      state.textContent = "stream ended";
    } catch (e) {
      if (e.name !== "AbortError") state.textContent = "✗ " + e.message;
    }
    if (abort === ctl) { abort = null; start.disabled = false; stop.disabled = true; }
  }
}

route();
