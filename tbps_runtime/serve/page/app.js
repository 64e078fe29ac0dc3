// The operator page of `tbps serve`: a client of the service's public JSON API, nothing more.
//
// Everything shown goes through textContent or setAttribute, never innerHTML: queries, camera names,
// tokens and error messages are data, and a query like <img src=x onerror=...> must stay text.
// The service's Content-Security-Policy allows no inline script or style, so all code is here and all
// looks are in style.css (shading is a class, not a style attribute).
// Crops are fetched with fetch() so that the API key can travel in a header (an <img> cannot send one),
// and shown through blob: URLs.
"use strict";

(() => {
  const KEY_STORAGE = "tbps.apiKey";  // sessionStorage: the key lives as long as this tab
  const SPECIAL_TOKENS = new Set(["[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>"]);
  const CROP_URL = /^\/(crops|frames)\/[0-9]{1,19}$/;  // the only URLs the page fetches images from
  const CLIP_SECONDS = 5;  // a clip: this many seconds before and after the hit
  const TRACK_K = 24;  // a track's crops shown in the panel, at most
  const SHADES = 10;  // style.css has classes w0..w9

  const state = {
    ready: null,  // GET /readyz's answer once the service is ready
    key: readStoredKey(),
    searchSeq: 0,  // only the latest search's answer is drawn
    query: "",  // the query of the hits shown (the panel's track and attention use it)
    hits: [],
    current: null,  // the hit in the panel
    opener: null,  // the element that opened the panel (focus returns there)
    panelSeq: 0,
    crops: new Map(),  // crop URL -> Promise of a blob: URL
    blobs: new Map(),  // crop URL -> its Blob, once fetched
    restored: false,  // the address's search was run once the service was ready
    address: "",  // the fragment this page last wrote (a change by hand is restored)
    likeRow: null,  // find similar: the row whose image is the query of the hits shown
    clipUrl: null,  // the blob: URL of the clip shown (fetched with the key), revoked when replaced
  };

  const $ = (id) => document.getElementById(id);

  // ---- small DOM helpers (text only) ------------------------------------------------------------

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function readStoredKey() {
    try {
      return sessionStorage.getItem(KEY_STORAGE) || "";
    } catch (e) {  // storage disabled: the key lives in this page only
      return "";
    }
  }

  function storeKey(key) {
    state.key = key;
    try {
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    } catch (e) { /* storage disabled */ }
  }

  // ---- the API --------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, requestId) {
      super(message);
      this.status = status;
      this.requestId = requestId || "";
    }
  }

  // One call: JSON in, the Response out (ok), or an ApiError with the service's message and request id.
  async function api(method, path, body, extraHeaders) {
    const headers = Object.assign({}, extraHeaders || {});
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (state.key) headers["Authorization"] = "Bearer " + state.key;
    let response;
    try {
      response = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        cache: "no-store", credentials: "omit", redirect: "error", referrerPolicy: "no-referrer",
      });
    } catch (e) {
      throw new ApiError(0, "the service did not answer (" + e.message + ")", "");
    }
    if (response.ok) return response;
    let message = "HTTP " + response.status;
    let requestId = response.headers.get("X-Request-ID") || "";
    try {
      const doc = await response.json();
      if (doc && doc.error && typeof doc.error.message === "string") message = doc.error.message;
      if (doc && typeof doc.request_id === "string") requestId = doc.request_id;
    } catch (e) { /* not the JSON error shape: keep the status */ }
    if (response.status === 401) showKeyBox();
    throw new ApiError(response.status, message, requestId);
  }

  async function apiJson(method, path, body) {
    return (await api(method, path, body)).json();
  }

  // ---- the error banner and the key box ---------------------------------------------------------

  function showError(message, requestId) {
    $("banner-message").textContent = message;
    $("banner-request").textContent = requestId ? "request " + requestId : "";
    show($("banner"), true);
  }

  function clearError() {
    show($("banner"), false);
    $("banner-message").textContent = "";
    $("banner-request").textContent = "";
  }

  function reportError(error) {
    if (error instanceof ApiError && error.status === 401 && !state.key) {
      // No key sent yet: the key box asks for one; that is not an error of the operator's.
      $("key-hint").textContent = "This service wants an API key: enter it to search. It is kept in this tab only.";
      $("api-key").focus();
      return;
    }
    if (error instanceof ApiError && error.status === 401) {
      storeKey("");  // refused: not kept for the next visit
      $("key-hint").textContent = "The service refused this key: enter the one it was started with.";
      $("api-key").focus();
    }
    showError(error.message, error instanceof ApiError ? error.requestId : "");
  }

  function showKeyBox() {
    show($("key-box"), true);
  }

  function useKey(event) {
    event.preventDefault();
    const key = $("api-key").value.trim();
    // Header values must be printable ASCII (fetch throws otherwise); the service's keys are.
    if (!/^[\x21-\x7e]+$/.test(key)) {
      showError("the API key must be printable ASCII without spaces: paste the key the service was started with", "");
      $("api-key").focus();
      return;
    }
    storeKey(key);
    $("api-key").value = "";
    $("key-hint").textContent = "Key set for this tab.";
    clearError();
    if (state.ready && state.ready.rows === undefined) waitUntilReady();  // /readyz tells more with the key
    if ($("query").value.trim()) search();
  }

  function forgetKey() {
    storeKey("");
    $("api-key").value = "";
    $("key-hint").textContent = "Key forgotten.";
  }

  // ---- readiness: cameras, explain, store -------------------------------------------------------
  // Without the key (of a service that has one), /readyz says only {"status": "ready"}: the rows, cameras,
  // bundle and whether it is a store come once the key is set.

  async function waitUntilReady() {
    try {
      const ready = await apiJson("GET", "/readyz");
      state.ready = ready;
      describeService(ready);
      fillCameras(Array.isArray(ready.cameras) ? ready.cameras : []);
      for (const node of document.querySelectorAll(".store-only")) show(node, ready.store === true);
      $("search-button").disabled = false;
      if (ready.rows !== undefined && !state.restored) {  // once the cameras are known: the address's search
        state.restored = true;
        restoreAddress();
      }
    } catch (error) {
      const warming = error instanceof ApiError && error.status === 503;
      $("service").textContent = warming ? "the service is warming up…"
                                         : "the service does not answer: " + error.message;
      setTimeout(waitUntilReady, warming ? 1000 : 3000);
    }
  }

  function describeService(ready) {
    if (ready.rows === undefined) {
      $("service").textContent = "ready (the API key shows what it serves)";
      return;
    }
    const parts = [ready.rows + " rows", ready.store ? "store" : "plain gallery", "bundle " + ready.bundle];
    if (Array.isArray(ready.cameras) && ready.cameras.length) parts.push(ready.cameras.length + " camera(s)");
    // Cameras tbps ingest --follow records: each with its status (a camera that stopped says so).
    for (const [name, camera] of Object.entries(ready.followed || {})) {
      const reconnects = camera.reconnects ? " (" + camera.reconnects + " reconnects)" : "";
      parts.push(name + " " + camera.status + reconnects);
    }
    $("service").textContent = parts.join(" · ");
    $("service").title = Object.entries(ready.followed || {})
      .map(([name, camera]) => name + ": " + camera.status + (camera.last_frame ? ", last frame " + camera.last_frame : "")
        + (camera.error ? ", " + camera.error : "")).join("\n");
  }

  function fillCameras(cameras) {
    const select = $("cameras");
    select.replaceChildren();
    for (const name of cameras) {
      const option = element("option", "", name);
      option.value = String(name);
      select.append(option);
    }
    select.size = Math.max(2, Math.min(4, cameras.length));
  }

  // ---- search ---------------------------------------------------------------------------------

  // The POST /search body of the form, or throws an Error naming the field to fix.
  function searchBody(query) {
    const body = { k: readK() };
    if (query) body.query = query;
    if (state.likeRow !== null) body.like_row = state.likeRow;
    const minScore = readMinScore();
    if (minScore !== null) body.min_score = minScore;
    if (!(state.ready && state.ready.store)) return body;  // a plain gallery takes no filters
    const filters = {};
    const cameras = Array.from($("cameras").selectedOptions, (option) => option.value);
    if (cameras.length) filters.cameras = cameras;
    const since = readTime("since");
    const until = readTime("until");
    if (since) filters.since = since;
    if (until) filters.until = until;
    if (Object.keys(filters).length) body.filters = filters;
    if ($("per-track").checked) body.per_track = true;
    return body;
  }

  function readK() {
    const text = $("k").value.trim();
    if (!/^[0-9]{1,3}$/.test(text) || Number(text) < 1 || Number(text) > 100) {
      throw new Error("k must be a whole number from 1 to 100, got \"" + text + "\"");
    }
    return Number(text);
  }

  function readMinScore() {
    const text = $("min-score").value.trim();
    if (!text) return null;
    if (text.toLowerCase() === "auto") return "auto";
    const value = Number(text);
    if (!Number.isFinite(value)) throw new Error("min score must be a number or auto, got \"" + text + "\"");
    return value;
  }

  // A datetime-local value (the operator's local time) as ISO-8601 UTC, or null when empty.
  function readTime(id) {
    const text = $(id).value;
    if (!text) return null;
    const when = new Date(text);  // no zone in the value: the browser reads it as local time
    if (Number.isNaN(when.getTime())) throw new Error(id + " is not a date and time: \"" + text + "\"");
    return when.toISOString();
  }

  async function search(event) {
    if (event) {
      event.preventDefault();
      state.likeRow = null;  // a search typed in the box is a text search
    }
    await runSearch($("query").value.trim());
  }

  // Search for ``query`` (and state.likeRow's image, when set) with the form's k, threshold and filters.
  async function runSearch(query) {
    if (!query && state.likeRow === null) {
      showError("type what the person looks like first", "");
      $("query").focus();
      return;
    }
    let body;
    try {
      body = searchBody(query);
    } catch (error) {
      showError(error.message, "");
      return;
    }
    const seq = ++state.searchSeq;
    clearError();
    $("echo").textContent = "";
    $("summary").textContent = "searching…";
    try {
      const doc = await apiJson("POST", "/search", body);
      if (seq !== state.searchSeq) return;  // a newer search was started meanwhile
      drawResults(query, doc, body.min_score !== undefined);
      writeAddress(body);
    } catch (error) {
      if (seq !== state.searchSeq) return;
      $("summary").textContent = "";
      reportError(error);
    }
  }

  function drawResults(query, doc, thresholded) {
    const hits = Array.isArray(doc.results) && Array.isArray(doc.results[0]) ? doc.results[0] : [];
    state.query = query;
    state.hits = hits;
    closePanel(false);
    const like = state.likeRow === null ? "" : "like row " + state.likeRow + (query ? " and " : "");
    $("echo").textContent = like + (query ? "“" + query + "”" : "");
    show($("export"), hits.length > 0);
    const took = typeof doc.took_ms === "number" ? doc.took_ms.toFixed(1) : String(doc.took_ms);
    $("summary").textContent = " · " + hits.length + " hit(s) · " + doc.search + " · " + took + " ms";
    const why = Array.isArray(doc.empty) && typeof doc.empty[0] === "string" ? " (" + doc.empty[0] + ")" : "";
    $("empty").textContent = (thresholded ? "Nothing found above the minimum score." : "Nothing found.") + why;
    show($("empty"), hits.length === 0);
    const list = $("hits");
    list.replaceChildren(...hits.map((hit, index) => hitItem(hit, index)));
    forgetCropsBut(new Set(hits.map((hit) => hit.crop_url)));
  }

  // A list item holding a button with the hit's crop; the caller fills `meta` and the click.
  function hitButton(hit, css) {
    const item = element("li");
    const button = element("button", css);
    button.type = "button";
    setHitData(button, hit);
    button.setAttribute("aria-label", hitLabel(hit));
    const image = element("img", "crop");
    image.alt = "crop of row " + hit.row;
    image.decoding = "async";
    showCrop(image, hit.crop_url);
    const meta = element("span", "meta");
    button.append(image, meta);
    item.append(button);
    return { item, button, meta };
  }

  function hitItem(hit, index) {
    const { item, button, meta } = hitButton(hit, "hit");
    meta.append(element("span", "rank", "#" + hit.rank), element("span", "score", formatScore(hit.score)));
    if (typeof hit.strength === "number") {  // the store's calibrated match strength, beside the Eq. 14 score
      meta.append(element("span", "strength", "match strength " + Math.round(hit.strength * 100) + "%"));
    }
    if (hit.camera !== undefined && hit.camera !== null) meta.append(element("span", "camera", hit.camera));
    if (typeof hit.time === "number") meta.append(timeElement(hit));
    if (hit.track !== undefined && hit.track !== null) {
      const words = "track " + hit.track + (hit.track_rows ? " (" + hit.track_rows + ")" : "");
      meta.append(element("span", "track-id", words));
    }
    if (hit.identity !== undefined && hit.identity !== null) {
      meta.append(element("span", "identity", "id " + hit.identity));
    }
    button.addEventListener("click", () => openPanel(hit, button));
    return item;
  }

  function setHitData(node, hit) {
    node.dataset.row = String(hit.row);
    node.dataset.rank = String(hit.rank);
    node.dataset.score = String(hit.score);
    if (hit.camera !== undefined && hit.camera !== null) node.dataset.camera = String(hit.camera);
    if (typeof hit.time_iso === "string") node.dataset.time = hit.time_iso;
    if (hit.track !== undefined && hit.track !== null) node.dataset.track = String(hit.track);
  }

  function hitLabel(hit) {
    const parts = ["rank " + hit.rank, "score " + formatScore(hit.score)];
    if (hit.camera !== undefined && hit.camera !== null) parts.push("camera " + hit.camera);
    if (typeof hit.time === "number") parts.push(localTime(hit.time));
    if (hit.track !== undefined && hit.track !== null) parts.push("track " + hit.track);
    return parts.join(", ");
  }

  function formatScore(score) {
    return typeof score === "number" ? score.toFixed(3) : String(score);
  }

  // The operator's local time: in full (the panel), short (a hit's card) or the clock only (a track's crops).
  const TIME_FORMATS = {
    full: { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
            hourCycle: "h23" },
    short: { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" },
    clock: { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" },
  };

  function localTime(seconds, format = "full") {
    return new Date(seconds * 1000).toLocaleString(undefined, TIME_FORMATS[format]);
  }

  function utcTime(seconds) {
    return new Date(seconds * 1000).toISOString().replace(".000Z", "Z");
  }

  // <time> with the local time shown and the UTC time on hover.
  function timeElement(hit, format = "short") {
    const node = element("time", "when", localTime(hit.time, format));
    node.dateTime = utcTime(hit.time);
    node.title = "UTC " + utcTime(hit.time);
    return node;
  }

  // ---- crops through fetch (the key in a header) and blob: URLs ---------------------------------

  function cropUrl(url) {
    if (typeof url !== "string" || !CROP_URL.test(url)) return Promise.reject(new Error("not a crop URL"));
    let entry = state.crops.get(url);
    if (!entry) {
      entry = api("GET", url).then((response) => response.blob()).then((blob) => {
        state.blobs.set(url, blob);  // for the export of the hits with their crops
        return URL.createObjectURL(blob);
      });
      state.crops.set(url, entry);
      entry.catch(() => state.crops.delete(url));  // a failed fetch is retried next time
    }
    return entry;
  }

  function showCrop(image, url) {
    image.classList.add("loading");
    cropUrl(url).then((source) => {
      image.src = source;
      image.classList.remove("loading");
    }, (error) => {
      image.classList.remove("loading");
      image.classList.add("missing");
      image.alt = "crop unavailable: " + error.message;
    });
  }

  // Release the blob: URLs of crops no longer shown (each search replaces the grid).
  function forgetCropsBut(keep) {
    for (const [url, entry] of state.crops) {
      if (keep.has(url)) continue;
      state.crops.delete(url);
      state.blobs.delete(url);
      entry.then((source) => URL.revokeObjectURL(source), () => {});
    }
  }

  // ---- the side panel: one hit, its track, its attention ----------------------------------------

  function openPanel(hit, opener) {
    const hasTrack = hit.track !== undefined && hit.track !== null;
    const sameTrack = hasTrack && state.current !== null && state.current.track === hit.track;
    state.current = hit;
    state.opener = opener || state.opener;
    const seq = ++state.panelSeq;
    $("panel-title").textContent = "Rank " + hit.rank + " · row " + hit.row;
    $("panel-crop").alt = "crop of row " + hit.row;
    $("panel-crop").removeAttribute("src");
    showCrop($("panel-crop"), hit.crop_url);
    fillFacts(hit);
    show($("heatmap"), false);
    $("heatmap").removeAttribute("src");
    show($("attention"), false);
    $("words").replaceChildren();
    show($("explain"), Boolean(state.ready && state.ready.explain));
    $("explain").disabled = false;
    showContext(hit, seq);
    show($("panel"), true);
    document.body.classList.add("with-panel");
    for (const node of document.querySelectorAll(".hit[aria-current], .track-hit[aria-current]")) {
      node.removeAttribute("aria-current");
    }
    for (const node of document.querySelectorAll(".hit, .track-hit")) {
      if (node.dataset.row === String(hit.row)) node.setAttribute("aria-current", "true");
    }
    if (!hasTrack) {
      show($("track"), false);
    } else if (!sameTrack) {
      loadTrack(hit, seq);
    }
    $("panel-close").focus();
  }

  function closePanel(restoreFocus) {
    if ($("panel").hidden) return;
    show($("panel"), false);
    document.body.classList.remove("with-panel");
    state.current = null;
    state.panelSeq++;
    for (const node of document.querySelectorAll("[aria-current]")) node.removeAttribute("aria-current");
    if (restoreFocus && state.opener && state.opener.isConnected) state.opener.focus();
  }

  function fillFacts(hit) {
    const facts = $("panel-facts");
    facts.replaceChildren();
    const add = (name, value, title) => {
      if (value === undefined || value === null || value === "") return;
      const term = element("dt", "", name);
      const detail = element("dd", "", value);
      if (title) detail.title = title;
      facts.append(term, detail);
    };
    add("score", formatScore(hit.score));
    add("camera", hit.camera);
    if (typeof hit.time === "number") add("time", localTime(hit.time), "UTC " + utcTime(hit.time));
    if (typeof hit.time === "number") add("UTC", utcTime(hit.time));
    if (Array.isArray(hit.box)) add("box", hit.box.map((v) => Math.round(v)).join(", "), "x0, y0, x1, y1 in the frame");
    add("track", hit.track);
    add("frame", hit.frame);
    if (typeof hit.source === "string") add("source", sourceName(hit.source));
    add("identity", hit.identity);
  }

  // A source as the operator needs it: a file's name, or a stream's URL without credentials or query.
  function sourceName(source) {
    const stream = /^([a-z][a-z0-9+.-]*):\/\/(?:[^@/?#]*@)?([^?#]*)/i.exec(source);
    if (stream) return stream[1] + "://" + stream[2];
    return source.split(/[\\/]/).pop();
  }

  async function loadTrack(hit, seq) {
    show($("track"), true);
    $("track-title").textContent = "Track " + hit.track;
    $("track-status").textContent = "loading the track's crops…";
    $("track-hits").replaceChildren();
    const body = { k: TRACK_K, filters: { tracks: [hit.track] } };
    if (state.query) body.query = state.query;
    if (state.likeRow !== null) body.like_row = state.likeRow;  // find similar: the same query
    try {
      const doc = await apiJson("POST", "/search", body);
      if (seq !== state.panelSeq) return;
      const crops = (doc.results[0] || []).slice().sort((a, b) => (a.time || 0) - (b.time || 0));
      $("track-status").textContent = crops.length + " crop(s) of this track, in time order, scored for the query";
      $("track-hits").replaceChildren(...crops.map(trackItem));
      for (const node of document.querySelectorAll(".track-hit")) {
        if (state.current && node.dataset.row === String(state.current.row)) node.setAttribute("aria-current", "true");
      }
    } catch (error) {
      if (seq !== state.panelSeq) return;
      $("track-status").textContent = "";
      reportError(error);
    }
  }

  function trackItem(hit) {
    const { item, button, meta } = hitButton(hit, "track-hit");
    if (typeof hit.time === "number") meta.append(timeElement(hit, "clock"));
    meta.append(element("span", "score", formatScore(hit.score)));
    button.addEventListener("click", () => openPanel(hit, null));
    return item;
  }

  async function explain() {
    const hit = state.current;
    if (!hit) return;
    const seq = state.panelSeq;
    $("explain").disabled = true;
    try {
      const doc = await apiJson("POST", "/explain", { query: state.query, rows: [hit.row] });
      if (seq !== state.panelSeq) return;
      drawAttention(doc);
    } catch (error) {
      if (seq !== state.panelSeq) return;
      reportError(error);
    } finally {
      $("explain").disabled = false;
    }
  }

  // The heat map (a base64 PNG) and the query's words shaded by the mean of token_weights (D + P, T).
  function drawAttention(doc) {
    const picture = Array.isArray(doc.heatmaps) ? doc.heatmaps[0] : null;
    if (typeof picture === "string" && /^[A-Za-z0-9+/]+={0,2}$/.test(picture)) {
      $("heatmap").src = "data:image/png;base64," + picture;
      show($("heatmap"), true);
    }
    const words = $("words");
    words.replaceChildren();
    for (const [token, shade, weight] of shadedTokens(doc.tokens, doc.token_weights)) {
      const continuation = token.startsWith("##");
      if (words.childNodes.length && !continuation) words.append(document.createTextNode(" "));
      const span = element("span", "w" + shade, continuation ? token.slice(2) : token);
      span.title = "attention " + weight.toFixed(3);
      words.append(span);
    }
    show($("attention"), true);
  }

  // [token, shade 0..SHADES-1, mean weight] of the query's tokens (special ones left out), scaled by the largest.
  function shadedTokens(tokens, weights) {
    if (!Array.isArray(tokens) || !Array.isArray(weights) || !weights.length) return [];
    const mean = tokens.map((_, t) => weights.reduce((sum, row) => sum + (Number(row[t]) || 0), 0) / weights.length);
    const kept = tokens.map((token, t) => [String(token), mean[t]]).filter(([token]) => !SPECIAL_TOKENS.has(token));
    const top = Math.max(0, ...kept.map(([, w]) => w)) || 1;
    return kept.map(([token, w]) => [token, Math.max(0, Math.min(SHADES - 1, Math.round((SHADES - 1) * w / top))), w]);
  }

  // ---- a hit's context: its frame, a clip around it, find similar --------------------------------

  function showContext(hit, seq) {
    const store = Boolean(state.ready && state.ready.store);
    const moment = store && (typeof hit.offset === "number" || typeof hit.frame === "number");
    show($("similar"), store);
    show($("clip-play"), store && typeof hit.offset === "number");
    $("clip-play").disabled = false;
    show($("clip"), false);
    const video = $("clip-video");
    video.pause();
    video.removeAttribute("src");
    video.load();
    if (state.clipUrl) URL.revokeObjectURL(state.clipUrl);
    state.clipUrl = null;
    show($("frame"), moment);
    $("frame-image").removeAttribute("src");
    $("frame-status").textContent = "";
    if (moment) loadFrame(hit, seq);
  }

  async function loadFrame(hit, seq) {
    const image = $("frame-image");
    image.alt = "the frame of row " + hit.row + ", its box drawn";
    $("frame-status").textContent = "loading the frame…";
    try {
      const source = await cropUrl("/frames/" + hit.row);
      if (seq !== state.panelSeq) return;
      image.src = source;
      $("frame-status").textContent = "the whole frame, the crop's box drawn";
    } catch (error) {
      if (seq !== state.panelSeq) return;
      $("frame-status").textContent = "no frame: " + error.message;
    }
  }

  // The clip: without a key the <video> fetches /clips itself (HTTP range requests); with one it is fetched
  // with the key in a header and played from a blob: URL (a <video> cannot send a header).
  async function playClip(hit) {
    if (!hit) return;
    const seq = state.panelSeq;
    const url = "/clips/" + hit.row + "?before=" + CLIP_SECONDS + "&after=" + CLIP_SECONDS;
    show($("clip"), true);
    $("clip-play").disabled = true;
    $("clip-status").textContent = "cutting the clip…";
    try {
      let source;
      let response;
      if (state.key) {
        response = await api("GET", url);
        source = URL.createObjectURL(await response.blob());
      } else {
        response = await api("GET", url, undefined, { Range: "bytes=0-0" });  // the clip is cut; its start
        source = url;
      }
      if (seq !== state.panelSeq) {
        if (source.startsWith("blob:")) URL.revokeObjectURL(source);
        return;
      }
      const start = Number(response.headers.get("X-Clip-Start")) || 0;
      if (source.startsWith("blob:")) state.clipUrl = source;
      const at = Math.max(0, (hit.offset || 0) - start);
      const video = $("clip-video");
      video.addEventListener("loadedmetadata", () => { video.currentTime = at; }, { once: true });
      video.src = source;
      $("clip-status").textContent = CLIP_SECONDS + " s before and after the hit (cut at keyframes); the hit is at "
        + at.toFixed(1) + " s";
    } catch (error) {
      if (seq !== state.panelSeq) return;
      $("clip-status").textContent = "no clip: " + error.message;
    } finally {
      $("clip-play").disabled = false;
    }
  }

  // Find similar: the hit's image embedding as the query, with the form's filters ("where else did they go").
  function findSimilar(hit) {
    if (!hit) return;
    state.likeRow = hit.row;
    runSearch("");
  }

  // ---- shareable addresses: the search in the URL's fragment (never the key) ----------------------

  function writeAddress(body) {
    const params = new URLSearchParams();
    if (body.query) params.set("q", body.query);
    if (body.like_row !== undefined) params.set("like", String(body.like_row));
    params.set("k", String(body.k));
    if (body.min_score !== undefined) params.set("min", String(body.min_score));
    const filters = body.filters || {};
    for (const camera of filters.cameras || []) params.append("camera", camera);
    if (filters.since) params.set("since", filters.since);
    if (filters.until) params.set("until", filters.until);
    if (state.ready && state.ready.store) params.set("per_track", body.per_track ? "1" : "0");
    state.address = "#" + params.toString();
    history.replaceState(null, "", state.address);
  }

  // The search an address names, put in the form and run (nothing when the address names none).
  function restoreAddress() {
    const params = new URLSearchParams(location.hash.slice(1));
    const like = params.get("like");
    if (!params.get("q") && like === null) return;
    $("query").value = params.get("q") || "";
    if (params.get("k")) $("k").value = params.get("k");
    $("min-score").value = params.get("min") || "";
    const cameras = new Set(params.getAll("camera"));
    for (const option of $("cameras").options) option.selected = cameras.has(option.value);
    $("since").value = localInput(params.get("since"));
    $("until").value = localInput(params.get("until"));
    if (params.has("per_track")) $("per-track").checked = params.get("per_track") === "1";
    state.likeRow = like !== null && /^[0-9]{1,15}$/.test(like) ? Number(like) : null;
    runSearch($("query").value.trim());
  }

  // An ISO-8601 time as a datetime-local value in the operator's time zone ("" for none or a bad one).
  function localInput(iso) {
    const when = iso ? new Date(iso) : null;
    if (!when || Number.isNaN(when.getTime())) return "";
    const pad = (n) => String(n).padStart(2, "0");
    return when.getFullYear() + "-" + pad(when.getMonth() + 1) + "-" + pad(when.getDate()) + "T"
      + pad(when.getHours()) + ":" + pad(when.getMinutes()) + ":" + pad(when.getSeconds());
  }

  function copyLink() {
    const done = () => { $("copy-link").textContent = "Link copied"; };
    const shown = () => {  // no clipboard here (an insecure origin, or refused): the link is shown instead
      $("copy-link").textContent = "Copy link";
      showError("this search's link: " + location.href, "");
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(location.href).then(done, shown);
    } else {
      shown();
    }
  }

  // ---- export: the hits shown as CSV (crops by URL) or JSON (crops embedded, base64 JPEG) ---------

  const EXPORT_FIELDS = ["rank", "score", "strength", "row", "camera", "time_iso", "track", "track_rows", "frame",
                         "offset", "box", "source", "crop_url"];

  function csvField(value) {
    if (value === undefined || value === null) return "";
    let text = Array.isArray(value) ? value.join(" ") : String(value);
    if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) text = "'" + text;  // no formula in a spreadsheet
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function exportCsv() {
    const lines = [EXPORT_FIELDS.join(",")];
    for (const hit of state.hits) lines.push(EXPORT_FIELDS.map((name) => csvField(hit[name])).join(","));
    download(new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" }), "tbps-hits.csv");
  }

  async function exportJson() {
    $("export-json").disabled = true;
    try {
      const hits = [];
      for (const hit of state.hits) {
        let blob = state.blobs.get(hit.crop_url);
        if (!blob) blob = await (await api("GET", hit.crop_url)).blob();
        hits.push(Object.assign({}, hit, { crop_jpeg_base64: await base64Of(blob) }));
      }
      const doc = { query: state.query || null, like_row: state.likeRow, search: $("summary").textContent,
                    address: location.href, exported: new Date().toISOString(), hits };
      download(new Blob([JSON.stringify(doc, null, 1)], { type: "application/json" }), "tbps-hits.json");
    } catch (error) {
      reportError(error);
    } finally {
      $("export-json").disabled = false;
    }
  }

  function base64Of(blob) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).replace(/^data:[^,]*,/, ""));
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(blob);
    });
  }

  function download(blob, name) {
    const link = element("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  // ---- wiring ---------------------------------------------------------------------------------

  function start() {
    $("search").addEventListener("submit", search);
    $("key-box").addEventListener("submit", useKey);
    $("key-forget").addEventListener("click", forgetKey);
    $("banner-close").addEventListener("click", clearError);
    $("panel-close").addEventListener("click", () => closePanel(true));
    $("explain").addEventListener("click", explain);
    $("similar").addEventListener("click", () => findSimilar(state.current));
    $("clip-play").addEventListener("click", () => playClip(state.current));
    $("export-csv").addEventListener("click", exportCsv);
    $("export-json").addEventListener("click", exportJson);
    $("copy-link").addEventListener("click", copyLink);
    window.addEventListener("hashchange", () => {
      if (location.hash !== state.address) restoreAddress();
    });
    $("cameras-clear").addEventListener("click", () => {
      for (const option of $("cameras").options) option.selected = false;
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && !$("panel").hidden) {
        event.preventDefault();
        closePanel(true);
      }
    });
    $("search-button").disabled = true;  // until /readyz says the service is ready
    $("query").focus();
    waitUntilReady();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
