// Reference web client. A patient, companion or interpreter checks camera and microphone in
// the waiting room, then meets the clinician once admitted; a clinician sees the waiting room,
// admits or turns people away, and runs the visit. The server decides who is admitted and the
// SFU forwards media only for them; this page just follows what the server says.
//
// The media session starts while waiting (so admission is instant) but sends nothing until the
// server admits us: the senders carry no track until then.

import { t, refusalText, translatePage } from "/texts.js";

// The link's parameters: a link carries its token in the fragment (`#token=`), which the
// browser never sends, so no proxy logs it; an older link's `?token=` is read too.
const params = new URLSearchParams([location.search.slice(1), location.hash.slice(1)].filter(Boolean).join("&"));
const token = params.get("token") || "";
// Support's diagnostics view of the link (the link opened with debug=1).
const diagnostics = params.get("debug") === "1";
const pathMatch = location.pathname.match(/^\/m\/([^/]+)/);
// The meeting the link names: every (re)connection presents it with the token. A drop-in take
// moves us to a private visit; the server follows the link there on a reconnect.
const linkMeeting = pathMatch ? decodeURIComponent(pathMatch[1]) : "";
// Keep the token out of the address bar (screenshots, shared screens) once read.
history.replaceState(null, "", location.pathname);
// Another link opened in this tab differs from the cleaned address only in its fragment, which
// loads no page: load it.
window.addEventListener("hashchange", () => {
  if (/(^#|&)token=/.test(location.hash)) location.reload();
});

const $ = (id) => document.getElementById(id);
const role = (r) => t(`role.${r}`);
const ENDED = ["denied", "removed", "meeting_ended", "meeting_cancelled", "replaced", "left"];

const state = {
  pc: null, ws: null, dc: null, names: new Map(), roles: new Map(), tiles: new Map(), participant: null,
  // Publishers whose video the SFU paused for our link (video_paused).
  pausedVideo: new Set(),
  role: null, kind: null, admitted: false, view: "check", lobby: [], people: new Map(), chat: [], position: null,
  closing: null, refusal: null, errors: [], dataMessages: [], offers: 0, restarts: 0, iceRestarts: 0, resumes: 0, resumeKey: null, pausedRids: new Map(), linkReport: null, refusedOffers: 0, crossedOffers: 0, pathStalls: 0, iceServers: [], iceStates: [], sessionStartedAt: 0, socketRtt: null, declinedOffers: 0, forceSend: false,
  // Simulcast: the m-lines (mids) each publisher's video reaches us on, the layer last asked
  // for per mid, and the data-saving choice (lowest layer of everything).
  videoTracks: new Map(), layers: new Map(), saveData: false,
  // Photos received (id, sender, size, whether EXIF was found in them) and sent.
  images: [], sentImages: [], photoUrls: [],
};
window.hcState = state; // read by the browser tests
state.localStream = () => local;

function setStatus(text) { $("status").textContent = text; }

/** Which of the page's views is shown: check, waiting, meeting, ended. */
function show(view) {
  state.view = view;
  $("waiting").hidden = view !== "waiting";
  $("meeting").hidden = view !== "meeting";
  $("controls").hidden = !(view === "waiting" || view === "meeting");
  $("ended").hidden = view !== "ended";
  for (const el of document.querySelectorAll(".in-call")) el.hidden = view !== "meeting";
}

let local = null;
let send = () => false;
let leaving = false;
let restartTimer = null;
let wsAttempts = 0;
let wsLostAt = 0;

/** Stops everything and shows why the visit is over for us. */
function endWith(reason, message) {
  leaving = true;
  clearTimeout(restartTimer);
  if (state.pc) state.pc.close();
  if (state.ws && state.ws.readyState <= WebSocket.OPEN) state.ws.close(1000);
  if (local) local.getTracks().forEach((t) => t.stop());
  forgetPhotos();
  forgetVisit();
  $("ended-title").textContent = ENDED.includes(reason) ? t(`ended.${reason}`) : t("ended.default");
  $("ended-message").textContent = message || "";
  setStatus("");
  show("ended");
}

// ---- media ---------------------------------------------------------------------------------

function tileFor(streamId) {
  let tile = state.tiles.get(streamId);
  if (!tile) {
    const fig = document.createElement("figure");
    fig.className = "tile";
    fig.dataset.participant = streamId;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    if (state.speaker && video.setSinkId) video.setSinkId(state.speaker).catch(() => {});
    const cap = document.createElement("figcaption");
    cap.textContent = state.names.get(streamId) || t("people.someone");
    fig.append(video, cap);
    $("grid").append(fig);
    tile = { fig, video, cap, stream: new MediaStream() };
    video.srcObject = tile.stream;
    state.tiles.set(streamId, tile);
    tileSizes.observe(fig);
    if (state.pausedVideo.has(streamId)) showPaused(tile, true);
  }
  return tile;
}

/** The camera goes out as simulcast layers, lowest first (the SFU reads the order from the
 * RIDs), and the SFU forwards each receiver one of them. Browsers encode as many layers as the
 * picture is large enough for (three from about 960 pixels wide, two from about 480), and
 * drop the top ones beyond that: so the layers asked for match the camera's width. */
function cameraLayers(track) {
  const width = (track.getSettings && track.getSettings().width) || 640;
  if (width >= 960) {
    return [
      { rid: "l", scaleResolutionDownBy: 4, maxBitrate: 150000 },
      { rid: "m", scaleResolutionDownBy: 2, maxBitrate: 500000 },
      { rid: "h", maxBitrate: 1500000 },
    ];
  }
  if (width >= 480) {
    return [
      { rid: "l", scaleResolutionDownBy: 2, maxBitrate: 200000 },
      { rid: "h", maxBitrate: 900000 },
    ];
  }
  return [{ maxBitrate: 500000 }];
}

/** The layer a tile needs: the smallest that still fills it (device pixels), or the lowest
 * when saving data. */
function layerFor(tile) {
  if (state.saveData) return "low";
  const width = tile.fig.clientWidth * (window.devicePixelRatio || 1);
  if (width <= 320) return "low";
  if (width <= 640) return "medium";
  return "high";
}

/** Tells the server which layer each received video should come in, when it changed. */
function applyLayers() {
  for (const [publisher, mids] of state.videoTracks) {
    const tile = state.tiles.get(publisher);
    if (!tile) continue;
    const layer = layerFor(tile);
    for (const mid of mids) {
      if (state.layers.get(mid) === layer) continue;
      if (send({ type: "preferred_layer", mid, layer })) state.layers.set(mid, layer);
    }
  }
}
const tileSizes = new ResizeObserver(() => applyLayers());

/** The notice on a tile whose video the SFU paused for our weak link (a status for screen
 * readers too). */
function showPaused(tile, paused) {
  let note = tile.fig.querySelector(".paused");
  if (paused && !note) {
    note = document.createElement("p");
    note.className = "paused";
    note.setAttribute("role", "status");
    note.textContent = t("tile.pausedWeakLink");
    tile.fig.append(note);
  } else if (!paused && note) {
    note.remove();
  }
  tile.fig.classList.toggle("video-paused", paused);
}

function removeTile(streamId) {
  const tile = state.tiles.get(streamId);
  if (tile) { tileSizes.unobserve(tile.fig); tile.fig.remove(); state.tiles.delete(streamId); }
}

/** Our camera and microphone go out only once admitted (tests may force it to probe the SFU). */
function applySending() {
  const on = state.admitted || state.forceSend;
  for (const { sender, track } of state.senders || []) {
    sender.replaceTrack(on ? track : null).catch((e) => state.errors.push(String(e)));
  }
}

/** The diagnostics view: every 2 s, the link as the SFU reports it (`link_report`) and as the
 * browser measures it — what each received video is on, what we send and what is paused. */
let lastSent = null;
async function updateDiagnostics() {
  const pc = state.pc;
  const list = $("diagnostics-list");
  if (!pc || pc.connectionState !== "connected") return;
  send({ type: "link_report" });
  const lines = [];
  const r = state.linkReport;
  if (r) {
    lines.push(r.estimate_kbps == null ? t("diag.noEstimate")
      : t("diag.downlink", r.estimate_kbps, r.allocated_kbps, r.desired_kbps, Math.round(r.loss * 100)));
    for (const v of r.videos || []) {
      const who = state.names.get(v.publisher) || t("people.someone");
      if (v.paused) { lines.push(t("diag.videoPaused", who)); continue; }
      const switching = v.target != null && v.target !== v.layer ? t("diag.videoTarget", v.target + 1) : "";
      const fewer = v.temporal != null ? t("diag.videoFrameRate") : "";
      lines.push(t("diag.video", who, v.layer == null ? "–" : v.layer + 1, v.layers, switching) + fewer);
    }
  }
  const report = await pc.getStats();
  const sent = { at: Date.now(), bytes: {} };
  let uplink = null, rtt = null, jitter = null;
  report.forEach((s) => {
    if (s.type === "outbound-rtp" && s.kind === "video") sent.bytes[s.rid || "-"] = s.bytesSent;
    if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
      if (s.availableOutgoingBitrate) uplink = Math.round(s.availableOutgoingBitrate / 1000);
      if (s.currentRoundTripTime != null) rtt = Math.round(s.currentRoundTripTime * 1000);
    }
    if (s.type === "inbound-rtp" && s.kind === "video" && s.jitterBufferEmittedCount) {
      jitter = Math.round((s.jitterBufferDelay / s.jitterBufferEmittedCount) * 1000);
    }
  });
  if (lastSent) {
    const secs = Math.max((sent.at - lastSent.at) / 1000, 0.1);
    const rates = Object.entries(sent.bytes)
      .map(([rid, b]) => `${rid} ${Math.round(((b - (lastSent.bytes[rid] || 0)) * 8) / secs / 1000)} kbit/s`);
    const paused = [...state.pausedRids.values()].flatMap((rids) => [...rids]);
    if (rates.length) lines.push(t("diag.sending", rates.join(", ")) + (paused.length ? t("diag.sendingPaused", paused.join(", ")) : ""));
  }
  lastSent = sent;
  if (uplink != null) lines.push(t("diag.uplink", uplink, rtt ?? "–"));
  if (jitter != null) lines.push(t("diag.jitter", jitter));
  list.replaceChildren(...lines.map((text) => Object.assign(document.createElement("li"), { textContent: text })));
}

/** Turns the simulcast encodings of the sender on media line `mid` on or off as the SFU
 * last asked (`pause_encodings`). */
async function applyEncodings(mid) {
  const pc = state.pc;
  const tr = pc && pc.getTransceivers().find((t) => t.mid === mid);
  if (!tr || !tr.sender) return;
  const paused = state.pausedRids.get(mid) || new Set();
  const params = tr.sender.getParameters();
  if (!params.encodings || params.encodings.length < 2) return;
  let changed = false;
  for (const e of params.encodings) {
    const active = !paused.has(e.rid);
    if (e.active !== active) { e.active = active; changed = true; }
  }
  if (changed) await tr.sender.setParameters(params);
}

// Messages are handled one at a time: an SFU offer may arrive right behind its answer.
let queue = Promise.resolve();
function enqueue(fn) { queue = queue.then(fn).catch((e) => { state.errors.push(String(e)); console.error(e); }); }

/** A new peer connection publishing `local`; returns after sending its offer. */
async function connectMedia(restart) {
  if (state.pc) state.pc.close();
  state.screen = null;
  for (const id of [...state.tiles.keys()]) removeTile(id);
  const pc = new RTCPeerConnection({ iceServers: state.iceServers, bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
  state.pc = pc;
  // Added with their tracks (so the offer announces their SSRCs), then emptied until admitted.
  state.senders = local.getTracks().map((track) => ({
    sender: pc.addTransceiver(track, {
      direction: "sendonly", streams: [local],
      ...(track.kind === "video" ? { sendEncodings: cameraLayers(track) } : {}),
    }).sender,
    track,
  }));
  // A new session subscribes afresh: every layer choice is sent again; every layer of ours is
  // encoded until the SFU says otherwise.
  state.pausedRids.clear();
  state.videoTracks.clear();
  state.layers.clear();
  applySending();
  // The room's data channel (relayed by the SFU to everyone admitted): raised hands. The SFU
  // sets each message's `from` to the participant it came from, whatever the sender wrote.
  const dc = pc.createDataChannel("room");
  state.dc = dc;
  dc.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    // (The last few, for tests and diagnostics: a page open for hours keeps no more.)
    state.dataMessages.push(msg);
    if (state.dataMessages.length > 50) state.dataMessages.shift();
    if (msg.type === "hand" && typeof msg.from === "string") {
      const tile = state.tiles.get(msg.from);
      if (tile) tile.fig.classList.toggle("hand", !!msg.raised);
    }
  };
  state.sendData = (msg) => dc.readyState === "open" && (dc.send(JSON.stringify(msg)), true);
  pc.ontrack = (ev) => {
    const streamId = ev.streams[0] ? ev.streams[0].id : ev.track.id;
    const tile = tileFor(streamId);
    tile.stream.addTrack(ev.track);
    // Layers are asked for per m-line: the SFU knows which track it sends on each. A new
    // subscription (on a new m-line) starts from our default, so it is told afresh.
    const mid = ev.transceiver && ev.transceiver.mid;
    if (ev.track.kind === "video" && mid) {
      if (!state.videoTracks.has(streamId)) state.videoTracks.set(streamId, new Set());
      state.videoTracks.get(streamId).add(mid);
      state.layers.delete(mid);
    }
    ev.track.onended = () => {
      tile.stream.removeTrack(ev.track);
      if (mid && state.videoTracks.has(streamId)) state.videoTracks.get(streamId).delete(mid);
      state.layers.delete(mid);
    };
    applyLayers();
  };
  pc.onconnectionstatechange = () => {
    if (pc !== state.pc) return;
    if (pc.connectionState === "connected" && state.view === "meeting") setStatus(t("status.connected"));
    if (pc.connectionState === "failed") scheduleRestart(t("status.connectionLost"));
  };
  // A path that went quiet (Wi-Fi to cellular, a new address) is first repaired in place: an
  // ICE restart keeps the session, its tracks and admission; the full rebuild on `failed`
  // stays the fallback.
  pc.oniceconnectionstatechange = () => {
    if (pc !== state.pc) return;
    noteIce(pc.iceConnectionState);
    if (["connected", "completed"].includes(pc.iceConnectionState)) {
      clearTimeout(iceRestartTimer);
      iceRestartTimer = null;
      if (state.view === "meeting") setStatus(t("status.connected"));
    } else if (pc.iceConnectionState === "disconnected" && !iceRestartTimer) {
      setStatus(t("status.networkChanged"));
      iceRestartTimer = setTimeout(() => { iceRestartTimer = null; restartIce(pc); }, 1000);
    }
  };
  state.sessionStartedAt = Date.now();
  state.crossedOffers = 0;
  watchMediaPath(pc);
  checkConnectivity(pc);
  await offer(pc, restart, "session");
}

/**
 * The connectivity check, while waiting (the lobby's media session connects although nothing
 * is sent yet): says in plain words whether video can work from this network and how, and
 * what to do when it cannot — before the clinician waits for a picture that never comes.
 */
function checkConnectivity(pc) {
  const show = (text, failed) => {
    state.connectivity = text;
    const el = $("net-check");
    el.textContent = text;
    el.classList.toggle("problem", !!failed);
  };
  if (!state.connectivityOk) show(t("net.checking"), false);
  const started = Date.now();
  const timer = setInterval(async () => {
    if (pc !== state.pc || pc.connectionState === "closed") { clearInterval(timer); return; }
    if (pc.connectionState === "connected") {
      clearInterval(timer);
      let how = t("net.direct");
      const report = await pc.getStats();
      report.forEach((s) => {
        if (s.type !== "transport" || !s.selectedCandidatePairId) return;
        const pair = report.get(s.selectedCandidatePairId);
        const local = pair && report.get(pair.localCandidateId);
        if (!local) return;
        if (local.candidateType === "relay") how = t("net.relay");
        else if (local.protocol === "tcp") how = t("net.tcp");
      });
      state.connectivityOk = true;
      state.connectivityPath = how;
      show(t("net.ok", how), false);
    } else if (Date.now() - started > 8000 || pc.connectionState === "failed") {
      clearInterval(timer);
      state.connectivityOk = false;
      state.connectivityPath = null;
      show(t("net.failed"), true);
    }
  }, 250);
}

/**
 * A path that dies without the browser noticing (Chromium keeps ICE "connected" for several
 * seconds after its network is gone): while in a meeting the SFU sends us something at least
 * every second (transport-wide feedback every 50 ms while we publish, reports every second),
 * so 0.8 s without a byte means the path is gone and ICE is restarted in place.
 */
function watchMediaPath(pc) {
  let lastBytes = -1;
  let quietSince = Date.now();
  let restartedAt = 0;
  const timer = setInterval(async () => {
    if (pc !== state.pc || pc.connectionState === "closed") { clearInterval(timer); return; }
    if (state.view !== "meeting" || pc.connectionState !== "connected") { quietSince = Date.now(); return; }
    let bytes = 0;
    (await pc.getStats()).forEach((s) => { if (s.type === "transport") bytes += s.bytesReceived || 0; });
    const now = Date.now();
    if (bytes !== lastBytes) { lastBytes = bytes; quietSince = now; return; }
    if (now - quietSince > 800 && now - restartedAt > 4000) {
      restartedAt = now;
      state.pathStalls += 1;
      setStatus(t("status.networkChanged"));
      checkSocket();
      restartIce(pc);
    }
  }, 250);
}

let iceRestartTimer = null;

/** The session's ICE history (state changes, restarts, answers), the last 50, for diagnosis. */
function noteIce(what) {
  state.iceStates.push([Date.now() - state.sessionStartedAt, what]);
  if (state.iceStates.length > 50) state.iceStates.shift();
}

/** An ICE restart in place: new ICE credentials on the same session (no new tracks). */
function restartIce(pc) {
  enqueue(async () => {
    if (pc !== state.pc || leaving || pc.connectionState === "closed") return;
    // No way to the server: the resumed connection restarts ICE (an offer now would be lost
    // and leave the peer connection waiting for its answer).
    if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return;
    // An offer or answer in flight: the restart waits for the next stable moment.
    if (pc.signalingState !== "stable") {
      iceRestartTimer = setTimeout(() => { iceRestartTimer = null; restartIce(pc); }, 500);
      return;
    }
    state.iceRestarts += 1;
    noteIce("restart");
    const o = await pc.createOffer({ iceRestart: true });
    await pc.setLocalDescription(o);
    state.lastOffer = { type: "offer", sdp: pc.localDescription.sdp, kind: "ice" };
    send(state.lastOffer);
  });
}

// The device changed networks (or came back online): restart ICE at once rather than wait for
// checks on the old path to time out.
function onNetworkChange() {
  checkSocket();
  const pc = state.pc;
  if (!pc || leaving || ["new", "closed", "failed"].includes(pc.connectionState)) return;
  clearTimeout(iceRestartTimer);
  iceRestartTimer = null;
  restartIce(pc);
}
window.addEventListener("online", onNetworkChange);
if (navigator.connection && navigator.connection.addEventListener) {
  navigator.connection.addEventListener("change", onNetworkChange);
}

// Whether the WebSocket still reaches the server: after a network change its TCP connection
// may be dead while the browser still shows it open. No `pong` in time: a new connection
// resumes this participant (the server hands it over from the old one). In time means 4 round
// trips + 0.3 s as this socket's pings measured them (0.7–3 s; 1 s before the first): a fast
// link finds out sooner, a slow one is not given up on for being slow. The round trip is the
// least of the last four samples: a sample is only ever made longer (a busy page or server
// answers late), never shorter, and a link that really got slower raises all four within a
// minute.
let pongTimer = null;
const rttSamples = [];
let pingSentAt = 0;
let pingOut = false;
function pongWait() {
  return state.socketRtt === null ? 1000 : Math.min(3000, Math.max(700, 4 * state.socketRtt + 300));
}
function ping() {
  pingSentAt = performance.now();
  pingOut = true;
  send({ type: "ping" });
}
/** A ping that only measures the round trip: a late pong is a slow socket, not a dead one. */
function measureSocket() {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || pingOut || leaving) return;
  ping();
}
function checkSocket() {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN || pongTimer || leaving) return;
  if (!pingOut) ping(); // else the pong of the ping already out will do
  pongTimer = setTimeout(() => {
    pongTimer = null;
    if (ws !== state.ws || leaving || state.closing) return;
    noteIce("socket-silent");
    try { ws.close(); } catch { /* already closing */ }
    wsAttempts += 1;
    openSocket();
  }, pongWait());
}
function onPong() {
  clearTimeout(pongTimer);
  pongTimer = null;
  if (!pingOut) return;
  pingOut = false;
  rttSamples.push(Math.round(performance.now() - pingSentAt));
  if (rttSamples.length > 4) rttSamples.shift();
  state.socketRtt = Math.min(...rttSamples);
}
// A ping every 15 s keeps the round trip known.
setInterval(() => { if (state.view === "meeting" || state.view === "waiting") measureSocket(); }, 15000);

// `kind`: "session" (a media session's first offer) or "renegotiation" (a track added or
// removed in a running session); kept with the offer for when it crosses one of the SFU's.
async function offer(pc, restart, kind) {
  const o = await pc.createOffer();
  await pc.setLocalDescription(o);
  state.lastOffer = { type: "offer", sdp: pc.localDescription.sdp, restart, kind };
  send(state.lastOffer);
}

// Also reachable from the console and the tests: a fresh media session on demand.
state.reconnect = () => scheduleRestart(t("status.reconnecting"));
// Tests: send camera and microphone even while waiting, to show the SFU drops them.
state.forceSendWhileWaiting = () => { state.forceSend = true; applySending(); };

function scheduleRestart(text) {
  if (leaving || restartTimer) return;
  setStatus(text);
  // A short pause lets a network switch settle before the new attempt.
  restartTimer = setTimeout(() => {
    restartTimer = null;
    if (leaving) return;
    state.restarts += 1;
    enqueue(() => connectMedia(true));
  }, 1000);
}

// ---- the lists: lobby, participants, chat --------------------------------------------------

function button(text, cls, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = cls;
  b.textContent = text;
  b.onclick = onclick;
  return b;
}

function minutesSince(iso) {
  const m = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 60000));
  return m < 1 ? t("lobby.justNow") : t("lobby.minutes", m);
}

function renderLobby() {
  const list = $("lobby-list");
  list.replaceChildren();
  $("lobby-count").textContent = String(state.lobby.length);
  for (const w of state.lobby) {
    const li = document.createElement("li");
    li.dataset.participant = w.participant;
    const label = document.createElement("span");
    const withWhom = w.with_name ? t("lobby.with", w.with_name) : "";
    label.textContent = `${w.name} (${role(w.role)}${withWhom}), ${t("lobby.since", minutesSince(w.since))}`;
    li.append(label);
    if (state.kind !== "drop_in") {
      li.append(button(t("lobby.admit"), "admit", () => send({ type: "admit", participant: w.participant })));
      // A patient whose companions wait too: both in with one press.
      const companions = state.lobby.filter((c) => c.with === w.participant);
      if (companions.length) {
        const text = companions.length === 1 ? t("lobby.admitWithOne", w.name) : t("lobby.admitWithMany", w.name, companions.length);
        li.append(button(text, "admit-with",
          () => send({ type: "admit", participant: w.participant, with_companions: true })));
      }
    }
    li.append(button(t("lobby.deny"), "deny danger", () => send({ type: "deny", participant: w.participant })));
    list.append(li);
  }
  $("take-next").disabled = state.lobby.length === 0;
}

function renderPeople() {
  const list = $("people");
  list.replaceChildren();
  for (const [id, p] of state.people) {
    const li = document.createElement("li");
    li.dataset.participant = id;
    const label = document.createElement("span");
    label.textContent = `${p.name} (${role(p.role)})`;
    li.append(label);
    if (state.role === "clinician") {
      if (p.role !== "clinician" && p.role !== "consultant") {
        li.append(button(t("people.toLobby"), "to-lobby", () => send({ type: "to_lobby", participant: id })));
      }
      li.append(button(t("people.remove"), "remove danger", () => send({ type: "remove", participant: id })));
    }
    list.append(li);
  }
}

function setPeople(list) {
  state.people.clear();
  for (const p of list || []) addPerson(p);
}

function addPerson(p) {
  state.names.set(p.participant, p.name);
  state.roles.set(p.participant, p.role);
  state.people.set(p.participant, { name: p.name, role: p.role });
  const tile = state.tiles.get(p.participant);
  if (tile) tile.cap.textContent = p.name;
}

function addChat(msg) {
  state.chat.push({ from: msg.from, name: msg.name, text: msg.text });
  const li = document.createElement("li");
  const who = document.createElement("strong");
  who.textContent = msg.from === state.participant ? t("people.you") : msg.name;
  // Text only: chat is never rendered as markup.
  li.append(who, document.createTextNode(": " + msg.text));
  $("chat-log").append(li);
  li.scrollIntoView({ block: "nearest" });
}

function enterMeeting() {
  state.admitted = true;
  applySending();
  show("meeting");
  setStatus(state.pc && state.pc.connectionState === "connected" ? t("status.connected") : t("status.connectingMedia"));
}

function enterLobby(position) {
  state.admitted = false;
  applySending();
  state.people.clear();
  renderPeople();
  for (const id of [...state.tiles.keys()]) removeTile(id);
  showPosition(position);
  show("waiting");
  setStatus(t("status.waiting"));
}

function showPosition(position) {
  state.position = position;
  $("position").textContent = position ? t("waiting.position", position) : "";
}

// ---- the waiting room's device check -------------------------------------------------------

function deviceCheck() {
  const v = local.getVideoTracks()[0];
  const a = local.getAudioTracks()[0];
  const s = v && v.getSettings ? v.getSettings() : {};
  const parts = [
    v ? (s.width ? t("check.cameraSize", s.width, s.height) : t("check.camera")) : t("check.noCamera"),
    a ? t("check.micOk") : t("check.noMic"),
  ];
  $("device-check").textContent = parts.join(". ") + ".";
  if (!a) return;
  try {
    const ctx = new AudioContext();
    state.meter = ctx;
    const analyser = ctx.createAnalyser();
    ctx.createMediaStreamSource(new MediaStream([a])).connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    const tick = () => {
      if (leaving) { ctx.close(); return; }
      analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (const x of buf) sum += x * x;
      $("mic-level").value = Math.min(1, Math.sqrt(sum / buf.length) * 4);
      setTimeout(tick, 100);
    };
    tick();
  } catch { /* the meter is a help, not a requirement */ }
}

// ---- photos ----------------------------------------------------------------------------------

const MAX_PHOTO_BYTES = 8 * 1024 * 1024;
const PHOTO_ERRORS = ["image_too_large", "image_too_many_pixels", "image_has_metadata", "image_not_supported", "waiting_for_admission", "images_busy", "images_per_sender"];

/**
 * The photo redrawn: only its pixels leave the device — no EXIF (camera, time, GPS position),
 * no XMP or comments — turned upright, at most 2560 px on its longer side and 8 MB.
 */
async function strippedPhoto(file) {
  const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  const scale = Math.min(1, 2560 / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(bitmap.width * scale));
  canvas.height = Math.max(1, Math.round(bitmap.height * scale));
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  for (const quality of [0.9, 0.8, 0.6, 0.4]) {
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", quality));
    if (blob && blob.size <= MAX_PHOTO_BYTES) return blob;
  }
  throw new Error("the photo stays over 8 MB");
}

/** Whether bytes hold an EXIF block (what the tests check of a received photo). */
function holdsExif(bytes) {
  const exif = [0x45, 0x78, 0x69, 0x66, 0, 0];
  outer: for (let i = 0; i + exif.length <= bytes.length; i++) {
    for (let j = 0; j < exif.length; j++) if (bytes[i + j] !== exif[j]) continue outer;
    return true;
  }
  return false;
}

async function sharePhoto(file) {
  setStatus(t("photo.sending"));
  let blob;
  try {
    blob = await strippedPhoto(file);
  } catch {
    setStatus(t("photo.unreadable"));
    return;
  }
  const r = await fetch("/images", {
    method: "POST", body: blob,
    headers: { authorization: `Bearer ${token}`, "x-participant": state.participant, "content-type": "image/jpeg" },
  }).catch(() => null);
  const body = r ? await r.json().catch(() => ({})) : {};
  if (!r || !r.ok) {
    setStatus(PHOTO_ERRORS.includes(body.error) ? t(`photo.${body.error}`) : t("photo.failed"));
    return;
  }
  state.sentImages.push({ id: body.image, bytes: blob.size });
  addPhoto(blob, t("people.you"), false);
  setStatus(body.recipients === 1 ? t("photo.sentOne") : t("photo.sentMany", body.recipients));
}

/** A shared photo: its place in the chat at once (in the order shared), the picture when
 * fetched. */
async function fetchImage(msg) {
  const li = photoItem(msg.name);
  const r = await fetch(`/images/${encodeURIComponent(msg.image)}`, { headers: { authorization: `Bearer ${token}` } }).catch(() => null);
  if (!r || !r.ok) {
    li.append(document.createTextNode(t("photo.unavailable")));
    throw new Error(`HTTP ${r ? r.status : "—"}`);
  }
  const blob = await r.blob();
  const head = new Uint8Array(await blob.slice(0, 65536).arrayBuffer());
  state.images.push({ id: msg.image, from: msg.from, bytes: blob.size, exif: holdsExif(head) });
  // Staff may keep it for the record — on this device, never on the server.
  showPhoto(li, blob, msg.name, state.role === "clinician");
}

function photoItem(who) {
  const li = document.createElement("li");
  li.className = "photo";
  const name = document.createElement("strong");
  name.textContent = who;
  li.append(name);
  $("chat-log").append(li);
  return li;
}

/** A photo in the chat, with a link that saves it on this device when `savable`. */
function addPhoto(blob, who, savable) {
  showPhoto(photoItem(who), blob, who, savable);
}

function showPhoto(li, blob, who, savable) {
  const url = URL.createObjectURL(blob);
  state.photoUrls.push(url);
  const img = document.createElement("img");
  img.src = url;
  img.alt = t("photo.from", who);
  li.append(img);
  if (savable) {
    const a = document.createElement("a");
    a.href = url;
    a.download = `bild-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-")}.jpg`;
    a.className = "save-photo";
    a.textContent = t("photo.save");
    li.append(a);
  }
  li.scrollIntoView({ block: "nearest" });
}

/** At the end of the visit who was there, the chat and the waiting room's names leave the page
 * (a tab left open on a shared device, or restored from the back-forward cache, shows none). */
function forgetVisit() {
  for (const id of ["chat-log", "people", "lobby-list"]) $(id).replaceChildren();
  // The others' pictures and the names under them, and a consultant's link (a working link,
  // with its token) the clinician made: nothing of the visit for the next user of the device.
  for (const id of [...state.tiles.keys()]) removeTile(id);
  $("invite-result").textContent = "";
  $("invite-link").value = "";
  $("invite-link").hidden = true;
  state.chat = [];
  state.names.clear();
  state.roles.clear();
  state.images = [];
  state.people.clear();
  state.lobby = [];
  state.dataMessages = [];
  state.lastOffer = null;
  state.resumeKey = null;
}

/** At the end of the visit the photos leave the page too (a shared device shows nothing). */
function forgetPhotos() {
  for (const url of state.photoUrls) URL.revokeObjectURL(url);
  state.photoUrls = [];
  for (const li of document.querySelectorAll("#chat-log li.photo")) li.remove();
}

// ---- the session ---------------------------------------------------------------------------

/** Asks the server whether we may join, before the camera is opened. */
async function joinCheck() {
  const r = await fetch("/join", {
    method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ token, meeting: linkMeeting || undefined }),
  });
  const body = await r.json().catch(() => ({}));
  // A refusal is the service's own answer (4xx with an error code); a proxy's 502/503 while
  // the service restarts, a 429 or a page that is not ours is not: try again.
  const refused = r.status >= 400 && r.status < 500 && r.status !== 429 && typeof body.error === "string";
  const retryAfter = Number(r.headers.get("retry-after")) || 0;
  return { ok: r.ok, body, refused, retryAfter };
}

/** The join check, asked again while the service is busy or away (a 429 or 503, a restart, a
 * network that is not there yet) for up to two minutes: only the service's refusal, an
 * admission, or that long ends it. */
async function checkUntilAnswered() {
  const started = Date.now();
  for (let attempt = 0; ; attempt++) {
    const check = await joinCheck().catch(() => ({ ok: false, refused: false, body: { noServer: true } }));
    if (check.ok || check.refused || Date.now() - started > 120000) return check;
    setStatus(t("status.checkRetrying"));
    // Not before the service said (a little after, spread), else sooner and then less often.
    const wait = check.retryAfter > 0
      ? Math.min(check.retryAfter, 60) * 1000 * (1 + Math.random() / 4)
      : jittered(Math.min(1000 * 2 ** attempt, 10000));
    await new Promise((resolve) => setTimeout(resolve, wait));
  }
}

/** Half to all of `ms`, at random: clients that lost the server together do not come back
 * together. */
function jittered(ms) {
  return ms * (0.5 + Math.random() / 2);
}

function openSocket() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const q = new URLSearchParams();
  if (linkMeeting) q.set("meeting", linkMeeting);
  // The token, and back after a drop the resume key (continue as the same participant, with
  // the same media session), ride in the offered subprotocols, not in the URL a proxy logs.
  const protocols = ["hc.v1", `hc.token.${token}`];
  if (state.resumeKey) protocols.push(`hc.resume.${state.resumeKey}`);
  const ws = new WebSocket(`${scheme}://${location.host}/ws${linkMeeting ? `?${q}` : ""}`, protocols);
  state.ws = ws;
  send = (msg) => ws.readyState === WebSocket.OPEN && (ws.send(JSON.stringify(msg)), true);
  // (Attempts count until a welcome: a server that accepts and then closes is backed off too.)
  ws.onclose = (ev) => {
    if (leaving || state.closing || ws !== state.ws) return;
    // 4001–4006: the server closed us on purpose (its `closing` message says why).
    if (ev.code >= 4001 && ev.code <= 4006) {
      enqueue(() => { if (!state.closing) endWith(ev.reason, ""); });
      return;
    }
    // The connection to the server dropped (a phone changing networks): come back; within
    // the grace the server keeps our admission. Each attempt first asks why, if refused.
    wsAttempts += 1;
    if (wsAttempts === 1) wsLostAt = Date.now();
    // Two minutes of trying: a service restart (or a pod moving) is waited out.
    if (Date.now() - wsLostAt > 120000) { endWith("", t("ws.gone")); return; }
    setStatus(t("status.socketLost"));
    setTimeout(async () => {
      if (leaving) return;
      const check = await joinCheck().catch(() => ({ ok: false, refused: false, body: {} }));
      if (check.refused) { state.refusal = check.body.error; endWith(check.body.error, refusalText(check.body.error, check.body.message, check.body)); return; }
      openSocket();
    }, jittered(state.resumeKey && wsAttempts === 1 ? 250 : Math.min(1000 * 2 ** (wsAttempts - 2), 10000)));
  };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    // Taken at once, not behind queued work (an offer being applied): its timing is the
    // socket's round trip.
    if (msg.type === "pong") onPong();
    else enqueue(() => handle(msg));
  };
}

async function handle(msg) {
  const pc = state.pc;
  switch (msg.type) {
    case "welcome":
      wsAttempts = 0;
      pingOut = false; // a ping of an earlier socket is answered by nobody
      rttSamples.length = 0; // a new socket may take another path: its own samples only
      measureSocket(); // the first measure of this socket's round trip
      setTimeout(measureSocket, 3000); // and one once the page has settled
      state.participant = msg.participant;
      state.role = msg.role;
      state.kind = msg.kind;
      state.meeting = msg.meeting;
      $("local-name").textContent = t("people.selfName", msg.name);
      $("title").textContent = msg.role === "clinician" && msg.kind === "drop_in" ? t("page.queue") : t("page.title");
      if (msg.role === "consultant") $("share").hidden = !navigator.mediaDevices.getDisplayMedia;
      if (msg.role === "clinician") {
        $("lobby-panel").hidden = false;
        $("end").hidden = msg.kind === "drop_in";
        $("share").hidden = msg.kind === "drop_in" || !navigator.mediaDevices.getDisplayMedia;
        $("take-next").hidden = msg.kind !== "drop_in";
        $("invite").hidden = msg.kind === "drop_in";
      }
      if (msg.state === "admitted") {
        setPeople(msg.participants);
        renderPeople();
        enterMeeting();
      } else {
        enterLobby(null);
      }
      // Back after the service restarted, with our media session kept by the SFU: the peer
      // connection goes on (a restart of ICE only if its path is not up).
      if (msg.media === "kept" && state.pc && !["closed", "failed"].includes(state.pc.connectionState)) {
        noteIce("media-kept");
        if (state.pc.connectionState !== "connected") restartIce(state.pc);
        break;
      }
      await connectMedia(false);
      break;
    case "consultant_invited":
      $("invite-result").textContent = msg.url ? t("invite.withLink", msg.name, msg.hsa) : t("invite.withoutLink", msg.name, msg.hsa);
      $("invite-link").hidden = !msg.url;
      $("invite-link").value = msg.url || "";
      break;
    case "resume_key":
      // What a new connection resumes this participant with, should this one drop.
      state.resumeKey = msg.key;
      break;
    case "resumed": {
      // The same participant and media session on a new connection (the old one dropped with
      // a network change): the media path likely moved too, so restart ICE in place.
      wsAttempts = 0;
      state.resumes += 1;
      // This socket's round trip is measured afresh (it may take another path).
      pingOut = false;
      rttSamples.length = 0;
      measureSocket();
      const pc = state.pc;
      if (state.view === "meeting") setStatus(pc && pc.connectionState === "connected" ? t("status.connected") : t("status.connectingMedia"));
      // An offer of ours may have gone down with the old socket: sent again (a rollback of an
      // ICE restart leaves Chromium unable to offer); otherwise a fresh ICE restart.
      if (pc && pc.signalingState === "have-local-offer" && state.lastOffer) {
        noteIce("offer-resent");
        send(state.lastOffer);
      } else if (pc && pc.connectionState !== "closed") {
        restartIce(pc);
      }
      break;
    }
    case "ice_servers":
      // The relay for networks that pass neither UDP nor TCP to the SFU (short-lived
      // credentials); taken by every peer connection made after it.
      state.iceServers = Array.isArray(msg.ice_servers) ? msg.ice_servers : [];
      break;
    case "lobby_position":
      showPosition(msg.position);
      break;
    case "admitted":
      setPeople(msg.participants);
      renderPeople();
      enterMeeting();
      break;
    case "returned_to_lobby":
      enterLobby(msg.position);
      break;
    case "moved":
      // A drop-in clinician took us (or we took a patient) into a private visit: a new media
      // session there.
      state.meeting = msg.meeting;
      state.kind = msg.kind;
      $("lobby-panel").hidden = true;
      $("end").hidden = state.role !== "clinician";
      $("share").hidden = state.role !== "clinician" || !navigator.mediaDevices.getDisplayMedia;
      setPeople(msg.participants);
      renderPeople();
      enterMeeting();
      await connectMedia(false);
      break;
    case "lobby":
      state.lobby = msg.waiting;
      renderLobby();
      break;
    case "participant_joined":
      addPerson(msg);
      renderPeople();
      break;
    case "participant_left":
      state.people.delete(msg.participant);
      state.videoTracks.delete(msg.participant);
      renderPeople();
      removeTile(msg.participant);
      break;
    case "chat":
      addChat(msg);
      break;
    case "image_shared":
      // Fetched beside the message queue: a large photo must not hold up the call.
      fetchImage(msg).catch((e) => state.errors.push("image: " + e));
      break;
    case "closing":
      // Closed for silence (a page asleep in the background, 4007), for messages that waited
      // too long for a page that could not keep up (4008: it joins afresh) or because the
      // service restarts (1012): the close that follows reconnects.
      if (msg.reason === "idle" || msg.reason === "too_slow" || msg.reason === "restarting") break;
      state.closing = msg;
      endWith(msg.reason, refusalText(msg.reason, msg.message));
      break;
    case "answer":
      // An answer meant for a session already replaced finds no offer of ours: dropped.
      if (!pc || pc.signalingState !== "have-local-offer") break;
      await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
      noteIce("answer");
      state.refusedOffers = 0;
      break;
    case "offer": {
      if (!pc) break;
      let redo = null;
      if (pc.signalingState === "have-local-offer") {
        const kind = state.lastOffer && state.lastOffer.kind;
        // An SFU offer for the replaced session, arriving while the new one's own offer is
        // out, is dropped: the new session's offers come after its answer.
        if (kind !== "ice" && kind !== "renegotiation") break;
        // Within a running session, ours crossed the SFU's (an ICE restart, a shared
        // screen): the SFU's goes first — ours is rolled back, made again once that one is
        // answered, and the SFU's `offer_crossed` for it is expected.
        try {
          await pc.setLocalDescription({ type: "rollback" });
        } catch {
          break; // cannot take ours back: the SFU's offer goes unanswered and it says so
        }
        redo = kind;
        state.crossedOffers += 1;
        noteIce("offer-crossed");
      }
      state.offers += 1;
      try {
        await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
        await pc.setLocalDescription(await pc.createAnswer());
      } catch {
        // This browser cannot apply the SFU's offer: declined at once (the SFU gives it up
        // and says `offer_unanswered`, and a new media session follows) rather than left
        // to be sent again for 30 s with every later change behind it. Twice in a row with
        // no offer taken between, and the SFU's own pace (30 s) takes over: a new session
        // that cannot take the same offer either must not rebuild itself every few seconds.
        if (pc.signalingState === "have-remote-offer") {
          try { await pc.setLocalDescription({ type: "rollback" }); } catch { /* the new session replaces it */ }
        }
        noteIce("offer-declined");
        state.declinedOffers += 1;
        if (pc === state.pc && state.declinedOffers <= 2) send({ type: "reject_offer" });
        break;
      }
      state.declinedOffers = 0;
      send({ type: "answer", sdp: pc.localDescription.sdp });
      for (const [id, tile] of state.tiles) tile.cap.textContent = state.names.get(id) || t("people.someone");
      if (redo === "ice") restartIce(pc);
      else if (redo === "renegotiation") await offer(pc, false, "renegotiation");
      break;
    }
    case "active_speaker":
      for (const [id, tile] of state.tiles) tile.fig.classList.toggle("speaking", id === msg.participant);
      break;
    case "link_report":
      state.linkReport = msg;
      break;
    case "pause_encodings":
      // Nobody receives these layers of ours just now (the SFU says so after a few seconds):
      // the encoder stops them — less upload and battery — until someone needs them again.
      state.pausedRids.set(msg.mid, new Set(Array.isArray(msg.rids) ? msg.rids : []));
      await applyEncodings(msg.mid);
      break;
    case "video_paused": {
      // Our link carries none of this person's video just now: the SFU sends their voice
      // only, and says so; the notice goes when the picture comes back.
      if (msg.paused) state.pausedVideo.add(msg.publisher);
      else state.pausedVideo.delete(msg.publisher);
      const tile = state.tiles.get(msg.publisher);
      if (tile) showPaused(tile, msg.paused);
      break;
    }
    case "media_disconnected":
      // The SFU dropped our media session (its consent ran out on the path it watched, or
      // DTLS closed): even a connection the browser still calls connected has no session
      // behind it, so it is rebuilt. Only a session started moments ago is spared — the
      // message then concerns the one it replaced.
      if (!pc || Date.now() - state.sessionStartedAt > 3000 || !["new", "connecting", "connected"].includes(pc.connectionState)) {
        scheduleRestart(t("status.mediaLost"));
      }
      break;
    case "error":
      if (msg.code === "offer_unanswered") {
        // Our session could not take the SFU's offers: a new one gets them afresh.
        scheduleRestart(t("status.reconnecting"));
        break;
      }
      if (msg.code === "offer_crossed") {
        // Our offer met the SFU's on the way. Usually its offer has come first and ours was
        // made again after answering it (see "offer"); otherwise ours is taken back and the
        // ICE restart tried again once the SFU's is answered.
        if (state.crossedOffers > 0) {
          state.crossedOffers -= 1;
        } else if (pc && pc.signalingState === "have-local-offer") {
          await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
          // Its offer never reached us (lost across a resume): no hurry — once it gives up on
          // it (offer_unanswered) or resends it, the restart goes through.
          setTimeout(() => restartIce(pc), 2000);
        }
        break;
      }
      if (msg.code === "restart_too_soon") {
        setTimeout(() => state.reconnect(), 5000);
        break;
      }
      state.errors.push(msg.code + ": " + msg.message);
      // An offer of ours that was refused: back to stable, so the SFU's next offer is not
      // dropped.
      if (["sfu_refused", "screen_share_not_allowed"].includes(msg.code) && pc && pc.signalingState === "have-local-offer") {
        await pc.setLocalDescription({ type: "rollback" }).catch(() => {});
      }
      // Refused for want of an SFU (none up yet, or busy): try again, ever more slowly — a
      // new media session if ours never started, else the ICE restart it may have been.
      if (msg.code === "sfu_refused") {
        state.refusedOffers += 1;
        const wait = Math.min(1000 * 2 ** (state.refusedOffers - 1), 8000);
        setTimeout(() => {
          if (leaving || pc !== state.pc) return;
          if (pc.connectionState === "connected") restartIce(pc);
          else scheduleRestart(t("status.reconnecting"));
        }, wait);
      }
      if (msg.code === "chat_rate") setStatus(t("status.chatRate"));
      if (msg.code === "bad_invite") {
        $("invite-result").textContent = t("invite.bad");
      }
      console.warn("server error", msg);
      break;
  }
}

function wireControls() {
  // Mute states are shown three ways: the button's words and colour, and a line over our own
  // picture.
  $("mic").onclick = () => {
    const track = local.getAudioTracks()[0];
    if (!track) return;
    track.enabled = !track.enabled;
    showMuteStates();
  };
  $("cam").onclick = () => {
    const track = local.getVideoTracks()[0];
    if (!track) return;
    track.enabled = !track.enabled;
    showMuteStates();
  };
  $("settings-button").onclick = () => toggleSettings();
  $("settings-close").onclick = () => toggleSettings(false);
  $("pick-camera").onchange = () => switchDevice("video", { deviceId: { exact: $("pick-camera").value } });
  $("pick-mic").onchange = () => switchDevice("audio", { deviceId: { exact: $("pick-mic").value } });
  $("pick-speaker").onchange = () => setSpeaker($("pick-speaker").value);
  $("flip").onclick = () => {
    state.facing = state.facing === "environment" ? "user" : "environment";
    switchDevice("video", { facingMode: { exact: state.facing } }).catch(() =>
      switchDevice("video", { facingMode: state.facing }));
  };
  $("tone").onclick = () => playTone();
  let handRaised = false;
  $("hand").onclick = (ev) => {
    handRaised = !handRaised;
    ev.target.setAttribute("aria-pressed", String(handRaised));
    state.sendData && state.sendData({ type: "hand", raised: handRaised });
  };
  $("share").onclick = () => enqueue(async () => {
    const pc = state.pc;
    const btn = $("share");
    if (!pc) return;
    if (state.screen) {
      state.screenTrack.stop();
      state.screen.stop();
      state.screen = null;
      btn.textContent = t("controls.share");
      await offer(pc, false, "renegotiation");
      return;
    }
    try {
      const display = await navigator.mediaDevices.getDisplayMedia({ video: true });
      const track = display.getVideoTracks()[0];
      state.screenTrack = track;
      state.screen = pc.addTransceiver(track, { direction: "sendonly", streams: [display] });
      // The browser's own "stop sharing" ends the track.
      track.onended = () => { if (state.screen) $("share").click(); };
      btn.textContent = t("controls.stopShare");
      await offer(pc, false, "renegotiation");
    } catch (e) {
      setStatus(t("status.shareFailed"));
    }
  });
  $("save-data").onclick = (ev) => {
    state.saveData = !state.saveData;
    ev.target.setAttribute("aria-pressed", String(state.saveData));
    // The default for video that arrives later, then each tile's own choice.
    send({ type: "preferred_layer", layer: state.saveData ? "low" : "high" });
    state.layers.clear();
    applyLayers();
  };
  $("take-next").onclick = () => send({ type: "take_next" });
  $("invite-form").onsubmit = (ev) => {
    ev.preventDefault();
    send({ type: "invite_consultant", hsa: $("invite-hsa").value.trim(), unit: $("invite-unit").value.trim(), name: $("invite-name").value.trim() });
  };
  // Ending is for everyone: a second press confirms (no dialogs, they block phones' UI).
  let armed = null;
  $("end").onclick = (ev) => {
    if (armed) {
      clearTimeout(armed);
      armed = null;
      send({ type: "end_meeting" });
      return;
    }
    ev.target.textContent = t("controls.confirmEnd");
    armed = setTimeout(() => { armed = null; ev.target.textContent = t("controls.end"); }, 5000);
  };
  $("leave").onclick = () => {
    send({ type: "leave" });
    endWith("left", t("ended.closeWindow"));
  };
  $("image-button").onclick = () => $("image-input").click();
  $("image-input").onchange = () => {
    const file = $("image-input").files[0];
    $("image-input").value = "";
    if (file) sharePhoto(file);
  };
  $("chat-form").onsubmit = (ev) => {
    ev.preventDefault();
    const input = $("chat-input");
    const text = input.value.trim();
    if (!text) return;
    if (send({ type: "chat", text })) input.value = "";
  };
}

// ---- devices ---------------------------------------------------------------------------------

function showMuteStates() {
  const mic = local && local.getAudioTracks()[0];
  const cam = local && local.getVideoTracks()[0];
  const micOff = !!mic && !mic.enabled;
  const camOff = !!cam && !cam.enabled;
  $("mic").setAttribute("aria-pressed", String(micOff));
  $("mic").textContent = t(micOff ? "controls.micOff" : "controls.micOn");
  $("cam").setAttribute("aria-pressed", String(camOff));
  $("cam").textContent = t(camOff ? "controls.camOff" : "controls.camOn");
  $("self-state").textContent = [micOff && t("self.muted"), camOff && t("self.cameraOff")].filter(Boolean).join(" · ");
}

async function toggleSettings(open = $("settings").hidden) {
  $("settings").hidden = !open;
  $("settings-button").setAttribute("aria-expanded", String(open));
  if (open) {
    await listDevices().catch((e) => state.errors.push("devices: " + e));
    // Focus moves into the panel (its first picker on show), and back to its button after.
    const first = [...$("settings").querySelectorAll("select, button")].find((el) => el.offsetParent !== null);
    if (first) first.focus();
  } else {
    $("settings-button").focus();
  }
}

/** Fills the pickers with the devices there are (names are known once access was given). */
async function listDevices() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  const fill = (select, kind, current) => {
    select.replaceChildren();
    for (const d of devices.filter((x) => x.kind === kind)) {
      const o = document.createElement("option");
      o.value = d.deviceId;
      o.textContent = d.label || t("settings.default");
      o.selected = d.deviceId === current;
      select.append(o);
    }
  };
  const cam = local.getVideoTracks()[0];
  const mic = local.getAudioTracks()[0];
  fill($("pick-camera"), "videoinput", cam && cam.getSettings().deviceId);
  fill($("pick-mic"), "audioinput", mic && mic.getSettings().deviceId);
  fill($("pick-speaker"), "audiooutput", state.speaker || "default");
  // Choosing the speaker needs setSinkId (not in every browser).
  $("speaker-row").hidden = !("setSinkId" in HTMLMediaElement.prototype);
  $("pick-camera").closest("p").hidden = !cam;
  $("flip").hidden = !cam || devices.filter((x) => x.kind === "videoinput").length < 2;
}

/**
 * Another camera or microphone: a new track in place of the old one, in our pictures and on
 * the peer connection's sender (no renegotiation), keeping its muted state.
 */
async function switchDevice(kind, constraints) {
  const old = kind === "video" ? local.getVideoTracks()[0] : local.getAudioTracks()[0];
  const wanted = kind === "video" ? { width: 640, height: 480, ...constraints } : constraints;
  const stream = await navigator.mediaDevices.getUserMedia({ [kind]: wanted });
  const track = stream.getTracks()[0];
  if (old) {
    track.enabled = old.enabled;
    local.removeTrack(old);
    old.stop();
  }
  local.addTrack(track);
  for (const s of state.senders || []) {
    if (s.track === old) {
      s.track = track;
      if (state.admitted || state.forceSend) await s.sender.replaceTrack(track);
    }
  }
  state.deviceSwitches = (state.deviceSwitches || 0) + 1;
  $("local").srcObject = local;
  $("preview").srcObject = local;
  if (kind === "audio") deviceCheck();
  showMuteStates();
  if (!$("settings").hidden) listDevices();
}

async function setSpeaker(deviceId) {
  state.speaker = deviceId;
  for (const el of document.querySelectorAll("video:not([muted])")) {
    if (el.setSinkId) await el.setSinkId(deviceId).catch(() => {});
  }
}

/** A 440 Hz tone for one second, through the chosen speaker where the browser allows. */
async function playTone() {
  const ctx = new AudioContext();
  if (state.speaker && ctx.setSinkId) await ctx.setSinkId(state.speaker).catch(() => {});
  const osc = ctx.createOscillator();
  const gain = ctx.createGain();
  gain.gain.value = 0.2;
  osc.frequency.value = 440;
  osc.connect(gain).connect(ctx.destination);
  osc.start();
  state.tonesPlayed = (state.tonesPlayed || 0) + 1;
  $("tone-hint").textContent = t("settings.toneHint");
  setTimeout(() => { osc.stop(); ctx.close(); }, 1000);
}

/**
 * Back from the background (a phone's other app, a locked screen): a camera the system took
 * away is opened again, pictures that stopped play again, and the server is asked whether our
 * connection still holds.
 */
async function onVisible() {
  if (document.visibilityState !== "visible" || !local || leaving) return;
  state.visibleAgain = (state.visibleAgain || 0) + 1;
  const cam = local.getVideoTracks()[0];
  if (cam && cam.readyState === "ended") {
    await switchDevice("video", state.facing ? { facingMode: state.facing } : {}).catch((e) => state.errors.push("camera: " + e));
    setStatus(t("status.cameraBack"));
  }
  for (const el of document.querySelectorAll("video")) {
    if (el.srcObject && el.paused) el.play().catch(() => {});
  }
  if (state.meter && state.meter.state === "suspended") state.meter.resume().catch(() => {});
  checkSocket();
}
document.addEventListener("visibilitychange", onVisible);
// Kept in the back-forward cache (a phone's browser, on leaving the page): camera and
// microphone are let go at once. Restored from it, the page starts afresh with its link — the
// server still knows the person (a reconnect within the grace keeps admission).
window.addEventListener("pagehide", (ev) => {
  if (!ev.persisted || leaving) return;
  state.frozen = true;
  if (local) local.getTracks().forEach((track) => track.stop());
  if (state.pc) state.pc.close();
});
window.addEventListener("pageshow", (ev) => {
  if (!ev.persisted || !state.frozen || leaving) return;
  const q = new URLSearchParams();
  if (params.get("lang")) q.set("lang", params.get("lang"));
  // The token in the fragment, which the server never sees. (The query, even empty, makes this
  // a page load: an address that differs only in its fragment would not load the page again.)
  location.replace(`${location.pathname}?${q}#${new URLSearchParams({ token })}`);
});

/** Asks whether to take part with the camera or by voice alone; true for voice alone. */
function chooseMedia() {
  $("media-choice").hidden = false;
  setStatus("");
  return new Promise((resolve) => {
    const done = (audioOnly) => { $("media-choice").hidden = true; resolve(audioOnly); };
    $("choose-video").onclick = () => done(false);
    $("choose-audio").onclick = () => done(true);
    $("choose-video").focus();
  });
}

async function start() {
  translatePage();
  show("check");
  if (!token) { endWith("", t("link.missing")); return; }
  const check = await checkUntilAnswered();
  if (!check.ok) {
    state.refusal = check.body.error;
    endWith(check.body.error, check.body.noServer ? t("status.noServer") : refusalText(check.body.error, check.body.message, check.body));
    return;
  }
  // An interpreter may take part by voice alone (the link may say so: `&media=audio`).
  state.audioOnly = params.get("media") === "audio";
  if (check.body.role === "interpreter" && !state.audioOnly) state.audioOnly = await chooseMedia();
  setStatus(state.audioOnly ? t("status.startingMic") : t("status.startingBoth"));
  $("cam").hidden = state.audioOnly;
  try {
    local = await navigator.mediaDevices.getUserMedia({ audio: true, video: state.audioOnly ? false : { width: 640, height: 480 } });
  } catch (e) {
    setStatus(t("status.deviceError", e.message));
    return;
  }
  $("local").srcObject = local;
  $("preview").srcObject = local;
  deviceCheck();
  wireControls();
  showMuteStates();
  openSocket();
  if (diagnostics) {
    $("diagnostics").hidden = false;
    setInterval(() => { updateDiagnostics().catch((e) => state.errors.push("diagnostics: " + e)); }, 2000);
  }
}

start();
