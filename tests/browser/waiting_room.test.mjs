// The waiting room in real browsers: a patient waits (and, forced to send, has every packet
// dropped by the SFU), the clinician admits them and both decode video; a second patient is
// denied and sees it; a shared screen comes and goes; "end meeting" disconnects everyone.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import path from "node:path";
import { startSignaling, launchChromium, inboundStats, waitFor, bookVisit, metric, admitFirst, signalingBin } from "./harness.mjs";

const view = (page) => page.evaluate(() => window.hcState.view);

test("waiting room: isolation until admitted, admit, deny, end meeting", { timeout: 150000 }, async () => {
  const server = await startSignaling();
  const browser = await launchChromium();
  try {
    const { links } = await bookVisit(server, {
      clinician: { sub: "doc-77", name: "Dr Cecilia Berg", role: "clinician", hsa: "SE2321000016-C77" },
      patient: { sub: "pat-31", name: "Anna Patient", role: "patient" },
      other: { sub: "pat-32", name: "Bo Obokad", role: "patient" },
    });
    const doctor = await (await browser.newContext()).newPage();
    const patient = await (await browser.newContext()).newPage();
    const other = await (await browser.newContext()).newPage();

    // The patient waits: the waiting view with their place, their media session up.
    await patient.goto(links.patient);
    await waitFor(async () => ({ ok: (await view(patient)) === "waiting" }), { what: "the waiting view" });
    await waitFor(async () => {
      const s = await patient.evaluate(() => ({ pos: document.getElementById("position").textContent,
        conn: window.hcState.pc && window.hcState.pc.connectionState }));
      return { ok: s.pos.includes("1") && s.conn === "connected", s };
    }, { what: "the patient's place in the queue and a connected media session" });

    // A tampered client sends camera and microphone anyway; the clinician is in the meeting.
    await patient.evaluate(() => window.hcState.forceSendWhileWaiting());
    const blockedBefore = await metric(server, "sfu_dropped_blocked_total");
    await doctor.goto(links.clinician);
    await doctor.waitForSelector("#lobby-list li", { timeout: 30000 });
    const lobbyText = await doctor.textContent("#lobby-list");
    assert.match(lobbyText, /Anna Patient \(Patient\)/);
    await waitFor(async () => {
      const c = await doctor.evaluate(() => window.hcState.pc && window.hcState.pc.connectionState);
      return { ok: c === "connected", c };
    }, { what: "the clinician's media session" });

    // For several seconds nothing flows either way, and the SFU counts the patient's packets
    // as blocked.
    await new Promise((r) => setTimeout(r, 4000));
    const d = await inboundStats(doctor);
    const p = await inboundStats(patient);
    assert.equal(d.video.packetsReceived + d.audio.packetsReceived, 0, "the clinician receives nothing from the lobby");
    assert.equal(p.video.packetsReceived + p.audio.packetsReceived, 0, "the waiting patient receives nothing");
    const blocked = await waitFor(async () => {
      const n = await metric(server, "sfu_dropped_blocked_total");
      return { ok: n > blockedBefore + 50, n };
    }, { what: "the SFU to count the waiting patient's packets as blocked" });
    assert.ok(blocked.n > blockedBefore);
    const peopleSeen = await patient.evaluate(() => [...window.hcState.names.values()]);
    assert.ok(!peopleSeen.includes("Dr Cecilia Berg"), "the lobby learns nothing of who is there");

    // Admit: both decode each other's video.
    await admitFirst(doctor);
    for (const [name, page] of [["clinician", doctor], ["patient", patient]]) {
      await waitFor(async () => {
        const s = await inboundStats(page);
        return { ok: s && s.video.framesDecoded > 30 && s.audio.packetsReceived > 20, s };
      }, { timeout: 45000, what: `${name} decoding after admission` });
    }
    assert.equal(await view(patient), "meeting");
    assert.match(await patient.textContent("#people"), /Dr Cecilia Berg/);

    // Chat between the two.
    await patient.fill("#chat-input", "Hej doktorn");
    await patient.click("#chat-form button");
    await waitFor(async () => ({ ok: (await doctor.textContent("#chat-log")).includes("Hej doktorn") }),
      { what: "the clinician reading the chat" });

    // The clinician shares a screen: the patient decodes a second video; stopping it ends that
    // track (the SFU answers the stopped m-line and renegotiates the patient's side).
    const decodingVideos = () => patient.evaluate(async () => {
      const rep = await window.hcState.pc.getStats();
      const seen = [];
      rep.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "video") seen.push(s.framesDecoded || 0); });
      return seen;
    });
    await doctor.click("#share");
    await waitFor(async () => {
      const v = await decodingVideos();
      return { ok: v.filter((f) => f > 10).length === 2, v };
    }, { what: "the patient decoding the shared screen" });
    await doctor.click("#share");
    await waitFor(async () => {
      const live = await patient.evaluate(() => window.hcState.pc.getTransceivers().filter((t) => t.currentDirection === "recvonly").length);
      const errors = await doctor.evaluate(() => window.hcState.errors);
      return { ok: live === 2 && errors.length === 0, live, errors };
    }, { what: "the screen share to end cleanly" });

    // A second patient is turned away and sees why.
    await other.goto(links.other);
    await doctor.waitForSelector("#lobby-list button.deny", { timeout: 30000 });
    await doctor.click("#lobby-list button.deny");
    await waitFor(async () => ({ ok: (await view(other)) === "ended" }), { what: "the denied patient's screen" });
    assert.equal(await other.textContent("#ended-title"), "Du släpptes inte in");
    assert.ok((await other.textContent("#ended-message")).length > 10);

    // End the visit (press twice to confirm): both are disconnected and told.
    await doctor.click("#end");
    await doctor.click("#end");
    for (const [name, page] of [["clinician", doctor], ["patient", patient]]) {
      const s = await waitFor(async () => {
        const st = await page.evaluate(() => ({ view: window.hcState.view, reason: window.hcState.closing && window.hcState.closing.reason,
          pc: window.hcState.pc && window.hcState.pc.connectionState }));
        return { ok: st.view === "ended" && st.reason === "meeting_ended" && st.pc === "closed", st };
      }, { what: `${name} disconnected by the end of the visit` });
      assert.equal(s.st.reason, "meeting_ended");
    }
    assert.equal(await patient.textContent("#ended-title"), "Besöket är avslutat");

    // The audit log has the whole visit with the clinician's HSA-id on each action, and
    // verifies; no log holds SDP, an identity number or the chat text.
    await new Promise((r) => setTimeout(r, 500));
    const audit = readFileSync(server.auditPath, "utf8").trim().split("\n").map((l) => JSON.parse(l));
    const has = (event, sub) => audit.some((l) => l.event === event && (!sub || l.subject === sub));
    for (const [event, sub] of [["lobby_enter", "pat-31"], ["admit", "pat-31"], ["media_start", "pat-31"],
      ["media_start", "doc-77"], ["deny", "pat-32"], ["meeting_end", "doc-77"], ["media_stop", "pat-31"]]) {
      assert.ok(has(event, sub), `audit: ${event} of ${sub}`);
    }
    for (const l of audit.filter((l) => ["admit", "deny", "meeting_end"].includes(l.event))) {
      assert.equal(l.actor_hsa, "SE2321000016-C77", JSON.stringify(l));
    }
    const verify = spawnSync(signalingBin, ["audit", "verify", "--running", server.auditPath], { encoding: "utf8" });
    assert.equal(verify.status, 0, verify.stderr);
    const publicKey = spawnSync(signalingBin, ["audit", "public-key", "--key",
      path.join(path.dirname(server.auditPath), "audit-signing.key")], { encoding: "utf8" }).stdout.trim();
    const extract = spawnSync(signalingBin, ["audit", "extract", "--subject", "pat-31", "--public-key", publicKey,
      server.auditPath], { encoding: "utf8" });
    assert.equal(extract.status, 0, extract.stderr);
    assert.match(extract.stdout, /staff: SE2321000016-C77/);
    for (const [name, text] of [["audit", readFileSync(server.auditPath, "utf8")], ["service log", server.logs()], ["stdout", server.stdout()]]) {
      assert.ok(!/a=fingerprint|a=ice-pwd|m=video/.test(text), `no SDP in the ${name}`);
      assert.ok(!/\b(19|20)\d{6}[-+]?\d{4}\b/.test(text), `no identity-number pattern in the ${name}`);
      assert.ok(!text.includes("Hej doktorn"), `no chat text in the ${name}`);
    }
  } finally {
    await browser.close();
    server.child.kill("SIGTERM");
  }
});
