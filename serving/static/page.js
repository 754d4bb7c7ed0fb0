// The streamrec browser page: a user's homepage rows from GET /v1/homepage/{user_id}, play/complete events POSTed
// to /v1/events with the page's key, and the rows refreshed until the change shows. Plain JavaScript, no build step.
// All API text goes into the DOM through textContent (never innerHTML), so a title cannot inject markup.
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("page-config").textContent);
  const ROWS = 8;
  const PER_ROW = 10;
  const DEVICE = "web";
  const REFRESH_MS = 3000; // the rows are re-read this often anyway (others' events move trending rows too)
  const POLL_MS = 250; // after a POST: re-read this often until the answer changes ...
  const POLL_FOR_MS = 5000; // ... or this long has passed
  const DURATION_S = 5400; // the page's "complete" watches a 90-minute title to the end

  // The page's clock: the server's clock plus the configured offset (a recorded world is browsed as of its log).
  // The difference to the browser's clock is fixed at load, so requests and events follow the server's time.
  const skewMs = (config.server_time_ms || Date.now()) + (config.clock_offset_ms || 0) - Date.now();
  const pageNow = () => Date.now() + skewMs;

  const $ = (id) => document.getElementById(id);
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };

  const state = {
    userId: null,
    rows: null, // Map row id -> Set of item ids of the last render (what "changed" is measured against)
    signature: null, // the last render's rows and items, to tell a changed answer from the same one again
    seq: 0, // the newest request: older answers that arrive late are dropped
    pollUntil: 0,
    pollStarted: 0,
    pollBefore: null,
    timer: null,
    renders: 0,
  };

  // --- API ------------------------------------------------------------------------------------

  function apiKey() {
    return config.api_key || $("api-key").value.trim() || null;
  }

  class ApiError extends Error {
    constructor(status, field, message, requestId) {
      super(`${status}${field ? " " + field : ""}: ${message}`);
      this.status = status;
      this.field = field;
      this.requestId = requestId;
    }
  }

  async function call(method, path, body) {
    const headers = { Accept: "application/json" };
    const key = apiKey();
    // Reads carry a key only when the server asks for one (STREAMREC_AUTH_READS); writes always do.
    if (key && (method !== "GET" || config.auth_reads)) headers["X-API-Key"] = key;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const started = performance.now();
    let response;
    try {
      response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                      cache: "no-store" });
    } catch (err) {
      throw new ApiError(0, "network", `the server could not be reached (${err.message})`, null);
    }
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch (_) { json = null; }
    if (!response.ok) {
      const error = json && json.error ? json.error : {};
      const refused = json && Array.isArray(json.refused) && json.refused.length
        ? " (" + json.refused.map((r) => `${r.field}: ${r.reason}`).join("; ") + ")" : "";
      throw new ApiError(response.status, error.field || "", (error.message || text || response.statusText) + refused,
                         json && json.request_id);
    }
    return { body: json, ms: performance.now() - started };
  }

  function homepagePath(userId) {
    const now = pageNow();
    const query = new URLSearchParams({
      rows: String(ROWS), per_row: String(PER_ROW), device: DEVICE, now: String(now),
      hour: String(new Date(now).getHours()),
    });
    return `/v1/homepage/${encodeURIComponent(userId)}?${query}`;
  }

  function newEventId() {
    if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts (localhost, https)
    const b = crypto.getRandomValues(new Uint8Array(16)); // plain http on another host: an RFC 4122 v4 id by hand
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  function event(type, itemId) {
    const e = { schema_version: 1, event_id: newEventId(), ts: pageNow(), type, user_id: state.userId,
                item_id: itemId, context: { device: DEVICE } };
    if (type === "complete") Object.assign(e, { watched_seconds: DURATION_S, duration_seconds: DURATION_S });
    return e;
  }

  // --- rendering -------------------------------------------------------------------------------

  function signatureOf(body) {
    return JSON.stringify((body.rows || []).map((r) => [r.id, (r.items || []).map((i) => [i.item_id, i.progress])]));
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
    if (message) document.body.dataset.state = "error";
  }

  function showMeta(body, ms) {
    $("model-version").textContent = body.model_version || "–";
    const timings = $("timings");
    timings.replaceChildren();
    for (const [stage, value] of Object.entries(body.timings_ms || {})) {
      const span = el("span", "stage");
      span.dataset.stage = stage;
      span.append(`${stage} `, el("b", null, Number(value).toFixed(1)), " ms");
      timings.append(span);
    }
    const roundTrip = el("span", "stage");
    roundTrip.dataset.stage = "round_trip";
    roundTrip.append("browser round trip ", el("b", null, ms.toFixed(1)), " ms");
    timings.append(roundTrip);
    const degraded = $("degraded");
    const reasons = body.degraded ? (body.degraded_reasons || ["(no reason given)"]) : [];
    degraded.hidden = !body.degraded;
    degraded.textContent = body.degraded ? `Degraded answer: ${reasons.join(", ")}` : "";
  }

  function card(item, row, index, changed) {
    const li = el("li", "card" + (changed ? " changed" : ""));
    li.dataset.itemId = item.item_id;
    li.dataset.rowId = row.id;
    let hue = 0;
    for (const ch of String(item.item_id)) hue = (hue * 31 + ch.charCodeAt(0)) % 360;
    li.style.setProperty("--hue", String(hue)); // CSSOM, allowed by the page's Content-Security-Policy
    const poster = el("div", "poster");
    poster.append(el("span", "rank", index + 1));
    const play = el("button", "play", item.title || item.item_id);
    play.type = "button";
    play.dataset.action = "play";
    play.title = `Play ${item.title || item.item_id}`;
    const genres = (item.genres || []).join(", ");
    const meta = el("div", "meta", [item.year, genres].filter((x) => x !== null && x !== undefined && x !== "")
      .join(" · ") || " ");
    li.append(poster, play, meta);
    if (typeof item.progress === "number") {
      const bar = el("div", "progress");
      const fill = el("span");
      fill.style.width = `${Math.round(Math.max(0, Math.min(1, item.progress)) * 100)}%`;
      bar.title = `${Math.round(item.progress * 100)}% watched`;
      bar.append(fill);
      li.append(bar);
    }
    const actions = el("div", "actions");
    const score = el("span", "score", typeof item.score === "number" ? item.score.toFixed(3) : "");
    score.title = "score; sources: " + (item.sources || []).join(", ");
    const complete = el("button", "complete", "✓ Done");
    complete.type = "button";
    complete.dataset.action = "complete";
    complete.title = `Complete ${item.title || item.item_id}`;
    actions.append(score, complete);
    li.append(actions);
    return li;
  }

  function render(body, ms) {
    showMeta(body, ms);
    const signature = signatureOf(body);
    if (signature === state.signature) return false; // the same answer: keep the page (and its highlights)
    const previous = state.rows; // null on a user's first render: nothing is "new" then
    const container = $("rows");
    container.replaceChildren();
    const current = new Map();
    for (const row of body.rows || []) {
      const before = previous ? previous.get(row.id) : undefined;
      const section = el("section", "row" + (previous && !before ? " row-new" : ""));
      section.dataset.rowId = row.id;
      section.dataset.reason = row.reason || "";
      const heading = el("h2", null, row.title || row.id);
      heading.append(el("span", "reason", row.reason || ""));
      const list = el("ol", "items");
      const ids = new Set();
      (row.items || []).forEach((item, index) => {
        ids.add(item.item_id);
        list.append(card(item, row, index, previous !== null && !(before && before.has(item.item_id))));
      });
      current.set(row.id, ids);
      section.append(heading, list);
      container.append(section);
    }
    if (!container.childElementCount) container.append(el("p", "empty", "No rows for this user."));
    state.rows = current;
    state.signature = signature;
    state.renders += 1;
    document.body.dataset.renders = String(state.renders);
    return true;
  }

  // --- loading ---------------------------------------------------------------------------------

  async function refresh() {
    if (!state.userId) return;
    const seq = ++state.seq;
    const userId = state.userId;
    try {
      const { body, ms } = await call("GET", homepagePath(userId));
      if (seq !== state.seq || userId !== state.userId) return; // a newer request (or another user) won
      showError(null);
      const changed = render(body, ms);
      document.body.dataset.state = "ready";
      if (state.pollUntil && changed && signatureOf(body) !== state.pollBefore.signature) {
        const seconds = (performance.now() - state.pollStarted) / 1000;
        note(`${state.pollBefore.what}: the homepage changed ${seconds.toFixed(2)} s after the POST`);
        state.pollUntil = 0;
      }
    } catch (err) {
      if (seq === state.seq) showError(err.message);
    }
    $("clock").textContent = new Date(pageNow()).toISOString().replace("T", " ").slice(0, 19) + " UTC";
  }

  function schedule() {
    clearTimeout(state.timer);
    const polling = state.pollUntil && performance.now() < state.pollUntil;
    if (state.pollUntil && !polling) {
      note(`${state.pollBefore.what}: no change within ${POLL_FOR_MS / 1000} s`);
      state.pollUntil = 0;
    }
    state.timer = setTimeout(async () => { await refresh(); schedule(); }, polling ? POLL_MS : REFRESH_MS);
  }

  function selectUser(userId) {
    userId = (userId || "").trim();
    if (!userId) return;
    state.userId = userId;
    state.rows = null;
    state.signature = null;
    state.pollUntil = 0;
    $("user-id").value = userId;
    $("current-user").textContent = userId;
    document.body.dataset.userId = userId;
    document.body.dataset.state = "loading";
    const sample = $("sample-users");
    sample.value = Array.from(sample.options).some((o) => o.value === userId) ? userId : "";
    history.replaceState(null, "", `#user=${encodeURIComponent(userId)}`);
    refresh().then(schedule);
  }

  function note(text, failed) {
    const li = el("li", failed ? "failed" : "", `${new Date().toLocaleTimeString()}  ${text}`);
    const list = $("activity");
    list.prepend(li);
    while (list.childElementCount > 30) list.lastElementChild.remove();
  }

  async function act(type, li) {
    const itemId = li.dataset.itemId;
    const title = li.querySelector(".play").textContent;
    const busy = (on) => {
      li.classList.toggle("pending", on);
      li.querySelectorAll("button").forEach((b) => { b.disabled = on; });
    };
    busy(true); // one POST per click: no double events from an impatient double click
    const what = `${type} “${title}”`;
    try {
      const { body, ms } = await call("POST", "/v1/events", [event(type, itemId)]);
      note(`${what}: ${body.accepted} accepted in ${ms.toFixed(0)} ms`);
      // Poll until the answer differs from the one on screen (the worker applies the event within ~a second).
      state.pollBefore = { signature: state.signature, what };
      state.pollStarted = performance.now();
      state.pollUntil = state.pollStarted + POLL_FOR_MS;
      schedule();
    } catch (err) {
      showError(`${what} failed: ${err.message}`);
      note(`${what} failed: ${err.message}`, true);
    } finally {
      busy(false); // the card may stay on the page (an answer that does not change re-renders nothing)
    }
  }

  // --- wiring ----------------------------------------------------------------------------------

  function init() {
    const sample = $("sample-users");
    sample.append(new Option("(choose)", ""));
    for (const user of config.sample_users || []) {
      sample.append(new Option(`${user.user_id} (${user.events} events)`, user.user_id));
    }
    $("model-version").textContent = config.model_version || "–";
    if (config.key_problem) {
      $("key-problem").textContent = config.key_problem;
      $("key-problem").hidden = false;
    }
    $("key-field").hidden = !(config.auth && !config.api_key);

    sample.addEventListener("change", () => selectUser(sample.value));
    $("user-form").addEventListener("submit", (e) => { e.preventDefault(); selectUser($("user-id").value); });
    $("new-user").addEventListener("click", () => {
      const hex = Array.from(crypto.getRandomValues(new Uint8Array(4)), (x) => x.toString(16).padStart(2, "0"));
      selectUser(`web-${hex.join("")}`); // never seen before: the cold-start homepage
    });
    $("rows").addEventListener("click", (e) => {
      const button = e.target.closest("button[data-action]");
      const li = button && button.closest("li.card");
      if (li && state.userId) act(button.dataset.action, li);
    });

    const fromHash = new URLSearchParams(location.hash.slice(1)).get("user");
    const first = fromHash || (config.sample_users && config.sample_users.length ? config.sample_users[0].user_id : "");
    if (first) selectUser(first);
    else $("new-user").click();
  }

  init();
})();
