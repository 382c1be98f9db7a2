// The web client as its users meet it: the layout on phones and a clinician's screen
// (bounding boxes from the page), the English interface for an English browser (the server's
// refusals too), an accessibility scan with axe-core, the patient's whole visit with the
// keyboard alone, and the camera, microphone and speaker controls.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { withServerAndBrowser, waitFor, admitFirst, inboundStats, bookVisit } from "./harness.mjs";

const axePath = createRequire(import.meta.url).resolve("axe-core/axe.min.js");

/** Waits until the page decodes a remote picture. */
async function seesSomeone(page, what) {
  await waitFor(async () => {
    const s = await inboundStats(page);
    const sized = await page.evaluate(() => [...document.querySelectorAll("#grid video")].some((v) => v.videoWidth > 0));
    return { ok: s && s.video.framesDecoded > 10 && sized, s };
  }, { timeout: 30000, what });
}

/** Where the controls and pictures lie, and how much of each region is on screen. */
function layout(page) {
  return page.evaluate(() => {
    const vw = innerWidth;
    const vh = innerHeight;
    const box = (el) => { const r = el.getBoundingClientRect(); return { x: r.left, y: r.top, r: r.right, b: r.bottom }; };
    const onScreen = (b) => Math.max(0, Math.min(b.r, vw) - Math.max(b.x, 0)) * Math.max(0, Math.min(b.b, vh) - Math.max(b.y, 0));
    const shown = (el) => el && el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden";
    const controls = [...document.querySelectorAll("#controls button")].filter(shown).map((b) => ({ id: b.id, ...box(b) }));
    const remote = [...document.querySelectorAll("#grid .tile")].filter(shown).map(box);
    const others = ["#self-tile", "#side", "#lobby-panel", "#people-panel", "#chat-panel"]
      .map((sel) => [sel, document.querySelector(sel)]).filter(([, el]) => shown(el))
      .map(([sel, el]) => ({ sel, area: onScreen(box(el)) }));
    return { vw, vh, controls, remote, remoteArea: remote.map(onScreen), others, scrollWidth: document.documentElement.scrollWidth };
  });
}

function assertLayout(l, who) {
  assert.ok(l.scrollWidth <= l.vw + 1, `${who}: no sideways scrolling (${l.scrollWidth} > ${l.vw})`);
  assert.ok(l.controls.length >= 5, `${who}: controls shown`);
  for (const c of l.controls) {
    assert.ok(c.x >= -0.5 && c.y >= -0.5 && c.r <= l.vw + 0.5 && c.b <= l.vh + 0.5,
      `${who}: control ${c.id} at ${JSON.stringify(c)} outside ${l.vw}×${l.vh}`);
  }
  assert.equal(l.remote.length, 1, `${who}: one other person`);
  const p = l.remote[0];
  assert.ok(p.x >= -0.5 && p.y >= -0.5 && p.r <= l.vw + 0.5 && p.b <= l.vh + 0.5,
    `${who}: the other person's picture ${JSON.stringify(p)} is not fully on screen (${l.vw}×${l.vh})`);
  for (const o of l.others) {
    assert.ok(l.remoteArea[0] > o.area, `${who}: ${o.sel} (${o.area} px²) is not smaller than the other person's picture (${l.remoteArea[0]} px²)`);
  }
}

test("layout: the other person fills the stage and every control is on screen", { timeout: 120000 }, async () => {
  await withServerAndBrowser(async ({ server, browser }) => {
    const clinician = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
    const patient = await (await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true })).newPage();
    await clinician.goto(server.clinician);
    await patient.goto(server.patient);
    await admitFirst(clinician);
    await seesSomeone(patient, "the patient seeing the clinician");
    await seesSomeone(clinician, "the clinician seeing the patient");
    for (const [w, h] of [[390, 844], [360, 640]]) {
      await patient.setViewportSize({ width: w, height: h });
      await new Promise((r) => setTimeout(r, 300));
      const l = await layout(patient);
      console.log(`layout ${w}×${h}: controls ${l.controls.map((c) => `${c.id}@${Math.round(c.x)},${Math.round(c.y)}`).join(" ")}; picture ${JSON.stringify(l.remote[0])}`);
      assertLayout(l, `patient ${w}×${h}`);
    }
    const l = await layout(clinician);
    console.log(`layout 1280×800 clinician: picture ${JSON.stringify(l.remote[0])}; others ${JSON.stringify(l.others)}`);
    assertLayout(l, "clinician 1280×800");
  });
});

test("an English browser gets the English interface, the server's refusals included", { timeout: 90000 }, async () => {
  await withServerAndBrowser(async ({ server, browser }) => {
    const clinician = await (await browser.newContext()).newPage();
    const patient = await (await browser.newContext({ locale: "en-GB" })).newPage();
    await clinician.goto(server.clinician);
    await patient.goto(server.patient);
    await patient.waitForSelector("#waiting:not([hidden])");
    assert.equal(await patient.getAttribute("html", "lang"), "en");
    assert.match(await patient.textContent("#waiting-message"), /You are in the waiting room/);
    assert.match(await patient.textContent("#controls"), /Leave/);
    assert.match(await clinician.textContent("#controls"), /Lämna/, "a Swedish browser stays Swedish");
    // A refusal by the server, in English.
    await clinician.waitForSelector("#lobby-list button.deny");
    await clinician.click("#lobby-list button.deny");
    await patient.waitForSelector("#ended:not([hidden])");
    assert.equal(await patient.textContent("#ended-title"), "You were not let in");
    assert.equal(await patient.textContent("#ended-message"), "You have not been let in to this visit.");
    // A link refused before joining (a broken token), and `?lang=` choosing Swedish.
    const bad = await (await browser.newContext({ locale: "en-US" })).newPage();
    await bad.goto(`${server.base}/m/visit-x?token=not.a.token`);
    await bad.waitForSelector("#ended:not([hidden])");
    assert.equal(await bad.textContent("#ended-message"), "The link is not valid. Open it again from the message you received.");
    await bad.goto(`${server.base}/m/visit-x?token=not.a.token&lang=sv`);
    await bad.waitForSelector("#ended:not([hidden])");
    assert.match(await bad.textContent("#ended-message"), /Länken är inte giltig/);
  });
});

/** axe-core's WCAG 2.1 A/AA violations of serious or critical impact on the page now. */
async function accessibilityProblems(page, where) {
  await page.addScriptTag({ path: axePath });
  const result = await page.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" ")).slice(0, 3) }));
  });
  const serious = result.filter((v) => ["serious", "critical"].includes(v.impact));
  if (result.length) console.log(`axe ${where}: ${JSON.stringify(result)}`);
  return serious;
}

test("accessibility (axe-core, WCAG 2.1 AA) and the patient's visit with the keyboard alone", { timeout: 150000 }, async () => {
  await withServerAndBrowser(async ({ server, browser }) => {
    const { links } = await bookVisit(server, {
      clinician: { sub: "doc-1", name: "Dr Berg", role: "clinician", hsa: "SE2321000016-DOC1" },
      patient: { sub: "pat-1", name: "Anna", role: "patient" },
      interpreter: { sub: "tolk-1", name: "Ali", role: "interpreter" },
    });
    const context = () => browser.newContext({ bypassCSP: true });
    // The join check's question to an interpreter.
    const interpreter = await (await context()).newPage();
    await interpreter.goto(links.interpreter);
    await interpreter.waitForSelector("#media-choice:not([hidden])");
    assert.deepEqual(await accessibilityProblems(interpreter, "join check"), []);

    const clinician = await (await context()).newPage();
    const patient = await (await context()).newPage();
    await clinician.goto(links.clinician);
    await patient.goto(links.patient);
    await patient.waitForSelector("#waiting:not([hidden])");
    assert.deepEqual(await accessibilityProblems(patient, "waiting room"), []);
    await clinician.waitForSelector("#lobby-list li");
    assert.deepEqual(await accessibilityProblems(clinician, "clinician panel"), []);

    // Admitted, the patient does everything with the keyboard.
    await clinician.click(`#lobby-list li:has-text("Anna") button.admit`);
    await patient.waitForSelector("#meeting:not([hidden])");
    await seesSomeone(patient, "the patient seeing the clinician");
    assert.deepEqual(await accessibilityProblems(patient, "call"), []);
    const focusOn = async (id, max = 40) => {
      for (let i = 0; i < max; i++) {
        if (await patient.evaluate(() => document.activeElement && document.activeElement.id) === id) return;
        await patient.keyboard.press("Tab");
      }
      throw new Error(`#${id} not reached with Tab`);
    };
    await focusOn("chat-input");
    await patient.keyboard.type("Hej, hör ni mig?");
    await patient.keyboard.press("Enter");
    await waitFor(async () => ({ ok: (await clinician.evaluate(() => window.hcState.chat.map((c) => c.text))).includes("Hej, hör ni mig?") }),
      { timeout: 10000, what: "the chat message to arrive" });
    await focusOn("mic");
    await patient.keyboard.press("Enter");
    assert.equal(await patient.getAttribute("#mic", "aria-pressed"), "true");
    assert.match(await patient.textContent("#self-state"), /mikrofon är avstängd/);
    await patient.keyboard.press("Enter");
    assert.equal(await patient.getAttribute("#mic", "aria-pressed"), "false");
    await focusOn("settings-button");
    await patient.keyboard.press("Enter");
    await patient.waitForSelector("#settings:not([hidden])");
    // Focus moves in once the pickers are filled (enumerateDevices is asynchronous): within a
    // moment, not on the same tick as the panel showing.
    await waitFor(async () => {
      const id = await patient.evaluate(() => document.activeElement.id);
      return { ok: id === "pick-camera", id };
    }, { timeout: 1000, interval: 50, what: "focus to move into the settings (#pick-camera)" });
    await focusOn("settings-close");
    await patient.keyboard.press("Enter");
    assert.equal(await patient.evaluate(() => document.activeElement.id), "settings-button", "and back");
    await focusOn("leave");
    await patient.keyboard.press("Enter");
    await patient.waitForSelector("#ended:not([hidden])");
    assert.equal(await patient.textContent("#ended-title"), "Du har lämnat besöket");
    // Nothing of the visit stays in the tab (a shared device): no one's picture or name under
    // it, no chat.
    const left = await patient.evaluate(() => ({
      tiles: document.querySelectorAll("#grid figure[data-participant]").length,
      captions: [...document.querySelectorAll("figcaption")].map((c) => c.textContent).filter((t) => /Berg|Ali/.test(t)),
      chat: document.getElementById("chat-log").children.length,
      known: window.hcState.names.size + window.hcState.roles.size,
    }));
    assert.deepEqual(left, { tiles: 0, captions: [], chat: 0, known: 0 }, "nothing of the visit left on the page");
  });
});

test("devices: the speaker test tone, a camera the system took away comes back, and a page restored from the back-forward cache rejoins", { timeout: 90000 }, async () => {
  await withServerAndBrowser(async ({ server, browser }) => {
    const clinician = await (await browser.newContext()).newPage();
    const patient = await (await browser.newContext()).newPage();
    await clinician.goto(server.clinician);
    await patient.goto(server.patient);
    await admitFirst(clinician);
    await seesSomeone(clinician, "the clinician seeing the patient");
    await patient.click("#settings-button");
    // The pickers list the devices there are (Chromium's fake camera and microphone).
    await waitFor(async () => {
      const pickers = await patient.evaluate(() => ({
        cameras: document.getElementById("pick-camera").options.length,
        mics: document.getElementById("pick-mic").options.length,
      }));
      return { ok: pickers.cameras >= 1 && pickers.mics >= 1, pickers };
    }, { timeout: 5000, what: "the device pickers filled" });
    await patient.click("#tone");
    assert.equal(await patient.evaluate(() => window.hcState.tonesPlayed), 1);
    assert.match(await patient.textContent("#tone-hint"), /ton/);
    await patient.click("#settings-close");

    // The phone's system stops the camera while the page is in the background; back in the
    // foreground, the page opens it again and the clinician sees the patient again.
    await patient.evaluate(() => window.hcState.localStream().getVideoTracks()[0].stop());
    const before = (await inboundStats(clinician)).video.framesDecoded;
    await new Promise((r) => setTimeout(r, 1500));
    const stalled = (await inboundStats(clinician)).video.framesDecoded;
    assert.ok(stalled - before < 15, `the picture stopped (${stalled - before} frames)`);
    await patient.evaluate(() => document.dispatchEvent(new Event("visibilitychange")));
    await waitFor(async () => {
      const live = await patient.evaluate(() => window.hcState.localStream().getVideoTracks()[0].readyState);
      const s = await inboundStats(clinician);
      return { ok: live === "live" && s.video.framesDecoded > stalled + 30, live, frames: s.video.framesDecoded };
    }, { timeout: 15000, what: "the camera back and the clinician decoding it" });
    assert.deepEqual(await patient.evaluate(() => window.hcState.errors), []);

    // Kept in the back-forward cache and restored: the camera is let go meanwhile, and the
    // page comes back into the visit by itself (admitted again, seen again).
    const first = await patient.evaluate(() => window.hcState.participant);
    await patient.evaluate(() => window.dispatchEvent(new PageTransitionEvent("pagehide", { persisted: true })));
    assert.equal(await patient.evaluate(() => window.hcState.localStream().getTracks().every((t) => t.readyState === "ended")), true);
    await Promise.all([
      patient.waitForNavigation(),
      patient.evaluate(() => window.dispatchEvent(new PageTransitionEvent("pageshow", { persisted: true }))),
    ]);
    await waitFor(async () => {
      const s = await patient.evaluate(() => window.hcState && { view: window.hcState.view, id: window.hcState.participant });
      return { ok: s && s.view === "meeting" && s.id && s.id !== first, s };
    }, { timeout: 20000, what: "the restored page back in the visit" });
    const again = (await inboundStats(clinician)).video.framesDecoded;
    await waitFor(async () => {
      const s = await inboundStats(clinician);
      return { ok: s.video.framesDecoded > again + 30, frames: s.video.framesDecoded };
    }, { timeout: 30000, what: "the clinician seeing the restored patient" });
  });
});
