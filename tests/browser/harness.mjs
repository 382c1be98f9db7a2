// Shared helpers: start `signaling serve --dev` and read its join URLs; launch Chromium.
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const targetDir = process.env.CARGO_TARGET_DIR || path.resolve(import.meta.dirname, "../../target");
export const signalingBin = process.env.SIGNALING_BIN || path.join(targetDir, "debug", "signaling");
export const sfuBin = process.env.SFU_BIN || path.join(targetDir, "debug", "sfu");

/** Starts the single-node default on ephemeral ports; resolves with its URLs and process.
 * `keyDir` holds the dev issuer's key and the audit log: the same one again is the same
 * service restarted (its tokens still valid). `bin` is another build of the service (benchmarks
 * compare two). */
export function startSignaling(extraArgs = [], { embedded = true, listen = "127.0.0.1:0", cwd, env = {}, keyDir = mkdtempSync(path.join(tmpdir(), "hc-dev-")), bin = signalingBin } = {}) {
  const child = spawn(bin, ["serve", "--dev", "--dev-key", path.join(keyDir, "issuer.key"),
    "--audit-log", path.join(keyDir, "audit.jsonl"),
    "--listen", listen, ...(embedded ? ["--workers", "1"] : []), ...extraArgs], {
    stdio: ["ignore", "pipe", "pipe"], cwd,
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info", ...env },
  });
  let logs = "";
  child.stderr.on("data", (d) => { logs += d; });
  return new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error("signaling did not print join URLs:\n" + out + logs)), 20000);
    child.on("exit", (code) => reject(new Error(`signaling exited with ${code}:\n${out}${logs}`)));
    child.stdout.on("data", (d) => {
      out += d;
      const clinician = out.match(/clinician: (\S+)/);
      const patient = out.match(/patient:\s+(\S+)/);
      const control = out.match(/SFU control listening on (\S+)/);
      const apiKey = out.match(/API key: ([^)\s]+)/);
      if (clinician && patient && apiKey && (embedded || control)) {
        clearTimeout(timer);
        const base = new URL(clinician[1]).origin;
        resolve({ child, clinician: clinician[1], patient: patient[1], base, control: control && control[1],
          apiKey: apiKey[1], logs: () => logs, stdout: () => out, auditPath: path.join(keyDir, "audit.jsonl") });
      }
    });
  });
}

export const chromiumBin = process.env.CHROMIUM_BIN || "/usr/lib/chromium/chromium";

/** Headless Chromium; `executablePath` may be a wrapper (one that enters a network namespace). */
export async function launchChromium(extraArgs = [], { executablePath = chromiumBin } = {}) {
  const browser = await chromium.launch({
    executablePath,
    args: [...extraArgs,
      "--no-sandbox", "--disable-gpu", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
      "--allow-loopback-in-peer-connection", "--disable-background-networking", "--disable-component-update",
      "--no-first-run", "--disable-sync", "--disable-quic",
    ],
  });
  // Pages are Swedish, as most patients' browsers are here; a test of another language gives
  // its context a `locale`.
  const newContext = browser.newContext.bind(browser);
  browser.newContext = (options = {}) => newContext({ locale: "sv-SE", ...options });
  return browser;
}

/** Inbound RTP stats of a page's peer connection, summed per kind. */
export async function inboundStats(page) {
  return page.evaluate(async () => {
    const pc = window.hcState && window.hcState.pc;
    if (!pc) return null;
    const report = await pc.getStats();
    const res = { video: { framesDecoded: 0, packetsReceived: 0, packetsLost: 0 }, audio: { packetsReceived: 0 } };
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        res.video.framesDecoded += s.framesDecoded || 0;
        res.video.packetsReceived += s.packetsReceived || 0;
        res.video.packetsLost += s.packetsLost || 0;
      }
      if (s.type === "inbound-rtp" && s.kind === "audio") res.audio.packetsReceived += s.packetsReceived || 0;
    });
    return res;
  });
}

/** Outbound video per RID, and the received video's size, progress and freezes. */
export async function videoStats(page) {
  return page.evaluate(async () => {
    const report = await window.hcState.pc.getStats();
    const res = { sent: {}, width: 0, frames: 0, lost: 0, freezes: 0, frozen: 0 };
    report.forEach((s) => {
      if (s.type === "outbound-rtp" && s.kind === "video") res.sent[s.rid || "-"] = { bytes: s.bytesSent, width: s.frameWidth };
      if (s.type === "inbound-rtp" && s.kind === "video") {
        res.width = s.frameWidth || 0;
        res.frames += s.framesDecoded || 0;
        res.lost += s.packetsLost || 0;
        res.freezes += s.freezeCount || 0;
        res.frozen += s.totalFreezesDuration || 0;
      }
    });
    return res;
  });
}

export async function waitFor(fn, { timeout = 30000, interval = 250, what = "condition" } = {}) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    last = await fn();
    if (last && last.ok) return last;
    await new Promise((r) => setTimeout(r, interval));
  }
  throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last)}`);
}

/** Signaling in remote mode plus a standalone `sfu` process dialling it over QUIC (with
 * `{ node: false }` none yet: `startNode()` starts it). */
export async function startCluster({ node = true } = {}) {
  const dir = mkdtempSync(path.join(tmpdir(), "hc-cluster-"));
  await new Promise((resolve, reject) => {
    const p = spawn(signalingBin, ["cluster-certs", "--out", dir], { stdio: "ignore" });
    p.on("exit", (code) => (code === 0 ? resolve() : reject(new Error("cluster-certs failed"))));
  });
  const server = await startSignaling([
    "--sfu-mode", "remote", "--sfu-listen", "127.0.0.1:0",
    "--cluster-ca", path.join(dir, "ca.pem"), "--cluster-cert", path.join(dir, "signaling.pem"),
    "--cluster-key", path.join(dir, "signaling.key"),
  ], { embedded: false });
  let sfuLogs = "";
  let sfu = null;
  const startNode = async () => {
    sfu = spawn(sfuBin, ["--signaling", server.control, "--cluster-ca", path.join(dir, "ca.pem"),
      "--cluster-cert", path.join(dir, "sfu.pem"), "--cluster-key", path.join(dir, "sfu.key"),
      "--bind-ip", "127.0.0.1", "--advertise-ip", "127.0.0.1", "--workers", "1", "--node-id", "sfu"],
      { stdio: ["ignore", "ignore", "pipe"] });
    sfu.stderr.on("data", (d) => { sfuLogs += d; });
    await waitFor(async () => {
      const r = await fetch(server.base + "/readyz").catch(() => null);
      return { ok: r && r.status === 200, status: r && r.status };
    }, { timeout: 20000, what: "the SFU node to register" }).catch((e) => {
      throw new Error(e.message + "\nsfu log:\n" + sfuLogs + "\nsignaling log:\n" + server.logs());
    });
  };
  if (node) await startNode();
  return {
    ...server, startNode, sfuLogs: () => sfuLogs,
    stop() { if (sfu) sfu.kill("SIGTERM"); server.child.kill("SIGTERM"); },
  };
}

/**
 * Runs `fn({ server, browser })` with a fresh `signaling serve --dev` (`args`, `options` as for
 * startSignaling) and a headless Chromium, and ends both however `fn` ends.
 */
export async function withServerAndBrowser(fn, { args = [], options = {} } = {}) {
  const server = await startSignaling(args, options);
  const browser = await launchChromium().catch((e) => { server.child.kill("SIGTERM"); throw e; });
  try {
    return await fn({ server, browser });
  } finally {
    await browser.close();
    server.child.kill("SIGTERM");
  }
}

/** Books a visit open now through the meetings API and mints a join link per person. */
export async function bookVisit(server, people, { id = `visit-${Date.now()}`, kind = "visit" } = {}) {
  const api = async (p, body) => {
    const r = await fetch(server.base + p, {
      method: "POST", headers: { authorization: `Bearer ${server.apiKey}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const json = await r.json();
    if (!r.ok) throw new Error(`${p}: ${r.status} ${JSON.stringify(json)}`);
    return json;
  };
  const now = Date.now();
  await api("/api/v1/meetings", { id, unit: "unit-1", kind,
    start: new Date(now - 60000).toISOString(), end: new Date(now + 3600000).toISOString() });
  const links = {};
  for (const [key, p] of Object.entries(people)) {
    links[key] = (await api(`/api/v1/meetings/${id}/tokens`, p)).url;
  }
  return { id, links };
}

/** The token of a link: in its fragment (`#token=`, as minted) or an older link's query. */
export function linkToken(link) {
  const u = new URL(link);
  return new URLSearchParams(u.hash.slice(1)).get("token") || u.searchParams.get("token");
}

/** Reads one counter from the service's Prometheus endpoint (summed over labels). */
export async function metric(server, name) {
  const text = await (await fetch(server.base + "/metrics")).text();
  let sum = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name + " ") || line.startsWith(name + "{")) sum += Number(line.split(" ").pop());
  }
  return sum;
}

/** The clinician's page admits the first person in its lobby panel. */
export async function admitFirst(page) {
  await page.waitForSelector("#lobby-list button.admit", { timeout: 30000 });
  await page.click("#lobby-list button.admit");
}

/** The page's selected candidate pair: both candidates' address, protocol and type. */
export async function selectedPair(page) {
  return page.evaluate(async () => {
    const report = await window.hcState.pc.getStats();
    let pair = null;
    report.forEach((s) => { if (s.type === "transport" && s.selectedCandidatePairId) pair = report.get(s.selectedCandidatePairId); });
    if (!pair) return null;
    const side = (c) => c && ({ address: c.address || c.ip, protocol: c.protocol, type: c.candidateType,
      relayProtocol: c.relayProtocol, tcpType: c.tcpType });
    return { local: side(report.get(pair.localCandidateId)), remote: side(report.get(pair.remoteCandidateId)) };
  });
}

/** How long the page's media session took to connect (ICE and DTLS on its path): from its
 * first offer, and from the page's load (which includes the device check and the join). */
export async function mediaConnectTimes(page) {
  return page.evaluate(() => {
    const s = window.hcState;
    const c = s.iceStates.find(([, what]) => what === "connected");
    if (!c) return null;
    return { fromOffer: c[0], fromLoad: Math.round(s.sessionStartedAt + c[0] - performance.timeOrigin) };
  });
}

/**
 * A clinician's Chromium on this host and a patient's in network namespace `ns` (`patientArgs`
 * added), both on `server` (plain http on a veth address, treated as secure), pages opened on
 * their links. `close()` ends both browsers.
 */
export async function clinicianAndNamespacedPatient(server, ns, { patientArgs = [], links } = {}) {
  const secure = [`--unsafely-treat-insecure-origin-as-secure=${server.base}`];
  const host = await launchChromium(secure);
  const inNs = await launchChromium([...secure, ...patientArgs], { executablePath: ns.wrapper(chromiumBin) }).catch(async (e) => {
    await host.close();
    throw e;
  });
  const clinician = await (await host.newContext()).newPage();
  const patient = await (await inNs.newContext()).newPage();
  await clinician.goto((links || server).clinician);
  await patient.goto((links || server).patient);
  return { clinician, patient, host, inNs, async close() { await inNs.close().catch(() => {}); await host.close().catch(() => {}); } };
}
