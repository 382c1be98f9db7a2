// Two headless Chromium pages join one meeting through the single-node default; each decodes
// the other's video and receives the other's audio.
import { test } from "node:test";
import { readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { signalingBin } from "./harness.mjs";
import assert from "node:assert/strict";
import { startSignaling, startCluster, launchChromium, inboundStats, waitFor, admitFirst, metric, mediaConnectTimes } from "./harness.mjs";

async function twoBrowserCall(server, browserArgs = []) {
  const browser = await launchChromium(browserArgs);
  try {
    const a = await (await browser.newContext()).newPage();
    const b = await (await browser.newContext()).newPage();
    await a.goto(server.clinician);
    await b.goto(server.patient);
    // The waiting room's check tells the patient that video reaches them directly (UDP).
    await waitFor(async () => {
      const text = await b.evaluate(() => document.getElementById("net-check").textContent);
      return { ok: text === "Anslutning: fungerar (direkt).", text };
    }, { timeout: 15000, what: "the connectivity check to say 'direkt'" });
    // The patient waits until the clinician admits them.
    await admitFirst(a);
    const admittedAt = Date.now();
    const first = await waitFor(async () => {
      const s = await inboundStats(b);
      return { ok: s && s.video.framesDecoded > 0, at: Date.now() };
    }, { timeout: 45000, interval: 50, what: "the patient's first frame" });
    for (const [name, page] of [["clinician", a], ["patient", b]]) {
      const stats = await waitFor(async () => {
        const s = await inboundStats(page);
        return { ok: s && s.video.framesDecoded > 30 && s.audio.packetsReceived > 20, s };
      }, { timeout: 45000, what: `${name} decoding remote media` }).catch(async (e) => {
        const errors = await page.evaluate(() => window.hcState && window.hcState.errors);
        throw new Error(`${e.message}\npage errors: ${JSON.stringify(errors)}\nserver log:\n${server.logs().slice(-4000)}`);
      });
      assert.ok(stats.s.video.framesDecoded > 30, `${name} decoded ${stats.s.video.framesDecoded} frames`);
      assert.ok(stats.s.audio.packetsReceived > 20, `${name} received audio`);
    }
    const joined = (await mediaConnectTimes(b)) || {};
    // (Node's fetch refuses the self-signed certificate of the https variant.)
    const held = server.base.startsWith("https:") ? "not read over https" : await metric(server, "sfu_dtls_held_until_proven_total");
    console.log(`UDP: media connected ${joined.fromOffer} ms after the offer (${joined.fromLoad} ms after the page loaded); admit → first frame decoded in ${first.at - admittedAt} ms; DTLS datagrams held until their address was proven: ${held}`);
    // A data channel message from one page reaches the other through the SFU, which names its
    // real sender: a claim to be someone else (here the clinician's page claiming to be the
    // patient) does not survive the relay.
    const patientId = await b.evaluate(() => window.hcState.participant);
    const spoofed = (id) => window.hcState.dc.readyState === "open"
      && (window.hcState.dc.send(JSON.stringify({ type: "hand", raised: true, from: id })), true);
    await waitFor(async () => ({ ok: await a.evaluate(spoofed, patientId) }),
      { timeout: 15000, what: "the clinician's data channel to open" });
    // Sent again each second until it arrives: the SFU relays to the channels open now, and
    // the patient's may open a moment after the clinician's (once seen in CI: the only copy
    // went out before it).
    const got = await waitFor(async () => {
      const msgs = await b.evaluate(() => window.hcState.dataMessages);
      const ok = msgs.some((m) => m.type === "hand" && m.raised === true);
      if (!ok) await a.evaluate(spoofed, patientId);
      return { ok, msgs };
    }, { timeout: 15000, interval: 1000, what: "the patient receiving the raised hand" });
    assert.equal(got.msgs[0].from, await a.evaluate(() => window.hcState.participant));
    // Objects JSON.parse reads but a strict parser does not (a lone surrogate, a number past a
    // double) are dropped, not passed on with the sender's own `from`: on the ordered channel
    // the marker sent after them arrives, and none of them before it.
    await a.evaluate((id) => {
      for (const odd of ['"\\ud800"', "1e400"]) {
        window.hcState.dc.send(`{"type":"hand","raised":true,"from":${JSON.stringify(id)},"x":${odd}}`);
      }
      window.hcState.dc.send(JSON.stringify({ type: "marker" }));
    }, patientId);
    const afterOdd = await waitFor(async () => {
      const msgs = await b.evaluate(() => window.hcState.dataMessages);
      return { ok: msgs.some((m) => m.type === "marker"), msgs };
    }, { timeout: 10000, what: "the marker after the odd objects" });
    assert.deepEqual(afterOdd.msgs.filter((m) => m.from === patientId), [], "an odd object passed on with a claimed sender");
    // A sender that floods the channel is relayed at the SFU's rate (a burst of 20, then 10 a
    // second), not at its own: the others' downlinks are for their video.
    await b.evaluate(() => {
      window.floodReceived = 0;
      window.hcState.dc.addEventListener("message", (e) => { if (e.data.includes('"flood"')) window.floodReceived++; });
    });
    const floodSent = await a.evaluate(() => {
      let n = 0;
      for (let i = 0; i < 200; i++) n += window.hcState.sendData({ type: "flood", n: i }) ? 1 : 0;
      return n;
    });
    await new Promise((r) => setTimeout(r, 3000));
    const floodReceived = await b.evaluate(() => window.floodReceived);
    console.log(`data channel flood: ${floodSent} sent at once, ${floodReceived} relayed within 3 s`);
    assert.equal(floodSent, 200);
    assert.ok(floodReceived >= 10 && floodReceived <= 50, `${floodReceived} of 200 relayed`);
    // The remote tile carries the other participant's media, not our own loopback.
    const tiles = await a.evaluate(() => [...window.hcState.tiles.keys()]);
    assert.equal(tiles.length, 1, "the clinician sees exactly one remote participant");
    assert.notEqual(tiles[0], await a.evaluate(() => window.hcState.participant));

    // The clinician's media session is rebuilt (as after a network switch): both sides decode
    // each other again, the old m-lines stopped and new ones added by renegotiation.
    await a.evaluate(() => window.hcState.reconnect());
    await waitFor(async () => {
      const s = await inboundStats(a);
      const restarts = await a.evaluate(() => window.hcState.restarts);
      return { ok: restarts === 1 && s && s.video.framesDecoded > 30, s, restarts };
    }, { timeout: 30000, what: "the clinician decoding again after reconnecting" });
    const bFrames = (await inboundStats(b)).video.framesDecoded;
    await waitFor(async () => {
      const s = await inboundStats(b);
      const live = await b.evaluate(() => window.hcState.pc.getTransceivers().filter((t) => t.currentDirection === "recvonly").length);
      return { ok: s.video.framesDecoded > bFrames + 30 && live === 2, s, live };
    }, { timeout: 30000, what: "the patient decoding the reconnected clinician" });

    // A second new session: the SFU's offer to the patient stops the lines of the first and
    // takes the lines stopped before for the new ones (m-line recycling): the patient's
    // browser accepts it and decodes, and its session does not grow by two lines each time.
    const restartsBefore = await a.evaluate(() => window.hcState.restarts);
    await a.evaluate(() => window.hcState.reconnect());
    await waitFor(async () => {
      const s = await inboundStats(a);
      const restarts = await a.evaluate(() => window.hcState.restarts);
      return { ok: restarts > restartsBefore && s && s.video.framesDecoded > 30, s, restarts };
    }, { timeout: 45000, what: "the clinician decoding again after a second reconnect" });
    const bFrames2 = (await inboundStats(b)).video.framesDecoded;
    const recycled = await waitFor(async () => {
      const s = await inboundStats(b);
      const live = await b.evaluate(() => window.hcState.pc.getTransceivers().filter((t) => t.currentDirection === "recvonly").length);
      return { ok: s.video.framesDecoded > bFrames2 + 30 && live === 2, s, live };
    }, { timeout: 30000, what: "the patient decoding the twice-reconnected clinician" });
    assert.equal(recycled.live, 2);
    if (!server.sfuLogs && server.base.startsWith("http:")) {
      // In-process SFU: its counters are on the service's metrics (read here over plain http).
      assert.ok(await metric(server, "sfu_lines_recycled_total") >= 2, "stopped m-lines were taken again");
    }

    // The patient leaves: the clinician's browser accepts the SFU's offer that stops those
    // m-lines, drops the tile and stays connected.
    await b.click("#leave");
    const after = await waitFor(async () => {
      const s = await a.evaluate(() => ({
        tiles: window.hcState.tiles.size,
        signaling: window.hcState.pc.signalingState,
        connection: window.hcState.pc.connectionState,
        errors: window.hcState.errors,
        offers: window.hcState.offers,
        // Stopped transceivers disappear; none is left receiving.
        receiving: window.hcState.pc.getTransceivers().filter((t) => t.currentDirection === "recvonly").length,
      }));
      return { ok: s.tiles === 0 && s.receiving === 0 && s.offers >= 2 && s.signaling === "stable", s };
    }, { timeout: 15000, what: "the clinician to process the patient's departure" });
    assert.deepEqual(after.s.errors, [], "no renegotiation errors");
    assert.equal(after.s.connection, "connected");

    // The visit is in the audit log, the chain verifies, and neither the log nor the service's
    // own logs carry SDP or anything shaped like a personal identity number.
    // A leave is recorded as it is carried out (the others may hear of it a moment earlier).
    const { audit } = await waitFor(async () => {
      const text = readFileSync(server.auditPath, "utf8");
      return { ok: text.includes('"event":"join"') && text.includes('"event":"leave"'), audit: text };
    }, { timeout: 5000, what: "joins and leaves audited" });
    const verify = spawnSync(signalingBin, ["audit", "verify", "--running", server.auditPath], { encoding: "utf8" });
    assert.equal(verify.status, 0, verify.stderr);
    const logs = [["audit log", audit], ["service log", server.logs()]];
    if (server.sfuLogs) logs.push(["sfu node log", server.sfuLogs()]);
    for (const [name, text] of logs) {
      assert.ok(!/a=fingerprint|a=ice-pwd|m=video/.test(text), `no SDP in the ${name}`);
      assert.ok(!/\b(19|20)\d{6}[-+]?\d{4}\b/.test(text), `no identity-number pattern in the ${name}`);
    }
  } finally {
    await browser.close();
  }
}

test("two browsers decode each other's video through the single-node default", { timeout: 120000 }, async () => {
  const server = await startSignaling();
  try {
    await twoBrowserCall(server);
  } finally {
    server.child.kill("SIGTERM");
  }
});

test("a call works over https with a self-signed certificate (phones on a LAN)", { timeout: 120000 }, async () => {
  const server = await startSignaling(["--tls-self-signed"]);
  try {
    assert.ok(server.clinician.startsWith("https://"), server.clinician);
    // A phone's user accepts the certificate once; the headless browser is told to.
    await twoBrowserCall(server, ["--ignore-certificate-errors"]);
  } finally {
    server.child.kill("SIGTERM");
  }
});

test("a call works through a standalone sfu process driven over QUIC", { timeout: 120000 }, async () => {
  const cluster = await startCluster();
  try {
    await twoBrowserCall(cluster);
  } finally {
    cluster.stop();
  }
});

// People who open their link while no SFU node is up (a node restarting, signaling back before
// its nodes) get `sfu_refused` for their first offers: the page keeps trying, and the call
// starts once a node has registered — without anyone reloading.
test("a page whose offers were refused while no SFU node was up retries and connects when one registers", { timeout: 150000 }, async () => {
  const cluster = await startCluster({ node: false });
  const browser = await launchChromium();
  try {
    const a = await (await browser.newContext()).newPage();
    const b = await (await browser.newContext()).newPage();
    await a.goto(cluster.clinician);
    await b.goto(cluster.patient);
    await admitFirst(a);
    await waitFor(async () => {
      const errors = await a.evaluate(() => window.hcState.errors);
      return { ok: errors.some((e) => e.startsWith("sfu_refused")), errors };
    }, { timeout: 20000, what: "the clinician's offer refused" });
    await new Promise((r) => setTimeout(r, 3000));
    await cluster.startNode();
    const started = Date.now();
    for (const [name, page] of [["clinician", a], ["patient", b]]) {
      await waitFor(async () => {
        const s = await inboundStats(page);
        return { ok: s && s.video.framesDecoded > 30, s };
      }, { timeout: 45000, what: `${name} decoding once a node is up` }).catch(async (e) => {
        const errors = await page.evaluate(() => window.hcState.errors);
        throw new Error(`${e.message}\npage errors: ${JSON.stringify(errors)}\nserver log:\n${cluster.logs().slice(-3000)}`);
      });
    }
    console.log(`node registered → both decoding in ${Date.now() - started} ms`);
  } finally {
    await browser.close();
    cluster.stop();
  }
});
