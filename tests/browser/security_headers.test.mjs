// The web pages' security headers (Content-Security-Policy, framing, referrer, permissions),
// and the client still working under them in Chromium: a whole call with no policy violation,
// and the page refusing to be framed by another site.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startSignaling, launchChromium, inboundStats, waitFor, admitFirst } from "./harness.mjs";

const VIOLATION = /Content Security Policy|Refused to|Permissions policy violation/i;

/** Collects policy violations a page reports (events and console). */
async function watchViolations(page, into) {
  await page.addInitScript(() => {
    window.__violations = [];
    document.addEventListener("securitypolicyviolation", (e) => {
      window.__violations.push(`${e.violatedDirective}: ${e.blockedURI}`);
    });
  });
  page.on("console", (m) => { if (VIOLATION.test(m.text())) into.push(m.text()); });
}

test("every page carries the security headers and the client works under them", async () => {
  const server = await startSignaling();
  const browser = await launchChromium();
  try {
    for (const path of ["/", "/client.js", "/style.css", "/healthz"]) {
      const r = await fetch(server.base + path);
      const csp = r.headers.get("content-security-policy") || "";
      assert.match(csp, /default-src 'self'/, `${path} CSP`);
      assert.match(csp, /frame-ancestors 'none'/, `${path} frame-ancestors`);
      assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, `${path} allows no inline code`);
      assert.equal(r.headers.get("x-frame-options"), "DENY", path);
      assert.equal(r.headers.get("referrer-policy"), "no-referrer", path);
      assert.equal(r.headers.get("x-content-type-options"), "nosniff", path);
      assert.match(r.headers.get("permissions-policy") || "", /camera=\(self\)/, path);
    }
    const refused = await fetch(server.base + "/join", { method: "POST", headers: { "content-type": "application/json" }, body: "{}" });
    assert.equal(refused.headers.get("x-frame-options"), "DENY", "JSON answers too");

    const violations = [];
    const a = await (await browser.newContext()).newPage();
    const b = await (await browser.newContext()).newPage();
    await watchViolations(a, violations);
    await watchViolations(b, violations);
    await a.goto(server.clinician);
    await b.goto(server.patient);
    await admitFirst(a);
    for (const [name, page] of [["clinician", a], ["patient", b]]) {
      await waitFor(async () => {
        const s = await inboundStats(page);
        return { ok: s && s.video.framesDecoded > 30 && s.audio.packetsReceived > 20, s };
      }, { timeout: 45000, what: `${name} decoding remote media under the policy` });
      const reported = await page.evaluate(() => window.__violations);
      violations.push(...reported);
    }
    assert.deepEqual(violations, [], "no policy violation during a call");

    // Another site cannot frame the page (clickjacking the clinician's buttons).
    const framer = await (await browser.newContext()).newPage();
    const framed = [];
    framer.on("console", (m) => framed.push(m.text()));
    await framer.setContent(`<iframe id="f" src="${server.clinician}"></iframe>`);
    await waitFor(async () => ({ ok: framed.some((t) => /frame-ancestors|X-Frame-Options|refused to connect/i.test(t)) }),
      { timeout: 10000, what: "Chromium refusing to frame the page" }).catch(() => {});
    const frame = framer.frames().find((f) => f !== framer.mainFrame());
    const loaded = frame ? await frame.evaluate(() => !!document.querySelector('script[src="/client.js"]')).catch(() => false) : false;
    assert.equal(loaded, false, `the page must not load inside a frame (console: ${framed.join(" | ")})`);
  } finally {
    await browser.close();
    server.child.kill();
  }
});
