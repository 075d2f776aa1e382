// The iG3 network dashboard: one summary a second over Server-Sent Events, rendered without libraries.
//
// Why fetch() and not EventSource: EventSource cannot send an Authorization header, and a token in
// a URL ends up in logs and history. fetch() streams the same text/event-stream body with the
// header set. Credentials live in sessionStorage (gone with the tab), never in localStorage.
(function () {
  "use strict";
  const TOKEN_KEY = "ig3.token";
  const WHO_KEY = "ig3.who";
  const FEED_MAX = 100;
  const $ = (id) => document.getElementById(id);
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    devices: new Map(), // thing -> {thing, region, lat, lon, capacity, in_flight, load, models, state, since}
    tasks: new Map(), // task_id -> merged feed item
    summary: null,
    receivedAt: 0,
    abort: null,
    mqtt: null,
    retryMs: 1000,
  };

  // ------------------------------------------------------------------ login
  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  function setSession(tok, who) {
    sessionStorage.setItem(TOKEN_KEY, tok);
    sessionStorage.setItem(WHO_KEY, who);
    showSession();
    connect();
  }

  function logout(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(WHO_KEY);
    if (state.abort) state.abort.abort();
    if (state.mqtt) { const m = state.mqtt; state.mqtt = null; m.close(); }
    setConn("off", "not connected");
    showSession();
    $("login-error").textContent = message || "";
  }

  function showSession() {
    const signedIn = !!token();
    $("login").hidden = signedIn;
    $("session").hidden = !signedIn;
    $("who").textContent = signedIn ? sessionStorage.getItem(WHO_KEY) || "" : "";
    $("wallet-login").hidden = !window.ethereum;
  }

  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    $("api-key").value = "";
    $("login-error").textContent = "";
    // Show only a prefix of the credential, never the whole secret.
    setSession(key, key.startsWith("ig3_sk_") ? key.slice(0, 14) + "…" : "access token");
  });
  $("logout").addEventListener("click", () => logout(""));
  $("wallet-login").addEventListener("click", () => walletLogin().catch((err) => {
    $("login-error").textContent = "wallet sign-in failed: " + (err && err.message ? err.message : err);
  }));

  // Sign-In with Ethereum (EIP-4361) through the browser wallet (window.ethereum, EIP-1193).
  async function walletLogin() {
    const eth = window.ethereum;
    const accounts = await eth.request({ method: "eth_requestAccounts" });
    if (!accounts || !accounts.length) throw new Error("the wallet shared no account");
    const address = window.ig3Keccak.toChecksumAddress(accounts[0]);
    const chainHex = await eth.request({ method: "eth_chainId" });
    const chainId = parseInt(chainHex, 16);
    const nonceResp = await fetch("/v1/auth/nonce", { cache: "no-store" });
    const n = await nonceResp.json();
    if (!nonceResp.ok) throw new Error(errorText(n));
    if (n.chain_ids && n.chain_ids.indexOf(chainId) < 0) {
      throw new Error("switch the wallet to one of chains " + n.chain_ids.join(", "));
    }
    const domain = n.domain || location.host;
    const message = [
      `${domain} wants you to sign in with your Ethereum account:`,
      address,
      "",
      "Sign in to the iG3 network dashboard.",
      "",
      `URI: ${location.origin}/dashboard/`,
      "Version: 1",
      `Chain ID: ${chainId}`,
      `Nonce: ${n.nonce}`,
      `Issued At: ${new Date().toISOString().replace(/\.\d{3}Z$/, "Z")}`,
    ].join("\n");
    const hexMessage = "0x" + Array.from(new TextEncoder().encode(message), (b) => b.toString(16).padStart(2, "0")).join("");
    const signature = await eth.request({ method: "personal_sign", params: [hexMessage, accounts[0]] });
    const resp = await fetch("/v1/auth/login", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ message, signature }),
    });
    const body = await resp.json();
    if (!resp.ok) throw new Error(errorText(body));
    setSession(body.access_token, address);
  }

  function errorText(body) {
    return body && body.error ? `${body.error.message} (${body.error.code})` : "unexpected answer";
  }

  // ------------------------------------------------------------ the stream
  function setConn(kind, text) {
    const el = $("conn");
    el.className = "conn " + kind;
    el.dataset.state = kind;
    el.textContent = text;
  }

  // Where the live data comes from: config.json next to the page ({"transport": "sse"} from the local
  // front; in AWS {"transport": "mqtt", "url": "wss://<iot endpoint>/mqtt", "authorizer": "<name>"}).
  let config = { transport: "sse" };
  const configLoaded = fetch("config.json", { cache: "no-store" })
    .then((r) => (r.ok ? r.json() : null)).then((c) => { if (c && c.transport) config = c; })
    .catch(() => { /* keep SSE */ });

  async function connect() {
    await configLoaded;
    if (state.abort) state.abort.abort();
    if (state.mqtt) { state.mqtt.close(); state.mqtt = null; }
    const tok = token();
    if (!tok) return;
    if (config.transport === "mqtt") { connectMqtt(tok); return; }
    const ctrl = new AbortController();
    state.abort = ctrl;
    setConn("wait", "connecting…");
    let resp;
    try {
      resp = await fetch("/v1/events/stream", { headers: { Authorization: "Bearer " + tok }, signal: ctrl.signal,
                                               cache: "no-store" });
    } catch (err) {
      if (!ctrl.signal.aborted) retry(ctrl);
      return;
    }
    if (resp.status === 401 || resp.status === 403) {
      let body = null;
      try { body = await resp.json(); } catch (e) { /* not JSON */ }
      logout("sign-in refused: " + errorText(body));
      return;
    }
    if (!resp.ok || !resp.body) { retry(ctrl); return; }
    setConn("on", "live");
    state.retryMs = 1000;
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          handleBlock(block);
        }
      }
    } catch (err) { /* aborted or the network went away */ }
    if (!ctrl.signal.aborted) retry(ctrl);
  }

  function connectMqtt(tok) {
    setConn("wait", "connecting…");
    const u = new URL(config.url, location.href);
    if (config.authorizer) u.searchParams.set("x-amz-customauthorizer-name", config.authorizer);
    u.searchParams.set("token", tok); // browsers cannot set WebSocket headers; IoT Core reads the query
    const rnd = Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");
    const decoder = new TextDecoder();
    const client = window.ig3Mqtt.connect({
      url: u.toString(), clientId: "ig3-dash-" + rnd, username: "tasks=", password: tok,
      topics: ["ig3/v1/network/summary"],
      onMessage: (topic, payload) => {
        if (topic !== "ig3/v1/network/summary") return;
        try { onSummary(JSON.parse(decoder.decode(payload))); } catch (err) { console.error("bad summary", err); }
      },
      onState: (s) => {
        if (state.mqtt !== client) return;
        if (s === "live") { setConn("on", "live"); state.retryMs = 1000; }
        else if (s === "refused") { state.mqtt = null; logout("sign-in refused by the broker"); }
        else if (s === "closed" || s === "error") {
          state.mqtt = null;
          setConn("wait", "reconnecting…");
          setTimeout(() => { if (!state.mqtt && token()) connect(); }, state.retryMs);
          state.retryMs = Math.min(state.retryMs * 2, 15000);
        }
      },
    });
    state.mqtt = client;
  }

  function retry(ctrl) {
    if (state.abort !== ctrl) return;
    setConn("wait", "reconnecting…");
    setTimeout(() => { if (state.abort === ctrl) connect(); }, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, 15000);
  }

  function handleBlock(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue; // keep-alive comment
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (name === "summary" && data.length) {
      try { onSummary(JSON.parse(data.join("\n"))); } catch (err) { console.error("bad summary", err); }
    }
  }

  // ------------------------------------------------------------ rendering
  function onSummary(s) {
    state.summary = s;
    state.receivedAt = Date.now();
    const listed = new Set();
    for (const d of s.device_list) {
      listed.add(d.thing);
      state.devices.set(d.thing, Object.assign({}, d, { state: "online", since: s.ts }));
    }
    for (const o of s.offline) {
      const known = state.devices.get(o.thing) || { thing: o.thing, region: "?", models: [], capacity: 0, in_flight: 0, load: 0 };
      if (known.state !== "offline") state.devices.set(o.thing, Object.assign({}, known, { state: "offline", since: o.since, in_flight: 0, load: 0 }));
    }
    if (!s.devices.truncated) {
      // The list is complete: a device we saw that is no longer live has gone offline.
      for (const [thing, d] of state.devices) {
        if (!listed.has(thing) && d.state === "online") state.devices.set(thing, Object.assign({}, d, { state: "offline", since: s.ts, in_flight: 0, load: 0 }));
      }
    }
    for (const item of s.feed.slice().reverse()) mergeFeed(item);
    renderTiles(s);
    renderMap(s);
    renderDevices(s);
    renderModels(s);
    renderFeed();
    renderFailures(s);
    drawCharts(s);
  }

  function mergeFeed(item) {
    if (!item.task_id) return;
    const prev = state.tasks.get(item.task_id);
    if (prev && prev.ts > item.ts) {
      // An older event of a task we know: fill only what the newer one lacks (route, why, latency).
      for (const k of ["route", "device", "why", "latency_ms"]) if (prev[k] == null && item[k] != null) prev[k] = item[k];
      return;
    }
    const merged = Object.assign({}, prev || {}, item);
    if (item.type === "TaskRequeued") merged.status = "REQUEUED";
    state.tasks.delete(item.task_id);
    state.tasks.set(item.task_id, merged); // re-insert: Map order = most recently updated last
    while (state.tasks.size > FEED_MAX) state.tasks.delete(state.tasks.keys().next().value);
  }

  function renderTiles(s) {
    const offline = [...state.devices.values()].filter((d) => d.state === "offline").length;
    $("t-online").textContent = s.devices.online;
    $("t-offline").textContent = offline;
    $("t-load").textContent = `${Math.round(s.devices.load * 100)}% (${s.devices.in_flight}/${s.devices.capacity})`;
    $("t-tput").textContent = s.throughput.completed_per_s.toFixed(2);
    const l = s.latency;
    // p95 is a histogram bucket's upper bound (exact counts, coarse bounds): shown as "≤".
    $("t-lat").textContent = l.samples ? `${fmtMs(l.mean_ms)} / ≤${fmtMs(l.p95_ms)}` : "–";
    $("t-submitted").textContent = s.tasks.submitted;
    $("t-failed").textContent = `${s.tasks.failed} / ${s.tasks.requeued}`;
    $("t-dlq").textContent = s.failures.dlq_total == null ? "?" : s.failures.dlq_total;
  }

  function fmtMs(ms) { return ms == null ? "–" : ms >= 1000 ? (ms / 1000).toFixed(1) + " s" : ms + " ms"; }

  const project = (lon, lat) => [(lon + 180) * 2, (90 - lat) * 2];

  function el(name, attrs, text) {
    const e = document.createElementNS(SVG_NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    return e;
  }

  let mapBase = null;
  function renderMap(s) {
    const svg = $("map");
    if (!mapBase) {
      mapBase = el("g", {});
      for (let lon = -180; lon <= 180; lon += 30) mapBase.appendChild(el("line", { class: "grid", x1: (lon + 180) * 2, y1: 0, x2: (lon + 180) * 2, y2: 360 }));
      for (let lat = -90; lat <= 90; lat += 30) mapBase.appendChild(el("line", { class: "grid", x1: 0, y1: (90 - lat) * 2, x2: 720, y2: (90 - lat) * 2 }));
      for (const ring of window.ig3World) {
        mapBase.appendChild(el("polygon", { class: "land", points: ring.map(([lo, la]) => project(lo, la).join(",")).join(" ") }));
      }
      svg.appendChild(mapBase);
    }
    const old = svg.querySelector("g.live");
    if (old) old.remove();
    const live = el("g", { class: "live" });
    for (const d of state.devices.values()) {
      if (d.lat == null || d.lon == null) continue;
      const [x, y] = project(d.lon, d.lat);
      const color = d.state === "offline" ? null : d.load >= 1 ? "#f85149" : d.load >= 0.5 ? "#d29922" : "#3fb950";
      const c = el("circle", { class: "dev " + d.state, cx: x.toFixed(1), cy: y.toFixed(1), r: 3.5, "data-thing": d.thing });
      if (color) c.setAttribute("fill", color);
      c.appendChild(el("title", {}, `${d.thing} (${d.region}) ${d.state} ${d.in_flight}/${d.capacity}`));
      live.appendChild(c);
    }
    for (const r of s.regions) {
      if (r.lat == null) continue;
      const [x, y] = project(r.lon, r.lat);
      live.appendChild(el("text", { class: "region-label", x: (x + 6).toFixed(1), y: (y - 6).toFixed(1) }, `${r.region} ${r.online}`));
    }
    svg.appendChild(live);
    const regions = $("regions");
    regions.replaceChildren(...s.regions.map((r) => {
      const span = document.createElement("span");
      span.dataset.region = r.region;
      span.textContent = `${r.region}: ${r.online} online, load ${Math.round(r.load * 100)}%`;
      return span;
    }));
  }

  function td(text, cls) {
    const c = document.createElement("td");
    if (cls) c.className = cls;
    if (text instanceof Node) c.appendChild(text); else c.textContent = text == null ? "" : String(text);
    return c;
  }

  function loadBar(load) {
    const bar = document.createElement("span");
    bar.className = "bar" + (load >= 1 ? " full" : load >= 0.5 ? " hot" : "");
    const fill = document.createElement("i");
    fill.style.width = Math.round(Math.min(load, 1) * 100) + "%";
    bar.appendChild(fill);
    return bar;
  }

  function renderDevices(s) {
    const rows = [...state.devices.values()].sort((a, b) => (a.state === b.state ? a.thing.localeCompare(b.thing) : a.state === "online" ? -1 : 1));
    const body = $("devices").tBodies[0];
    body.replaceChildren(...rows.map((d) => {
      const tr = document.createElement("tr");
      tr.dataset.thing = d.thing;
      tr.dataset.state = d.state;
      tr.append(td(d.thing), td(d.region), td(d.state, "state-" + d.state), td(loadBar(d.load || 0)),
                td(`${d.in_flight}/${d.capacity}`), td((d.models || []).join(", ")));
      return tr;
    }));
    $("devices-note").textContent = s.devices.truncated
      ? `(${s.devices.listed} most loaded of ${s.devices.online} online)` : `(${s.devices.online} online)`;
  }

  function renderModels(s) {
    $("models").tBodies[0].replaceChildren(...s.models.map((m) => {
      const tr = document.createElement("tr");
      tr.dataset.model = m.model;
      tr.append(td(m.model), td(m.devices), td(m.capacity), td(m.in_flight), td(m.free),
                td(Object.entries(m.regions).map(([r, n]) => `${r} ${n}`).join(", ")));
      return tr;
    }));
  }

  function renderFeed() {
    const items = [...state.tasks.values()].reverse();
    $("feed").tBodies[0].replaceChildren(...items.map((t) => {
      const tr = document.createElement("tr");
      tr.dataset.taskId = t.task_id;
      tr.dataset.status = t.status || "";
      tr.dataset.route = t.route || "";
      tr.append(td(new Date(t.ts * 1000).toLocaleTimeString()), td(t.task_id.slice(0, 8)), td(t.model),
                td(t.status, "status-" + t.status), td(t.route, "route-" + t.route), td(t.device),
                td(t.why, "why"), td(t.latency_ms != null ? fmtMs(t.latency_ms) : ""));
      return tr;
    }));
  }

  function renderFailures(s) {
    const f = s.failures;
    const rows = [["failed (total)", f.failed_total], ["failed (last 60 s)", f.failed_window],
                  ["requeued (total)", f.requeued_total]];
    for (const [q, n] of Object.entries(f.dlq || {})) rows.push([`DLQ ${q}`, n == null ? "?" : n]);
    $("failures").tBodies[0].replaceChildren(...rows.map(([k, v]) => {
      const tr = document.createElement("tr");
      tr.dataset.key = k;
      tr.append(td(k), td(v));
      return tr;
    }));
  }

  function drawCharts(s) {
    const series = s.throughput.series;
    bars($("chart-tput"), series.map((p) => [p.completed, p.failed]), ["#3fb950", "#f85149"]);
    line($("chart-lat"), series.map((p) => p.latency_ms), "#58a6ff");
  }

  function prepare(canvas) {
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.font = "10px system-ui";
    return ctx;
  }

  function axis(ctx, canvas, max, fmt) {
    ctx.fillStyle = "#8b98a6";
    ctx.fillText(fmt(max), 4, 11);
    ctx.fillText("0", 4, canvas.height - 3);
    ctx.fillText("-60 s", 24, canvas.height - 3);
    ctx.fillText("now", canvas.width - 24, canvas.height - 3);
  }

  function bars(canvas, values, colors) {
    const ctx = prepare(canvas);
    const max = Math.max(1, ...values.map((v) => v[0] + v[1]));
    const w = (canvas.width - 30) / values.length;
    values.forEach((v, i) => {
      let y = canvas.height - 14;
      v.forEach((n, k) => {
        const h = (n / max) * (canvas.height - 28);
        ctx.fillStyle = colors[k];
        ctx.fillRect(30 + i * w, y - h, Math.max(1, w - 1), h);
        y -= h;
      });
    });
    axis(ctx, canvas, max, (m) => String(m));
  }

  function line(canvas, values, color) {
    const ctx = prepare(canvas);
    const known = values.filter((v) => v != null);
    const max = Math.max(1, ...known);
    const w = (canvas.width - 30) / values.length;
    ctx.strokeStyle = color;
    ctx.fillStyle = color;
    ctx.beginPath();
    let started = false;
    values.forEach((v, i) => {
      if (v == null) { started = false; return; }
      const x = 30 + i * w + w / 2, y = canvas.height - 14 - (v / max) * (canvas.height - 28);
      if (started) ctx.lineTo(x, y); else ctx.moveTo(x, y);
      started = true;
      ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
    });
    ctx.stroke();
    axis(ctx, canvas, max, fmtMs);
  }

  setInterval(() => {
    if (!state.receivedAt) return;
    const age = Math.round((Date.now() - state.receivedAt) / 1000);
    $("summary-age").textContent = `last update ${age} s ago`;
  }, 1000);

  showSession();
  if (token()) connect();
})();
