// Network namespaces for tests that change or block a client's network: a veth pair from the
// host (198.18.x.1) to a namespace (198.18.x.2), and a wrapper that runs a program inside it.
// Needs root (CI runs as root); addresses come from 198.18.0.0/15, kept for benchmarking.
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

function ip(...args) {
  return execFileSync("ip", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/**
 * A namespace joined to the host by veth pairs, one per `subnets` entry: host side 198.18.n.1,
 * namespace side 198.18.n.2 (/24). `links[i]` describes each; helpers run `ip` and `nft` inside,
 * and wrap a program to run there.
 */
export function clientNamespace(...subnets) {
  const name = `hc${subnets[0]}x${process.pid}`;
  ip("netns", "add", name);
  const inNs = (...args) => ip("netns", "exec", name, "ip", ...args);
  inNs("link", "set", "lo", "up");
  const links = subnets.map((subnet) => {
    const hostIf = `hch${subnet}`;
    const nsIf = `hcc${subnet}`;
    const hostIp = `198.18.${subnet}.1`;
    const clientIp = `198.18.${subnet}.2`;
    try { ip("link", "del", hostIf); } catch { /* not there */ }
    ip("link", "add", hostIf, "type", "veth", "peer", "name", nsIf);
    ip("link", "set", nsIf, "netns", name);
    ip("addr", "add", `${hostIp}/24`, "dev", hostIf);
    ip("link", "set", hostIf, "up");
    inNs("addr", "add", `${clientIp}/24`, "dev", nsIf);
    inNs("link", "set", nsIf, "up");
    return { hostIf, nsIf, hostIp, clientIp };
  });
  const dir = mkdtempSync(path.join(tmpdir(), "hc-netns-"));
  return {
    name, links,
    /** `ip …` inside the namespace. */
    ip: inNs,
    /** `nft -f -` inside the namespace with `rules` on stdin. */
    nft(rules) {
      execFileSync("ip", ["netns", "exec", name, "nft", "-f", "-"], { input: rules, stdio: ["pipe", "pipe", "pipe"] });
    },
    /** An executable that runs `program` inside the namespace with the arguments it is given. */
    wrapper(program) {
      const file = path.join(dir, path.basename(program) + "-in-" + name);
      writeFileSync(file, `#!/bin/sh\nexec ip netns exec ${name} ${program} "$@"\n`);
      chmodSync(file, 0o755);
      return file;
    },
    remove() {
      try { ip("netns", "del", name); } catch { /* gone */ }
      for (const l of links) {
        try { ip("link", "del", l.hostIf); } catch { /* went with the namespace */ }
      }
    },
  };
}

/**
 * A non-loopback address on this host (198.18.`subnet`.1/24 on one end of a veth pair whose
 * other end stays here too; the kernel has no dummy interfaces), for browsers that gather no
 * loopback candidate (Firefox) but must be driven from here.
 */
export function hostAddress(subnet) {
  const dev = `hcf${subnet}`;
  try { ip("link", "del", dev); } catch { /* not there */ }
  ip("link", "add", dev, "type", "veth", "peer", "name", `${dev}p`);
  ip("addr", "add", `198.18.${subnet}.1/24`, "dev", dev);
  ip("link", "set", dev, "up");
  ip("link", "set", `${dev}p`, "up");
  return {
    ip: `198.18.${subnet}.1`,
    remove() {
      try { ip("link", "del", dev); } catch { /* gone */ }
    },
  };
}
