// Firefox as a second real browser (Debian's firefox-esr, driven over WebDriver BiDi with
// puppeteer-core), stock, with no SDP rewriting in the page: Firefox ↔ Chromium both ways
// (either browser the clinician's),
// Firefox publishing simulcast with the receiver switching layers,
// back to the lobby and re-admitted, and Firefox ↔ Firefox. Firefox gathers no loopback
// candidate, so the service listens on a non-loopback address (one end of a veth pair).
import { test } from "node:test";
import assert from "node:assert/strict";
import puppeteer from "puppeteer-core";
import { startSignaling, launchChromium, inboundStats, waitFor, admitFirst, videoStats } from "./harness.mjs";
import { hostAddress } from "./netns.mjs";

const firefoxBin = process.env.FIREFOX_BIN || "/usr/bin/firefox-esr";

/** Headless Firefox with a fake camera and microphone and no permission prompt. */
async function launchFirefox() {
  return puppeteer.launch({
    browser: "firefox",
    executablePath: firefoxBin,
    headless: true,
    extraPrefsFirefox: {
      "media.navigator.streams.fake": true,
      "media.navigator.permission.disabled": true,
      // Plain http on a veth address: camera and WebRTC as on https.
      "media.devices.insecure.enabled": true,
      "media.getusermedia.insecure.enabled": true,
    },
  });
}

async function decodes(page, name, more = 30) {
  const before = (await inboundStats(page))?.video.framesDecoded || 0;
  return waitFor(async () => {
    const s = await inboundStats(page);
    return { ok: s && s.video.framesDecoded > before + more && s.audio.packetsReceived > 20, s };
  }, { timeout: 45000, what: `${name} decoding` }).catch(async (e) => {
    const state = await page.evaluate(async () => {
      const pc = window.hcState.pc;
      const c = [];
      if (pc) (await pc.getStats()).forEach((x) => { if (x.type.endsWith("candidate") || x.type === "candidate-pair") c.push([x.type, x.address, x.port, x.protocol, x.state]); });
      return { errors: window.hcState.errors, view: window.hcState.view, conn: pc && pc.connectionState,
        ice: pc && pc.iceConnectionState, sig: pc && pc.signalingState, c };
    }).catch((err) => String(err));
    throw new Error(`${e.message}\npage: ${JSON.stringify(state)}`);
  });
}

async function errors(page) {
  return page.evaluate(() => window.hcState.errors);
}

/** The service on veth address `subnet`, a Chromium and a Firefox; the clinician's page in
 * `clinicianIn` ("chromium" or "firefox"), the patient's in the other, both opened. */
async function mixedCall(subnet, clinicianIn, closers) {
  const net = hostAddress(subnet);
  closers.push(async () => net.remove());
  const server = await startSignaling(["--advertise-ip", net.ip], { listen: `${net.ip}:0` });
  closers.push(async () => server.child.kill("SIGTERM"));
  const chromium = await launchChromium([`--unsafely-treat-insecure-origin-as-secure=${server.base}`]);
  closers.push(() => chromium.close());
  const firefox = await launchFirefox();
  closers.push(() => firefox.close());
  const chromiumPage = await (await chromium.newContext()).newPage();
  const firefoxPage = await firefox.newPage();
  const [clinician, patient] = clinicianIn === "firefox" ? [firefoxPage, chromiumPage] : [chromiumPage, firefoxPage];
  await clinician.goto(server.clinician);
  await patient.goto(server.patient);
  return { server, clinician, patient };
}

test("Firefox ↔ Chromium: both decode, and after back to the lobby and re-admit, both decode again", { timeout: 180000 }, async () => {
  const closers = [];
  try {
    const { clinician, patient } = await mixedCall(51, "chromium", closers);
    await admitFirst(clinician);
    await decodes(patient, "Firefox (patient)");
    await decodes(clinician, "Chromium (clinician)");

    // Back to the lobby: the SFU stops the lines both ways (Firefox gets an offer with stopped
    // sections), then the patient is admitted again.
    await clinician.waitForSelector("#people button.to-lobby", { timeout: 15000 });
    await clinician.click("#people button.to-lobby");
    await waitFor(async () => ({ ok: await patient.evaluate(() => window.hcState.view === "waiting") }),
      { timeout: 15000, what: "Firefox back in the waiting room" });
    await admitFirst(clinician);
    await waitFor(async () => ({ ok: await patient.evaluate(() => window.hcState.view === "meeting") }),
      { timeout: 15000, what: "Firefox admitted again" });
    await decodes(patient, "Firefox after re-admit");
    await decodes(clinician, "Chromium after re-admit");
    assert.deepEqual(await errors(patient), [], "no errors in the Firefox page");
    assert.deepEqual(await errors(clinician), []);
  } finally {
    for (const c of closers.reverse()) await c().catch(() => {});
  }
});

// The other way round: Firefox is the clinician's browser, and its page admits, sends back to
// the lobby and admits again a patient on Chromium.
test("Chromium ↔ Firefox: a clinician on Firefox admits, sends back and re-admits a patient on Chromium", { timeout: 180000 }, async () => {
  const closers = [];
  try {
    const { clinician, patient } = await mixedCall(55, "firefox", closers);
    await clinician.waitForSelector("#lobby-list button.admit", { timeout: 30000 });
    await clinician.click("#lobby-list button.admit");
    await decodes(patient, "Chromium (patient)");
    await decodes(clinician, "Firefox (clinician)");
    await clinician.waitForSelector("#people button.to-lobby", { timeout: 15000 });
    await clinician.click("#people button.to-lobby");
    await waitFor(async () => ({ ok: await patient.evaluate(() => window.hcState.view === "waiting") }),
      { timeout: 15000, what: "the Chromium patient back in the waiting room" });
    await clinician.waitForSelector("#lobby-list button.admit", { timeout: 30000 });
    await clinician.click("#lobby-list button.admit");
    await decodes(patient, "Chromium after re-admit");
    await decodes(clinician, "Firefox after re-admit");
    assert.deepEqual(await errors(patient), []);
    assert.deepEqual(await errors(clinician), [], "no errors in the Firefox page");
  } finally {
    for (const c of closers.reverse()) await c().catch(() => {});
  }
});

test("Firefox ↔ Firefox: both decode each other", { timeout: 150000 }, async () => {
  const net = hostAddress(52);
  let server;
  const closers = [];
  try {
    server = await startSignaling(["--advertise-ip", net.ip], { listen: `${net.ip}:0` });
    const a = await launchFirefox();
    closers.push(() => a.close());
    const b = await launchFirefox();
    closers.push(() => b.close());
    const clinician = await a.newPage();
    const patient = await b.newPage();
    await clinician.goto(server.clinician);
    await patient.goto(server.patient);
    await clinician.waitForSelector("#lobby-list button.admit", { timeout: 30000 });
    await clinician.click("#lobby-list button.admit");
    await decodes(patient, "Firefox patient");
    await decodes(clinician, "Firefox clinician");
    assert.deepEqual(await errors(patient), []);
    assert.deepEqual(await errors(clinician), []);
  } finally {
    for (const c of closers.reverse()) await c().catch(() => {});
    if (server) server.child.kill("SIGTERM");
    net.remove();
  }
});

test("Firefox publishes simulcast: the Chromium receiver moves to the low layer and back with data saving", { timeout: 150000 }, async () => {
  const closers = [];
  try {
    const { clinician, patient } = await mixedCall(53, "chromium", closers);
    await admitFirst(clinician);
    // Firefox sends its 640×480 fake camera as two layers, as the page asks of any browser.
    const sending = await waitFor(async () => {
      const s = await videoStats(patient);
      const rids = Object.keys(s.sent).sort().join(",");
      return { ok: rids === "h,l" && s.sent.l.bytes > 20000 && s.sent.h.bytes > 20000, s };
    }, { timeout: 45000, what: "Firefox sending two simulcast layers" });
    const top = await waitFor(async () => {
      const s = await videoStats(clinician);
      return { ok: s.width === sending.s.sent.h.width && s.frames > 30, s };
    }, { timeout: 30000, what: "the clinician decoding Firefox's top layer" });
    await clinician.click("#save-data");
    const switchedAt = Date.now();
    const low = await waitFor(async () => {
      const s = await videoStats(clinician);
      return { ok: s.width === sending.s.sent.l.width, s };
    }, { timeout: 15000, interval: 100, what: "the clinician receiving Firefox's low layer" });
    const took = Date.now() - switchedAt;
    await waitFor(async () => {
      const s = await videoStats(clinician);
      return { ok: s.frames > low.s.frames + 30, s };
    }, { timeout: 15000, what: "the clinician decoding on after the switch" });
    // Nobody receives Firefox's top layer now: after a few seconds the SFU asks it to stop
    // encoding that layer (dynacast), and it does; asked for again, it comes back.
    await waitFor(async () => {
      const paused = await patient.evaluate(() => [...window.hcState.pausedRids.values()].flatMap((r) => [...r]));
      return { ok: paused.includes("h"), paused };
    }, { timeout: 15000, what: "Firefox told to pause its top layer" });
    const before = await videoStats(patient);
    await new Promise((r) => setTimeout(r, 1500));
    const after = await videoStats(patient);
    assert.ok(after.sent.h.bytes - before.sent.h.bytes < 1000, "Firefox stopped encoding its top layer");
    assert.ok(after.sent.l.bytes - before.sent.l.bytes > 5000, "and goes on with its low one");
    await clinician.click("#save-data");
    await waitFor(async () => {
      const s = await videoStats(clinician);
      return { ok: s.width === sending.s.sent.h.width, s };
    }, { timeout: 15000, what: "the clinician back on Firefox's top layer" });
    console.log(`Firefox simulcast: down-switch seen after ${took} ms (layers ${sending.s.sent.l.width}/${sending.s.sent.h.width})`);
    assert.ok(top.s.width > low.s.width);
    assert.deepEqual(await errors(patient), []);
    assert.deepEqual(await errors(clinician), []);
  } finally {
    for (const c of closers.reverse()) await c().catch(() => {});
  }
});
