// Signaling restarted (SIGTERM, as a rollout does, then started again) or killed (SIGKILL: a
// crash, an OOM kill — no hand-over runs) while a visit runs on a standalone SFU node — or, on
// a single node, on its companion node (`--sfu-mode companion`): the node keeps its rooms while
// its control link is down, the pages come back with their resume keys
// as the same participants with their media sessions kept (the meeting store carries each
// session under its key from the moment it connects) — same peer connections, no new session
// — and the pictures never stop.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { startSignaling, launchChromium, inboundStats, waitFor, admitFirst, signalingBin, sfuBin } from "./harness.mjs";

/** A TCP/UDP port free now on loopback. */
function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

const exited = (child) => new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));

const scenarios = [
  { signal: "SIGTERM", companion: false, what: "a signaling restart loses no media: the node keeps the visit and the pages keep their peer connections" },
  { signal: "SIGKILL", companion: false, what: "a signaling crash loses no media: the node keeps the visit and the pages keep their peer connections" },
  { signal: "SIGTERM", companion: true, what: "a single node's restart loses no media: its companion node keeps the visit and the pages keep their peer connections" },
];
for (const { signal, companion, what } of scenarios) {
  test(what, async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "hc-restart-"));
    await new Promise((resolve, reject) => {
      const p = spawn(signalingBin, ["cluster-certs", "--out", dir], { stdio: "ignore" });
      p.on("exit", (code) => (code === 0 ? resolve() : reject(new Error("cluster-certs failed"))));
    });
    const [http, control] = [await freePort(), await freePort()];
    const keyDir = mkdtempSync(path.join(tmpdir(), "hc-dev-"));
    const companionDir = path.join(dir, "companion");
    const args = companion
      ? ["--sfu-mode", "companion", "--companion-dir", companionDir, "--workers", "1"]
      : ["--sfu-mode", "remote", "--cluster-ca", path.join(dir, "ca.pem"), "--cluster-cert", path.join(dir, "signaling.pem"),
        "--cluster-key", path.join(dir, "signaling.key")];
    args.push("--sfu-listen", `127.0.0.1:${control}`, "--meeting-store", path.join(keyDir, "meetings.json"));
    const start = () => startSignaling(args, { embedded: false, listen: `127.0.0.1:${http}`, keyDir });
    let server = await start();
    let sfuLogs = "";
    // The standalone node; the companion is started by signaling itself (its log is signaling's).
    const sfu = companion ? null : spawn(sfuBin, ["--signaling", `127.0.0.1:${control}`, "--cluster-ca", path.join(dir, "ca.pem"),
      "--cluster-cert", path.join(dir, "sfu.pem"), "--cluster-key", path.join(dir, "sfu.key"),
      "--bind-ip", "127.0.0.1", "--advertise-ip", "127.0.0.1", "--workers", "1", "--node-id", "sfu"],
      { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: "info" } });
    if (sfu) sfu.stderr.on("data", (d) => { sfuLogs += d; });
    const companionPid = () => Number(readFileSync(path.join(companionDir, "companion.pid"), "utf8").trim());
    const pidBefore = companion ? companionPid() : null;
    const linked = () => waitFor(async () => {
      const r = await fetch(server.base + "/readyz").catch(() => null);
      return { ok: r && r.status === 200, status: r && r.status };
    }, { timeout: 20000, what: "the SFU node linked" });
    const browser = await launchChromium();
    try {
      await linked();
      const a = await (await browser.newContext()).newPage();
      const b = await (await browser.newContext()).newPage();
      await a.goto(server.clinician);
      await b.goto(server.patient);
      await admitFirst(a);
      for (const [name, page] of [["clinician", a], ["patient", b]]) {
        await waitFor(async () => {
          const s = await inboundStats(page);
          return { ok: s && s.video.framesDecoded > 30 && s.audio.packetsReceived > 20, s };
        }, { timeout: 45000, what: `${name} decoding remote media` });
        // Marks this peer connection, to tell a rebuilt one from it afterwards.
        await page.evaluate(() => { window.hcState.pc.__beforeRestart = true; });
      }

      // Watch both pictures every 200 ms while the service restarts.
      const samples = [];
      let watching = true;
      const watch = (async () => {
        while (watching) {
          const at = Date.now();
          const [sa, sb] = await Promise.all([inboundStats(a), inboundStats(b)]);
          samples.push({ at, a: sa.video.framesDecoded, b: sb.video.framesDecoded });
          await new Promise((r) => setTimeout(r, 200));
        }
      })();
      const stoppedAt = Date.now();
      const gone = exited(server.child);
      server.child.kill(signal);
      const status = await gone;
      if (signal === "SIGTERM") assert.equal(status.code, 0, `signaling exited cleanly (${JSON.stringify(status)})`);
      server = await start();
      await linked();
      // Both pages are back with their media kept, and say so.
      for (const [name, page] of [["clinician", a], ["patient", b]]) {
        await waitFor(async () => {
          const st = await page.evaluate(() => ({
            kept: window.hcState.iceStates.some(([, what]) => what === "media-kept"),
            status: document.getElementById("status").textContent,
            view: window.hcState.view,
          }));
          return { ok: st.kept && st.status === "Ansluten" && st.view === "meeting", st };
        }, { timeout: 30000, what: `${name} back with its media kept` }).catch((e) => {
          throw new Error(`${e.message}\nsignaling log:\n${server.logs().slice(-3000)}\nsfu log:\n${sfuLogs.slice(-3000)}`);
        });
      }
      const backAt = Date.now();
      await new Promise((r) => setTimeout(r, 2000));
      watching = false;
      await watch;
      for (const [name, page] of [["clinician", a], ["patient", b]]) {
        const st = await page.evaluate(() => ({
          same: window.hcState.pc.__beforeRestart === true,
          restarts: window.hcState.restarts,
        }));
        assert.ok(st.same, `${name}: the same peer connection`);
        assert.equal(st.restarts, 0, `${name}: no new media session`);
      }
      // The longest time either picture did not advance, from the signal to 2 s after both
      // were back.
      let stall = { a: 0, b: 0 };
      for (const who of ["a", "b"]) {
        let last = samples[0];
        for (const s of samples.slice(1)) {
          if (s[who] > last[who]) last = s;
          else stall[who] = Math.max(stall[who], s.at - last.at);
        }
      }
      if (companion) assert.equal(companionPid(), pidBefore, "the same companion node ran through the restart");
      console.log(`signaling ${signal}${companion ? " (single node, companion)" : ""}: pages back ${backAt - stoppedAt} ms after it; ` +
        `longest picture stall: clinician ${stall.a} ms, patient ${stall.b} ms (${samples.length} samples)`);
      assert.ok(stall.a < 1000 && stall.b < 1000, `the pictures kept moving (stalls ${JSON.stringify(stall)})`);
    } finally {
      await browser.close();
      if (sfu) sfu.kill("SIGKILL");
      server.child.kill("SIGKILL");
      // The companion outlives signaling by design: this test ends it.
      if (companion) { try { process.kill(companionPid(), "SIGKILL"); } catch { /* gone */ } }
    }
  });
}
