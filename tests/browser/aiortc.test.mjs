// A client that is not a browser: tests/aiortc/visit_client.py, written from docs/protocol.md
// only on PyPI's aiortc, holds a whole visit (waiting room, admit, two-way media, chat, back to
// the lobby, re-admit, restart, end) against the single-node default.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import path from "node:path";
import { startSignaling } from "./harness.mjs";

const client = path.resolve(import.meta.dirname, "../aiortc/visit_client.py");

test("an aiortc client written from the protocol document holds a whole visit", { timeout: 300000 }, async () => {
  const server = await startSignaling();
  try {
    const out = await new Promise((resolve) => {
      const p = spawn("python3", [client, server.clinician, server.patient], { stdio: ["ignore", "pipe", "pipe"] });
      let text = "";
      p.stdout.on("data", (d) => { text += d; });
      p.stderr.on("data", (d) => { text += d; });
      p.on("exit", (code) => resolve({ code, text }));
    });
    console.log(out.text.split("\n").filter((l) => /^(ok|FAIL|PASS)/.test(l)).join("\n"));
    assert.equal(out.code, 0, `${out.text.slice(-3000)}\nserver log:\n${server.logs().slice(-2000)}`);
    assert.match(out.text, /PASS/);
  } finally {
    server.child.kill("SIGTERM");
  }
});
