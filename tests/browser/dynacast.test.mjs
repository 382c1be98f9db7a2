// Dynacast in Chromium: a simulcast layer nobody receives is paused at the publisher (the SFU
// says `pause_encodings`, the page turns the encoding off: nothing of it is encoded or sent)
// and turned back on as soon as someone wants it — the receiver's picture never stops.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startSignaling, launchChromium, waitFor, admitFirst, metric, videoStats } from "./harness.mjs";

/** Bytes each RID of the page's camera has sent, and the page's paused RIDs. */
async function sending(page) {
  // Before the page's peer connection exists, nothing is sent.
  if (!(await page.evaluate(() => Boolean(window.hcState && window.hcState.pc)))) return { l: 0, h: 0, paused: [] };
  const s = await videoStats(page);
  const paused = await page.evaluate(() => [...window.hcState.pausedRids.values()].flatMap((r) => [...r]).sort());
  // What the camera's sender has really turned off (the page sets it after the message came).
  const inactive = await page.evaluate(() => window.hcState.pc.getSenders()
    .filter((x) => x.track && x.track.kind === "video")
    .flatMap((x) => (x.getParameters().encodings || []).filter((e) => e.active === false).map((e) => e.rid))
    .sort());
  return { l: s.sent.l ? s.sent.l.bytes : 0, h: s.sent.h ? s.sent.h.bytes : 0, paused, inactive };
}

/** Whether `rid` sent (almost) nothing over `ms`. */
async function idle(page, rid, ms = 1500) {
  const a = await sending(page);
  await new Promise((r) => setTimeout(r, ms));
  const b = await sending(page);
  return b[rid] - a[rid] < 1000;
}

/** Whether `rid` falls quiet (a 1.5 s window with almost nothing sent) within 8 s: packets the
 * pacer had queued before the encoding was turned off may still leave on a loaded machine. */
async function fallsIdle(page, rid) {
  const end = Date.now() + 8000;
  while (Date.now() < end) {
    if (await idle(page, rid)) return true;
  }
  return false;
}

test("layers nobody receives are not encoded, and come back the moment someone wants them", { timeout: 150000 }, async () => {
  const server = await startSignaling();
  const browser = await launchChromium();
  try {
    const clinician = await (await browser.newContext()).newPage();
    const patient = await (await browser.newContext()).newPage();
    await clinician.goto(server.clinician);
    await patient.goto(server.patient);
    // Alone in the visit (the patient waits): nobody receives the clinician's camera, so after
    // a few seconds neither layer is encoded.
    const alone = await waitFor(async () => {
      const s = await sending(clinician);
      return { ok: s.paused.join(",") === "h,l" && s.inactive.join(",") === "h,l", s };
    }, { timeout: 20000, what: "the clinician told to pause both layers while alone, and both off" });
    assert.ok(await fallsIdle(clinician, "h") && await fallsIdle(clinician, "l"), "nothing encoded while alone");

    // Admitted: the patient's tile wants the top layer; it resumes and the picture starts.
    const admittedAt = Date.now();
    await admitFirst(clinician);
    await waitFor(async () => {
      const s = await videoStats(patient);
      return { ok: s.width === 640 && s.frames > 30, s };
    }, { timeout: 30000, what: "the patient decoding the top layer" });
    console.log(`dynacast: picture at 640 px ${Date.now() - admittedAt} ms after the admission (both layers were paused)`);
    const resumed = await sending(clinician);
    assert.ok(!resumed.paused.includes("h"), `h resumed (${JSON.stringify(resumed)})`);
    assert.ok(resumed.h > alone.s.h, "h is encoded again");

    // The patient saves data: the low layer only; the clinician's top layer goes unencoded.
    const before = await videoStats(patient);
    const watch = [];
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const s = await videoStats(patient);
        watch.push({ at: Date.now(), frames: s.frames, width: s.width });
        await new Promise((r) => setTimeout(r, 250));
      }
    })();
    await patient.click("#save-data");
    await waitFor(async () => {
      const s = await sending(clinician);
      return { ok: s.paused.join(",") === "h" && s.inactive.join(",") === "h", s };
    }, { timeout: 20000, what: "the clinician told to pause its top layer, and it off" });
    assert.ok(await fallsIdle(clinician, "h"), "the top layer is not encoded");
    assert.ok(!(await idle(clinician, "l", 1000)), "the low layer still is");
    const low = await videoStats(patient);
    assert.equal(low.width, 320);

    // Full picture again: the top layer is encoded again and the patient is on it within 3 s.
    const askedAt = Date.now();
    await patient.click("#save-data");
    await waitFor(async () => {
      const s = await videoStats(patient);
      return { ok: s.width === 640, s };
    }, { timeout: 10000, what: "the patient back on the top layer" });
    const backIn = Date.now() - askedAt;
    await new Promise((r) => setTimeout(r, 1500));
    watching = false;
    await watcher;
    const after = await videoStats(patient);
    // The picture never stood still for a second on the way, and froze for no longer than
    // half a second in all.
    let stall = 0;
    for (let i = 1, last = watch[0]; i < watch.length; i++) {
      if (watch[i].frames > last.frames) last = watch[i];
      else stall = Math.max(stall, watch[i].at - last.at);
    }
    const frozen = after.frozen - before.frozen;
    console.log(`dynacast: top layer back ${backIn} ms after it was asked for; longest stall ${stall} ms, ` +
      `frozen ${frozen.toFixed(2)} s, freezes ${after.freezes - before.freezes}`);
    assert.ok(backIn < 3000, `back on the top layer in ${backIn} ms`);
    assert.ok(stall < 1000, `the picture kept moving (longest stall ${stall} ms)`);
    assert.ok(frozen < 0.5, `frozen ${frozen} s`);
    assert.ok(await metric(server, "sfu_layers_suspended_total") >= 3, "suspensions counted");
    assert.ok(await metric(server, "sfu_layers_resumed_total") >= 3, "resumptions counted");
  } finally {
    await browser.close();
    server.child.kill("SIGTERM");
  }
});
