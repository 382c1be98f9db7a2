// Support's diagnostics view (a link opened with debug=1): the page shows the link as the SFU
// estimates it and what each received video is on, and follows a layer change.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startSignaling, launchChromium, waitFor, admitFirst } from "./harness.mjs";

test("the diagnostics view shows the server's estimate of the link and the layer of each video", { timeout: 120000 }, async () => {
  const server = await startSignaling();
  const browser = await launchChromium();
  try {
    const clinician = await (await browser.newContext()).newPage();
    const patient = await (await browser.newContext()).newPage();
    await clinician.goto(server.clinician);
    await patient.goto(server.patient + "&debug=1");
    await admitFirst(clinician);
    const lines = () => patient.evaluate(() => [...document.querySelectorAll("#diagnostics-list li")].map((li) => li.textContent));
    const estimate = (ls) => {
      const m = ls.map((l) => l.match(/^Nedströms \(serverns uppskattning\): (\d+) kbit\/s/)).find(Boolean);
      return m ? Number(m[1]) : 0;
    };
    const top = await waitFor(async () => {
      const ls = await lines();
      return { ok: estimate(ls) > 100 && ls.some((l) => /^Dr\. Dev: lager 2 av 2$/.test(l)) && ls.some((l) => l.startsWith("Skickar: ")), ls };
    }, { timeout: 45000, what: "the estimate and the clinician's video on its top layer in the view" });
    assert.ok(await patient.isVisible("#diagnostics"));
    console.log(`diagnostics: ${top.ls.join(" | ")}`);
    // Saving data moves the video to the low layer, and the view says so.
    await patient.click("#save-data");
    await waitFor(async () => {
      const ls = await lines();
      return { ok: ls.some((l) => /: lager 1 av 2$/.test(l)), ls };
    }, { timeout: 15000, what: "the view showing the low layer" });
    // Without debug=1 there is no view.
    assert.equal(await clinician.isVisible("#diagnostics"), false);
  } finally {
    await browser.close();
    server.child.kill("SIGTERM");
  }
});
