// Reference web client: joins with the token in the URL, publishes camera and microphone,
// shows the others. The SFU answers our offer and sends its own offers when tracks change.
// When the media path breaks (a phone switching networks), a new peer connection rejoins over
// the same WebSocket.

const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
// Keep the token out of the address bar (screenshots, shared screens) once read.
history.replaceState(null, "", location.pathname);

const statusEl = document.getElementById("status");
const grid = document.getElementById("grid");
const state = {
  pc: null, ws: null, dc: null, names: new Map(), tiles: new Map(), participant: null,
  errors: [], dataMessages: [], offers: 0, restarts: 0,
};
window.hcState = state; // read by the browser tests

function setStatus(text) { statusEl.textContent = text; }

function tileFor(streamId) {
  let tile = state.tiles.get(streamId);
  if (!tile) {
    const fig = document.createElement("figure");
    fig.className = "tile";
    fig.dataset.participant = streamId;
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    const cap = document.createElement("figcaption");
    cap.textContent = state.names.get(streamId) || "Deltagare";
    fig.append(video, cap);
    grid.append(fig);
    tile = { fig, video, cap, stream: new MediaStream() };
    video.srcObject = tile.stream;
    state.tiles.set(streamId, tile);
  }
  return tile;
}

function removeTile(streamId) {
  const tile = state.tiles.get(streamId);
  if (tile) { tile.fig.remove(); state.tiles.delete(streamId); }
}

// Messages are handled one at a time: an SFU offer may arrive right behind its answer.
let queue = Promise.resolve();
function enqueue(fn) { queue = queue.then(fn).catch((e) => { state.errors.push(String(e)); console.error(e); }); }

let local = null;
let send = () => false;
let leaving = false;
let restartTimer = null;

/** A new peer connection publishing `local`; returns after sending its offer. */
async function connectMedia(restart) {
  if (state.pc) state.pc.close();
  for (const id of [...state.tiles.keys()]) removeTile(id);
  const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
  state.pc = pc;
  for (const track of local.getTracks()) {
    pc.addTransceiver(track, { direction: "sendonly", streams: [local] });
  }
  // The room's data channel (relayed by the SFU to everyone admitted): raised hands. The sender
  // names itself; the server does not vouch for it, so nothing here is trusted beyond display.
  const dc = pc.createDataChannel("room");
  state.dc = dc;
  dc.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    state.dataMessages.push(msg);
    if (msg.type === "hand" && typeof msg.from === "string") {
      const tile = state.tiles.get(msg.from);
      if (tile) tile.fig.classList.toggle("hand", !!msg.raised);
    }
  };
  state.sendData = (msg) => dc.readyState === "open" && (dc.send(JSON.stringify({ ...msg, from: state.participant })), true);
  pc.ontrack = (ev) => {
    const streamId = ev.streams[0] ? ev.streams[0].id : ev.track.id;
    const tile = tileFor(streamId);
    tile.stream.addTrack(ev.track);
    ev.track.onended = () => tile.stream.removeTrack(ev.track);
  };
  pc.onconnectionstatechange = () => {
    if (pc !== state.pc) return;
    if (pc.connectionState === "connected") setStatus("Ansluten");
    if (pc.connectionState === "failed") scheduleRestart("Anslutningen bröts, ansluter igen…");
  };
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  send({ type: "offer", sdp: pc.localDescription.sdp, restart });
}

// Also reachable from the console and the tests: a fresh media session on demand.
state.reconnect = () => scheduleRestart("Ansluter igen…");

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

async function start() {
  if (!token) { setStatus("Länken saknar inbjudan (token)."); return; }
  try {
    local = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
  } catch (e) {
    setStatus("Kunde inte starta kamera eller mikrofon: " + e.message);
    return;
  }
  document.getElementById("local").srcObject = local;

  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws?token=${encodeURIComponent(token)}`);
  state.ws = ws;
  send = (msg) => ws.readyState === WebSocket.OPEN && (ws.send(JSON.stringify(msg)), true);

  ws.onopen = () => enqueue(() => connectMedia(false));
  ws.onclose = (ev) => {
    if (ev.code !== 1000) setStatus("Förbindelsen till servern stängdes.");
  };
  ws.onmessage = (ev) => enqueue(async () => {
    const msg = JSON.parse(ev.data);
    const pc = state.pc;
    switch (msg.type) {
      case "welcome":
        state.participant = msg.participant;
        document.getElementById("local-name").textContent = msg.name + " (du)";
        for (const p of msg.participants) state.names.set(p.participant, p.name);
        setStatus("Ansluter media…");
        break;
      case "participant_joined":
        state.names.set(msg.participant, msg.name);
        break;
      case "participant_left":
        removeTile(msg.participant);
        break;
      case "answer":
        // An answer meant for a session already replaced finds no offer of ours: dropped.
        if (pc.signalingState !== "have-local-offer") break;
        await pc.setRemoteDescription({ type: "answer", sdp: msg.sdp });
        break;
      case "offer": {
        // An SFU offer for the replaced session, arriving while the new one's own offer is
        // out, is dropped: the new session's offers come after its answer.
        if (pc.signalingState === "have-local-offer") break;
        state.offers += 1;
        await pc.setRemoteDescription({ type: "offer", sdp: msg.sdp });
        const answer = await pc.createAnswer();
        await pc.setLocalDescription(answer);
        send({ type: "answer", sdp: pc.localDescription.sdp });
        for (const [id, tile] of state.tiles) tile.cap.textContent = state.names.get(id) || "Deltagare";
        break;
      }
      case "active_speaker":
        for (const [id, tile] of state.tiles) tile.fig.classList.toggle("speaking", id === msg.participant);
        break;
      case "media_disconnected":
        // May concern a session already replaced: only a connection that is not (getting)
        // up is restarted.
        if (!pc || !["new", "connecting", "connected"].includes(pc.connectionState)) {
          scheduleRestart("Mediaanslutningen avbröts, ansluter igen…");
        }
        break;
      case "error":
        if (msg.code === "restart_too_soon") {
          setTimeout(() => state.reconnect(), 5000);
          break;
        }
        state.errors.push(msg.code + ": " + msg.message);
        console.warn("server error", msg);
        break;
    }
  });

  document.getElementById("mic").onclick = (ev) => {
    const t = local.getAudioTracks()[0];
    t.enabled = !t.enabled;
    ev.target.setAttribute("aria-pressed", String(!t.enabled));
    ev.target.textContent = t.enabled ? "Stäng av mikrofon" : "Slå på mikrofon";
  };
  document.getElementById("cam").onclick = (ev) => {
    const t = local.getVideoTracks()[0];
    t.enabled = !t.enabled;
    ev.target.setAttribute("aria-pressed", String(!t.enabled));
    ev.target.textContent = t.enabled ? "Stäng av kamera" : "Slå på kamera";
  };
  let handRaised = false;
  document.getElementById("hand").onclick = (ev) => {
    handRaised = !handRaised;
    ev.target.setAttribute("aria-pressed", String(handRaised));
    state.sendData({ type: "hand", raised: handRaised });
  };
  document.getElementById("leave").onclick = () => {
    leaving = true;
    send({ type: "leave" });
    ws.close(1000);
    if (state.pc) state.pc.close();
    local.getTracks().forEach((t) => t.stop());
    setStatus("Du har lämnat mötet.");
  };
}

start();
