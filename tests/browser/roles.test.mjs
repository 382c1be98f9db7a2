// Roles in real browsers: an interpreter who chooses voice alone (with the keyboard) is let in
// before the patient, shown as "Tolk" and heard with no picture; the patient and their
// companion come in with one press; a consultant invited from the clinician's panel joins by
// the link it gives.
import { test } from "node:test";
import assert from "node:assert/strict";
import { withServerAndBrowser, inboundStats, waitFor, bookVisit, linkToken } from "./harness.mjs";

/** The inbound audio packets and video frames of one remote participant's tile. */
async function fromParticipant(page, id) {
  return page.evaluate(async (id) => {
    const tile = window.hcState.tiles.get(id);
    if (!tile) return null;
    const audio = tile.stream.getAudioTracks().map((t) => t.id);
    const video = tile.stream.getVideoTracks().map((t) => t.id);
    const report = await window.hcState.pc.getStats();
    let audioPackets = 0;
    let frames = 0;
    report.forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      if (audio.includes(s.trackIdentifier)) audioPackets += s.packetsReceived || 0;
      if (video.includes(s.trackIdentifier)) frames += s.framesDecoded || 0;
    });
    return { audioTracks: audio.length, videoTracks: video.length, audioPackets, frames };
  }, id);
}

test("interpreter by voice first, patient with companion, consultant by invitation", { timeout: 180000 }, async () => {
  await withServerAndBrowser(async ({ server, browser }) => {
    const { links } = await bookVisit(server, {
      clinician: { sub: "doc-1", name: "Dr Berg", role: "clinician", hsa: "SE2321000016-DOC1" },
      patient: { sub: "pat-1", name: "Anna", role: "patient" },
      companion: { sub: "rel-1", name: "Bo", role: "companion", companion_of: "pat-1" },
      interpreter: { sub: "tolk-1", name: "Ali", role: "interpreter" },
    });
    // Every URL each page puts on the wire (requests without their fragment, WebSockets): a
    // proxy's access log holds these, so no link's token nor resume key may be among them.
    const onWire = [];
    const page = async (url) => {
      const p = await (await browser.newContext()).newPage();
      p.on("request", (r) => onWire.push(r.url().split("#")[0]));
      p.on("websocket", (ws) => onWire.push(ws.url()));
      await p.goto(url);
      return p;
    };
    const clinician = await page(links.clinician);
    const patient = await page(links.patient);
    const companion = await page(links.companion);

    // The interpreter is asked how to take part, and picks voice alone with the keyboard.
    const interpreter = await page(links.interpreter);
    await interpreter.waitForSelector("#media-choice:not([hidden])", { timeout: 20000 });
    assert.equal(await interpreter.evaluate(() => document.activeElement.id), "choose-video");
    await interpreter.keyboard.press("Tab");
    assert.equal(await interpreter.evaluate(() => document.activeElement.id), "choose-audio");
    await interpreter.keyboard.press("Enter");
    await waitFor(async () => ({ ok: await interpreter.evaluate(() => window.hcState.participant !== null) }),
      { timeout: 20000, what: "the interpreter to join" });
    const alone = await interpreter.evaluate(() => ({
      audioOnly: window.hcState.audioOnly, camHidden: document.getElementById("cam").hidden,
      sending: window.hcState.senders.map((s) => s.track.kind),
    }));
    assert.deepEqual(alone, { audioOnly: true, camHidden: true, sending: ["audio"] });

    // The clinician's lobby: the companion shown with Anna, the interpreter as "Tolk".
    const ids = {};
    for (const [name, p] of [["patient", patient], ["companion", companion], ["interpreter", interpreter]]) {
      ids[name] = await p.evaluate(() => window.hcState.participant);
    }
    await waitFor(async () => ({ ok: (await clinician.$$("#lobby-list li")).length === 3 }),
      { timeout: 20000, what: "three people in the clinician's lobby" });
    const label = async (id) => clinician.textContent(`#lobby-list li[data-participant="${id}"] span`);
    assert.match(await label(ids.interpreter), /^Ali \(Tolk\)/);
    assert.match(await label(ids.companion), /^Bo \(Anhörig, med Anna\)/);

    // The interpreter first; the patient still waits.
    await clinician.click(`#lobby-list li[data-participant="${ids.interpreter}"] button.admit`);
    await waitFor(async () => ({ ok: await interpreter.evaluate(() => window.hcState.admitted) }),
      { timeout: 15000, what: "the interpreter admitted" });
    assert.equal(await patient.evaluate(() => window.hcState.admitted), false, "the patient still waits");

    // Heard, not seen: the clinician gets the interpreter's voice and no picture; the
    // interpreter sees and hears the clinician.
    const heard = await waitFor(async () => {
      const s = await fromParticipant(clinician, ids.interpreter);
      return { ok: s && s.audioPackets > 50, s };
    }, { timeout: 30000, what: "the clinician hearing the interpreter" });
    assert.equal(heard.s.videoTracks, 0, "no picture of an interpreter by voice");
    await waitFor(async () => {
      const s = await inboundStats(interpreter);
      return { ok: s && s.video.framesDecoded > 30 && s.audio.packetsReceived > 20, s };
    }, { timeout: 30000, what: "the interpreter seeing and hearing the clinician" });
    const people = await clinician.textContent("#people");
    assert.match(people, /Ali \(Tolk\)/);

    // Anna and her companion with one press.
    const both = `#lobby-list li[data-participant="${ids.patient}"] button.admit-with`;
    assert.equal(await clinician.textContent(both), "Släpp in Anna och anhörig");
    await clinician.click(both);
    await waitFor(async () => ({
      ok: (await patient.evaluate(() => window.hcState.admitted)) && (await companion.evaluate(() => window.hcState.admitted)),
    }), { timeout: 15000, what: "the patient and the companion admitted together" });
    await waitFor(async () => {
      const s = await fromParticipant(patient, ids.interpreter);
      return { ok: s && s.audioPackets > 20, s };
    }, { timeout: 30000, what: "the patient hearing the interpreter" });

    // A consultant of another unit, invited from the clinician's panel.
    await clinician.click("#invite summary");
    await clinician.fill("#invite-hsa", "SE2321000016-K9");
    await clinician.fill("#invite-unit", "unit-9");
    await clinician.fill("#invite-name", "Dr Konsult");
    await clinician.click("#invite-form button[type=submit]");
    await clinician.waitForSelector("#invite-link:not([hidden])", { timeout: 10000 });
    const link = await clinician.inputValue("#invite-link");
    assert.match(link, /\/m\/visit-[^?#]*#token=/);
    const consultant = await page(link);
    await waitFor(async () => ({ ok: await consultant.evaluate(() => window.hcState.view === "meeting") }),
      { timeout: 20000, what: "the consultant in the meeting" });
    await waitFor(async () => ({ ok: /Dr Konsult \(Konsult\)/.test(await patient.textContent("#people")) }),
      { timeout: 10000, what: "the patient seeing the consultant" });
    for (const p of [clinician, patient, companion, interpreter, consultant]) {
      assert.deepEqual(await p.evaluate(() => window.hcState.errors), []);
    }
    const secrets = [...Object.values(links), link].map(linkToken);
    for (const p of [clinician, patient, companion, interpreter, consultant]) {
      secrets.push(await p.evaluate(() => window.hcState.resumeKey));
    }
    assert.ok(onWire.some((u) => u.includes("/ws")), "the WebSockets were seen");
    for (const secret of secrets) {
      assert.ok(secret && secret.length > 20, "a token or resume key");
      const leaked = onWire.filter((u) => u.includes(secret));
      assert.deepEqual(leaked.map((u) => u.slice(0, 60)), [], "a token or resume key in a URL on the wire");
    }
  });
});
