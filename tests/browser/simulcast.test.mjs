// Chromium publishes its camera as simulcast layers through the single-node default; the SFU
// forwards each receiver one layer: the top one for a large tile, the low one when the
// receiver saves data or its tile is small, switching at keyframes without breaking the
// picture.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startSignaling, launchChromium, waitFor, admitFirst, metric, videoStats } from "./harness.mjs";

test("a receiver gets one simulcast layer and moves down and up with data saving and its tile size", { timeout: 120000 }, async () => {
  const server = await startSignaling();
  const browser = await launchChromium();
  try {
    const clinician = await (await browser.newContext()).newPage();
    const patient = await (await browser.newContext()).newPage();
    await clinician.goto(server.clinician);
    await patient.goto(server.patient);
    await admitFirst(clinician);

    // The 640×480 camera goes out as two layers (320 and 640 wide), both flowing: the SFU's
    // answer accepted simulcast.
    const sending = await waitFor(async () => {
      const s = await videoStats(clinician);
      const rids = Object.keys(s.sent).sort().join(",");
      return { ok: rids === "h,l" && s.sent.l.bytes > 20000 && s.sent.h.bytes > 20000, s };
    }, { timeout: 45000, what: "the clinician sending two simulcast layers" });
    assert.equal(sending.s.sent.h.width, 640);
    assert.equal(sending.s.sent.l.width, 320);

    // The patient's large tile gets the top layer.
    const top = await waitFor(async () => {
      const s = await videoStats(patient);
      return { ok: s.width === 640 && s.frames > 30, s };
    }, { timeout: 30000, what: "the patient decoding the top layer" });
    const switchesBefore = await metric(server, "sfu_layer_switches_total");

    // Saving data: the low layer, at a keyframe, and the picture keeps going.
    await patient.click("#save-data");
    const low = await waitFor(async () => {
      const s = await videoStats(patient);
      return { ok: s.width === 320, s };
    }, { timeout: 15000, what: "the patient receiving the low layer" });
    await waitFor(async () => {
      const s = await videoStats(patient);
      return { ok: s.width === 320 && s.frames > low.s.frames + 40, s };
    }, { timeout: 15000, what: "the patient decoding on after the switch" });
    assert.ok(await metric(server, "sfu_layer_switches_total") > switchesBefore, "the SFU counted the switch");
    // The clinician still sends both layers: the other layer is only held back.
    const stillSending = await videoStats(clinician);
    assert.ok(stillSending.sent.h.bytes > sending.s.sent.h.bytes);

    // Back to the full picture.
    await patient.click("#save-data");
    const back = await waitFor(async () => {
      const s = await videoStats(patient);
      return { ok: s.width === 640, s };
    }, { timeout: 15000, what: "the patient back on the top layer" });
    // Switching at keyframes with continuous sequence numbers loses nothing on loopback.
    assert.ok(back.s.lost - top.s.lost < 5, `packets lost across the switches: ${back.s.lost - top.s.lost}`);

    // A phone-sized window: the tile is at most 320 device pixels wide, so the low layer is
    // enough (asked for by the page on its own, from the tile's size).
    await patient.setViewportSize({ width: 300, height: 600 });
    await waitFor(async () => {
      const s = await videoStats(patient);
      return { ok: s.width === 320, s };
    }, { timeout: 15000, what: "the small tile receiving the low layer" });
    await patient.setViewportSize({ width: 1280, height: 720 });
    await waitFor(async () => {
      const s = await videoStats(patient);
      return { ok: s.width === 640, s };
    }, { timeout: 15000, what: "the large tile receiving the top layer again" });
    const errors = await patient.evaluate(() => window.hcState.errors);
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
    server.child.kill("SIGTERM");
  }
});
