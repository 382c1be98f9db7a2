"""The Helm chart, rendered and checked without a cluster: helm's own renderer and linter (PyPI
helm-python-sdk), every manifest against the Kubernetes schema of two versions (PyPI
kubernetes-validate), the rendered signaling config through the real `signaling check-config`,
coturn's arguments through the real `turnserver`, the alert rules and the dashboard's queries
through `promtool`, and what each value set must change in the manifests.

Run: python3 -m unittest discover -s helm/tests -v   (scripts/test does; needs the signaling
binary built in $CARGO_TARGET_DIR/debug).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import tomllib
import unittest
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "healthcare-sfu"
RELEASE, NAMESPACE = "hc", "video"
FULL = "hc-healthcare-sfu"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one.
KUBE_VERSIONS = ["1.27.0", "1.34.0"]
# Kinds of the Prometheus Operator, not in Kubernetes' own schema.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def merged(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def render(values: dict | None = None) -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[dict], kind: str, name: str) -> dict:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    if len(hits) != 1:
        raise AssertionError(f"{kind}/{name}: {len(hits)} rendered")
    return hits[0]


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# The value sets the chart is rendered with; each a realistic installation.
VALUE_SETS = {
    "defaults": {},
    "scaled": {
        "sfu": {"replicas": 4, "workers": 4, "iceTcp": False, "advertiseIp": "203.0.113.7",
                "drainTimeoutSecs": 7200},
        "ingress": {"className": "nginx", "tls": {"enabled": False}},
        "networkPolicy": {"sfuNodeCidrs": ["10.20.0.0/16"],
                          "publicFrom": [{"namespaceSelector": {"matchLabels": {
                              "kubernetes.io/metadata.name": "ingress-nginx"}}}]},
    },
    "external-redis": {
        "redis": {"enabled": False, "external": {
            "url": "rediss://redis.region.internal:6380",
            "passwordSecret": {"name": "region-redis", "key": "password"}}},
    },
    "turn": {
        "turn": {"enabled": True, "host": "turn.region.example", "tlsSecret": "turn-tls",
                 "allowedPeerRanges": ["10.20.0.11-10.20.0.11"]},
    },
    "monitoring-and-jwks-url": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                    "prometheusRule": {"enabled": True}},
        "tokens": {"jwksUrl": "https://idp.region.example/jwks.json",
                   "jwksCaSecret": {"name": "region-ca", "key": "ca.pem"},
                   "signingKeySecret": {"name": "token-signing", "key": "signing.key"}},
        "api": {"clients": [{"name": "booking", "units": ["SE2321000016-ABCD"],
                             "keySha256": "ab" * 32}]},
    },
    "replicas": {"signaling": {"replicas": 3}},
    "cert-manager-csi": {"cluster": {"certManagerCsi": {
        "enabled": True, "issuer": {"name": "cluster-ca", "kind": "Issuer"}}}},
    "bare": {"networkPolicy": {"enabled": False}, "ingress": {"enabled": False},
             "signaling": {"http": {"trustedProxies": []}},
             "metrics": {"grafanaDashboard": {"enabled": False}}},
}


class ChartRenders(unittest.TestCase):
    rendered: dict[str, list[dict]] = {}

    @classmethod
    def setUpClass(cls):
        cls.rendered = {name: render(values) for name, values in VALUE_SETS.items()}

    def test_lint_is_clean_for_every_value_set(self):
        for name, values in VALUE_SETS.items():
            for kube in KUBE_VERSIONS:
                report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE,
                                   kube_version=f"v{kube}")
                serious = [m for m in report["messages"] if m["severity"] >= 2]
                self.assertEqual(report["errors"], [], name)
                self.assertEqual(serious, [], f"{name} on {kube}")

    def test_every_manifest_is_valid_kubernetes(self):
        for name, docs in self.rendered.items():
            for doc in docs:
                if doc["kind"] in OPERATOR_KINDS:
                    self.assertEqual(doc["apiVersion"], "monitoring.coreos.com/v1")
                    continue
                for kube in KUBE_VERSIONS:
                    with self.subTest(values=name, kind=doc["kind"], kube=kube):
                        kubernetes_validate.validate(doc, kube, strict=True)

    def test_a_long_release_name_keeps_every_name_within_kubernetes_limits(self):
        chart = helm.Chart.load(str(CHART))
        name = "region-stockholm-video-visits-production-blue"
        manifests = chart.render({}, name=name, namespace=NAMESPACE, is_install=True)
        docs = [d for p, t in manifests.items() if not p.endswith("NOTES.txt")
                for d in yaml.safe_load_all(t) if d]
        for d in docs:
            limit = 52 if d["kind"] == "StatefulSet" else 63
            self.assertLessEqual(len(d["metadata"]["name"]), limit, d["metadata"]["name"])
            kubernetes_validate.validate(d, KUBE_VERSIONS[-1], strict=True)

    def test_the_schema_refuses_what_cannot_work(self):
        refused = {
            "no signaling replica": {"signaling": {"replicas": 0}},
            "a mistyped key": {"sfu": {"worker": 4}},
            "plain http public URL": {"publicUrl": "http://video.region.example"},
            "external Redis without its URL": {"redis": {"enabled": False}},
            "TURN without TLS on 443": {"turn": {"enabled": True}},
            "an API key in the clear": {"api": {"clients": [
                {"name": "booking", "units": ["*"], "keySha256": "secret-key"}]}},
            "per-pod certificates without an issuer": {"cluster": {"certManagerCsi": {
                "enabled": True}}},
            "the public port open to every pod while X-Forwarded-For is believed":
                {"networkPolicy": {"publicFrom": []}},
            "no policies at all while X-Forwarded-For is believed":
                {"networkPolicy": {"enabled": False}},
            # What signaling would refuse at start (a crash loop, an outage at one replica):
            "an API client's name with a space": {"api": {"clients": [
                {"name": "booking system", "units": ["SE2321000016-ABCD"], "keySha256": "ab" * 32}]}},
            "every unit and one more": {"api": {"clients": [
                {"name": "booking", "units": ["*", "SE2321000016-ABCD"], "keySha256": "ab" * 32}]}},
            "a blank unit": {"api": {"clients": [
                {"name": "booking", "units": [" "], "keySha256": "ab" * 32}]}},
            "X-Forwarded-For believed from everyone":
                {"signaling": {"http": {"trustedProxies": ["0.0.0.0/0"]}}},
            "the SFU's metrics on a privileged port": {"sfu": {"metricsPort": 443}},
        }
        chart = helm.Chart.load(str(CHART))
        for why, values in refused.items():
            with self.subTest(why):
                with self.assertRaises(helm.HelmError):
                    chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)

    def test_api_and_metrics_are_never_public(self):
        for name, docs in self.rendered.items():
            internal = find(docs, "Service", f"{FULL}-signaling-internal")
            public = find(docs, "Service", f"{FULL}-signaling")
            self.assertEqual([p["port"] for p in public["spec"]["ports"]], [8080], name)
            self.assertEqual([p["port"] for p in internal["spec"]["ports"]], [9090], name)
            for ingress in (d for d in docs if d["kind"] == "Ingress"):
                backends = [p["backend"]["service"] for r in ingress["spec"]["rules"]
                            for p in r["http"]["paths"]]
                self.assertEqual(backends, [{"name": f"{FULL}-signaling", "port": {"name": "http"}}])
            policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
            if name == "bare":
                self.assertEqual(policies, [])
                continue
            policy = find(docs, "NetworkPolicy", f"{FULL}-signaling")
            rules = {r["ports"][0]["port"]: r for r in policy["spec"]["ingress"]}
            self.assertEqual(set(rules), {8080, 9090, 7443}, name)
            # The internal port admits only named peers, never everyone; the public port only
            # the Ingress controller, whose X-Forwarded-For is believed.
            for port in (9090, 8080):
                self.assertTrue(rules[port].get("from"), f"{name}: {port}")
                self.assertNotIn({}, rules[port]["from"], f"{name}: {port}")

    def test_the_signaling_config_is_one_signaling_accepts(self):
        binary = TARGET / "debug" / "signaling"
        self.assertTrue(binary.exists(), f"build signaling first ({binary})")
        with tempfile.TemporaryDirectory() as tmp:
            for name, docs in self.rendered.items():
                text = find(docs, "ConfigMap", f"{FULL}-signaling")["data"]["signaling.toml"]
                path = Path(tmp) / f"{name}.toml"
                path.write_text(text)
                out = subprocess.run([str(binary), "check-config", str(path)],
                                     capture_output=True, text=True, env={"PATH": "/usr/bin"})
                self.assertEqual(out.returncode, 0, f"{name}: {out.stderr}")
                config = tomllib.loads(text)
                self.assertEqual(config["http"]["internal_listen"], "0.0.0.0:9090")
                # (Without the policies, X-Forwarded-For is believed from nobody.)
                self.assertEqual("10.0.0.0/8" in config["http"]["trusted_proxies"],
                                 name != "bare", name)
                self.assertEqual("turn" in config, name == "turn", name)
            # And the check can fail: a key signaling does not know is named.
            bad = Path(tmp) / "bad.toml"
            bad.write_text(text.replace("queue_limit", "queue_limt"))
            out = subprocess.run([str(binary), "check-config", str(bad)], capture_output=True,
                                 text=True, env={"PATH": "/usr/bin"})
            self.assertNotEqual(out.returncode, 0)
            self.assertIn("queue_limt", out.stderr)

    def test_sfu_nodes_on_the_host_network_with_one_port_per_worker(self):
        for name in ["defaults", "scaled"]:
            docs = self.rendered[name]
            values = merged(yaml.safe_load((CHART / "values.yaml").read_text()), VALUE_SETS[name])
            n = values["sfu"]
            sts = find(docs, "StatefulSet", f"{FULL}-sfu")
            pod = sts["spec"]["template"]["spec"]
            self.assertTrue(pod["hostNetwork"])
            self.assertEqual(pod["dnsPolicy"], "ClusterFirstWithHostNet")
            self.assertEqual(sts["spec"]["replicas"], n["replicas"])
            self.assertEqual(pod["terminationGracePeriodSeconds"], n["drainTimeoutSecs"] + 30)
            container = pod["containers"][0]
            media = sorted((p["containerPort"], p["protocol"]) for p in container["ports"]
                           if p["name"].startswith("media-"))
            base = n["udpPortBase"]
            expected = sorted([(base + i, "UDP") for i in range(n["workers"])]
                              + ([(base + i, "TCP") for i in range(n["workers"])] if n["iceTcp"] else []))
            self.assertEqual(media, expected, name)
            env = env_of(container)
            self.assertEqual(env["SFU_WORKERS"], str(n["workers"]))
            self.assertEqual(env["SFU_NODE_ID"], "$(POD_NAME)")
            self.assertEqual(env["SFU_CLUSTER_CERT"], "/etc/healthcare-sfu/cluster/$(POD_NAME).pem")
            if n["advertiseIp"]:
                self.assertEqual(env["SFU_ADVERTISE_IP"], n["advertiseIp"])
            else:
                self.assertEqual(env["SFU_ADVERTISE_IP"], {"fieldRef": {"fieldPath": "status.hostIP"}})
            # The nodes' Secret, whole (scaling does not change the template); signaling's key
            # is in another Secret, mounted only by signaling.
            secrets = [v["secret"] for v in pod["volumes"] if "secret" in v]
            self.assertEqual(secrets, [{"secretName": f"{FULL}-cluster", "defaultMode": 0o400}])
            signaling_pod = find(docs, "StatefulSet", f"{FULL}-signaling")["spec"]["template"]["spec"]
            self.assertIn(f"{FULL}-cluster-signaling",
                          [v["secret"]["secretName"] for v in signaling_pod["volumes"] if "secret" in v])
            self.assertNotIn(f"{FULL}-cluster",
                             [v["secret"]["secretName"] for v in signaling_pod["volumes"] if "secret" in v])
            # The node dials the headless control Service (every replica), which lists pods
            # before they are ready.
            host, port = env["SFU_SIGNALING_ADDR"].rsplit(":", 1)
            self.assertEqual(host, f"{FULL}-signaling-quic.{NAMESPACE}.svc")
            control = find(docs, "Service", f"{FULL}-signaling-quic")
            self.assertTrue(control["spec"]["publishNotReadyAddresses"])
            self.assertEqual([(p["port"], p["protocol"]) for p in control["spec"]["ports"]],
                             [(int(port), "UDP")])
            # Signaling listens for them on every address of both families (IPv4-only,
            # dual-stack and IPv6-only clusters alike), on that port.
            signaling_env = env_of(signaling_pod["containers"][0])
            self.assertEqual(signaling_env["SIGNALING_SFU_LISTEN"], f"[::]:{port}")
            # Never two nodes on one host.
            anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            self.assertEqual(anti[0]["topologyKey"], "kubernetes.io/hostname")
            find(docs, "PodDisruptionBudget", f"{FULL}-sfu")
        policy = find(self.rendered["scaled"], "NetworkPolicy", f"{FULL}-signaling")
        control_rule = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 7443][0]
        self.assertEqual(control_rule["from"], [{"ipBlock": {"cidr": "10.20.0.0/16"}}])

    def test_with_cert_manager_each_pod_holds_only_its_own_cluster_key(self):
        """With the Secrets, every SFU pod mounts every node's key (one compromised pod could
        connect as another node); with cert-manager's CSI driver each pod gets a key and
        certificate of its own, for its own name, and the programs read them from there."""
        def cluster_volume(sts):
            return next(v for v in sts["spec"]["template"]["spec"]["volumes"]
                        if v["name"] == "cluster")
        shared = find(self.rendered["defaults"], "StatefulSet", f"{FULL}-sfu")
        self.assertIn("secret", cluster_volume(shared))
        docs = self.rendered["cert-manager-csi"]
        for name, dns, usage, prefix in [("sfu", "${POD_NAME}", "client auth", "SFU"),
                                         ("signaling", "signaling", "server auth", "SIGNALING")]:
            sts = find(docs, "StatefulSet", f"{FULL}-{name}")
            volume = cluster_volume(sts)
            self.assertNotIn("secret", volume)
            self.assertEqual(volume["csi"]["driver"], "csi.cert-manager.io")
            attrs = volume["csi"]["volumeAttributes"]
            self.assertEqual(attrs["csi.cert-manager.io/issuer-name"], "cluster-ca")
            self.assertEqual(attrs["csi.cert-manager.io/issuer-kind"], "Issuer")
            # The name signaling accepts a node under (its node_id, the pod's name), or the one
            # the nodes verify signaling by.
            self.assertEqual(attrs["csi.cert-manager.io/dns-names"], dns)
            self.assertIn(usage, attrs["csi.cert-manager.io/key-usages"])
            # Readable by the services' group, which the pods run as.
            pod_group = sts["spec"]["template"]["spec"]["securityContext"]["runAsGroup"]
            self.assertEqual(attrs["csi.cert-manager.io/fs-group"], str(pod_group))
            container = sts["spec"]["template"]["spec"]["containers"][0]
            mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "cluster")
            env = env_of(container)
            for var, key in [("CA", "ca-file"), ("CERT", "certificate-file"),
                             ("KEY", "privatekey-file")]:
                self.assertEqual(env[f"{prefix}_CLUSTER_{var}"],
                                 f"{mount}/{attrs['csi.cert-manager.io/' + key]}")
            if name == "sfu":
                self.assertEqual(env["SFU_NODE_ID"], "$(POD_NAME)")
        # No Secret of cluster keys is needed, so none is named by any pod.
        for doc in docs:
            for v in doc.get("spec", {}).get("template", {}).get("spec", {}).get("volumes", []):
                self.assertNotIn(f"{FULL}-cluster", json.dumps(v))

    def test_every_container_runs_unprivileged_from_the_charts_images(self):
        for name, docs in self.rendered.items():
            for doc in docs:
                if doc["kind"] not in {"StatefulSet", "Deployment"}:
                    continue
                pod = doc["spec"]["template"]["spec"]
                self.assertTrue(pod["securityContext"]["runAsNonRoot"], doc["metadata"]["name"])
                self.assertFalse(pod["automountServiceAccountToken"])
                for c in pod["containers"]:
                    sc = c["securityContext"]
                    self.assertFalse(sc["allowPrivilegeEscalation"])
                    self.assertTrue(sc["readOnlyRootFilesystem"])
                    self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
                    self.assertIn("resources", c)
                    if c["name"] in {"signaling", "sfu"}:
                        self.assertEqual(
                            c["image"], f"registry.region.example/healthcare-sfu/{c['name']}:0.1.0")

    def test_an_upgrade_can_move_the_sfu_nodes_before_signaling(self):
        """docs/deployment.md: upgrade the nodes before signaling. With one tag for both, a
        `helm upgrade` rolled both at once; `image.signalingTag` holds signaling back."""
        def images(values):
            docs = render(values)
            return {name: find(docs, "StatefulSet", f"{FULL}-{name}")["spec"]["template"]["spec"]
                    ["containers"][0]["image"].rsplit(":", 1)[1] for name in ("signaling", "sfu")}
        self.assertEqual(images({"image": {"tag": "2.0"}}), {"signaling": "2.0", "sfu": "2.0"})
        self.assertEqual(images({"image": {"tag": "2.0", "signalingTag": "1.9"}}),
                         {"signaling": "1.9", "sfu": "2.0"})

    def test_redis_in_the_chart_or_the_regions_own(self):
        docs = self.rendered["defaults"]
        redis = find(docs, "StatefulSet", f"{FULL}-redis")
        args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
        self.assertEqual(args[args.index("--appendonly") + 1], "yes")
        env = env_of(find(docs, "StatefulSet", f"{FULL}-signaling")["spec"]["template"]["spec"]["containers"][0])
        # The audit copy goes in as its own user, with its own password.
        self.assertEqual(env["SIGNALING_AUDIT_REDIS_URL"], f"redis://audit:$(REDIS_AUDIT_PASSWORD)@{FULL}-redis:6379")
        self.assertEqual(env["REDIS_AUDIT_PASSWORD"],
                         {"secretKeyRef": {"name": f"{FULL}-redis", "key": "audit-password"}})
        self.assertEqual(env["SIGNALING_AUDIT_REDIS_STREAM"], "healthcare-sfu:audit:$(POD_NAME)")
        secret = find(docs, "Secret", f"{FULL}-redis")
        self.assertEqual(sorted(secret["data"]), ["admin-password", "audit-password", "password"])
        self.assertNotEqual(secret["data"]["audit-password"], secret["data"]["password"])
        find(docs, "NetworkPolicy", f"{FULL}-redis")

        docs = self.rendered["external-redis"]
        self.assertEqual([d for d in docs if "redis" in d["metadata"]["name"]], [])
        env = env_of(find(docs, "StatefulSet", f"{FULL}-signaling")["spec"]["template"]["spec"]["containers"][0])
        self.assertEqual(env["SIGNALING_AUDIT_REDIS_URL"],
                         "rediss://:$(REDIS_PASSWORD)@redis.region.internal:6380")
        self.assertEqual(env["REDIS_PASSWORD"],
                         {"secretKeyRef": {"name": "region-redis", "key": "password"}})
        docs = render(merged(VALUE_SETS["external-redis"], {"redis": {"external": {"audit": {
            "user": "hc-audit", "passwordSecret": {"name": "region-redis-audit", "key": "pw"}}}}}))
        env = env_of(find(docs, "StatefulSet", f"{FULL}-signaling")["spec"]["template"]["spec"]["containers"][0])
        self.assertEqual(env["SIGNALING_AUDIT_REDIS_URL"],
                         "rediss://hc-audit:$(REDIS_AUDIT_PASSWORD)@redis.region.internal:6380")
        self.assertEqual(env["REDIS_AUDIT_PASSWORD"],
                         {"secretKeyRef": {"name": "region-redis-audit", "key": "pw"}})

    def test_a_regions_own_redis_secret_gets_no_admin_user_it_may_not_hold(self):
        """A Secret of the region's may lack `admin-password` (a reference to a missing key keeps
        Redis from starting): the admin user comes with it only once the values say it is there."""
        def redis_of(auth):
            c = find(render({"redis": {"auth": auth}}), "StatefulSet", f"{FULL}-redis")[
                "spec"]["template"]["spec"]["containers"][0]
            return env_of(c), c["args"]
        env, args = redis_of({"existingSecret": "region-redis"})
        self.assertNotIn("REDIS_ADMIN_PASSWORD", env)
        self.assertNotIn("admin", args)
        env, args = redis_of({"existingSecret": "region-redis", "existingSecretHasAdmin": True})
        self.assertEqual(env["REDIS_ADMIN_PASSWORD"],
                         {"secretKeyRef": {"name": "region-redis", "key": "admin-password"}})
        self.assertIn("admin", args)

    def test_the_bundled_redis_keeps_the_audit_copy_from_the_store_and_the_store_from_it(self):
        """The chart's Redis arguments, run by the real redis-server: the audit user appends to
        and reads its stream and nothing else; the store's user does what the meeting store
        and leases do, and can neither write nor remove the audit copy."""
        args = find(self.rendered["defaults"], "StatefulSet", f"{FULL}-redis")["spec"]["template"]["spec"][
            "containers"][0]["args"]
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        self.assertIsNotNone(server, "Debian's redis-server is needed")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with tempfile.TemporaryDirectory() as tmp:
            real = [a.replace("$(REDIS_PASSWORD)", "store-pw").replace("$(REDIS_AUDIT_PASSWORD)", "audit-pw")
                    .replace("$(REDIS_ADMIN_PASSWORD)", "admin-pw").replace("/data", tmp) for a in args]
            proc = subprocess.Popen([server, *real, "--port", str(port), "--bind", "127.0.0.1"],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                def run(user, password, *command):
                    out = subprocess.run([cli, "-p", str(port), "--user", user, "--pass", password,
                                          "--no-auth-warning", *command],
                                         capture_output=True, text=True, timeout=10)
                    return (out.stdout + out.stderr).strip()
                deadline = time.monotonic() + 10
                while run("default", "store-pw", "PING") != "PONG":
                    self.assertIsNone(proc.poll(), "redis-server exited on the chart's arguments")
                    self.assertLess(time.monotonic(), deadline, "redis-server never answered")
                    time.sleep(0.2)
                stream = "healthcare-sfu:audit:hc-healthcare-sfu-signaling-0"
                audit = lambda *c: run("audit", "audit-pw", *c)
                store = lambda *c: run("default", "store-pw", *c)
                self.assertEqual(audit("XADD", stream, "1-0", "line", "{}"), "1-0")
                self.assertIn("line", audit("XRANGE", stream, "-", "+"))
                self.assertIn("line", audit("XREVRANGE", stream, "+", "-", "COUNT", "1"))
                for denied in (audit("DEL", stream), audit("XTRIM", stream, "MAXLEN", "0"),
                               audit("XDEL", stream, "1-0"), audit("SET", "healthcare-sfu:meeting:m1", "x"),
                               audit("XADD", "other", "1-0", "line", "{}")):
                    self.assertIn("NOPERM", denied)
                self.assertEqual(store("SET", "healthcare-sfu:meeting:m1", "{}"), "OK")
                self.assertEqual(store("MGET", "healthcare-sfu:meeting:m1"), "{}")
                self.assertIn("healthcare-sfu:meeting:m1",
                              store("SCAN", "0", "MATCH", "healthcare-sfu:meeting:*", "COUNT", "100"))
                self.assertEqual(store("EVAL", "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) "
                                       "return redis.call('PEXPIRE', KEYS[1], ARGV[2])",
                                       "1", "healthcare-sfu:lease:m1", "pod-0", "5000"), "1")
                for denied in (store("DEL", stream), store("XTRIM", stream, "MAXLEN", "0"),
                               store("XADD", stream, "2-0", "line", "{}"), store("FLUSHALL"),
                               store("EVAL", "return redis.call('DEL', KEYS[1])", "1", stream)):
                    self.assertIn("NOPERM", denied)
                self.assertIn("line", audit("XRANGE", stream, "-", "+"), "the copy is still there")
                # The administrator archives: entries below a stored file's first line go.
                admin = lambda *c: run("admin", "admin-pw", *c)
                self.assertEqual(audit("XADD", stream, "2-0", "line", "{}"), "2-0")
                self.assertEqual(admin("XTRIM", stream, "MINID", "2"), "1")
                self.assertNotIn("1-0", audit("XRANGE", stream, "-", "+"))
                # Writes past maxmemory are refused, not evicted (the server is not killed).
                self.assertIn("noeviction", admin("CONFIG", "GET", "maxmemory-policy"))
            finally:
                proc.terminate()
                proc.communicate(timeout=10)

    def test_signaling_replicas_share_meetings_through_redis(self):
        for name in ("defaults", "replicas"):
            docs = self.rendered[name]
            sts = find(docs, "StatefulSet", f"{FULL}-signaling")
            env = env_of(sts["spec"]["template"]["spec"]["containers"][0])
            control = find(docs, "Service", f"{FULL}-signaling-quic")
            # Every node links to every replica: the name the nodes dial lists each pod.
            self.assertEqual(control["spec"]["clusterIP"], "None", name)
            # The old control Service stays as it was (an upgrade cannot change a clusterIP).
            self.assertNotIn("clusterIP", find(docs, "Service", f"{FULL}-signaling-control")["spec"])
            sfu = find(docs, "StatefulSet", f"{FULL}-sfu")
            sfu_env = env_of(sfu["spec"]["template"]["spec"]["containers"][0])
            self.assertEqual(sfu_env["SFU_SIGNALING_ADDR"], f"{FULL}-signaling-quic.{NAMESPACE}.svc:7443")
            secrets = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == f"{FULL}-replicas"]
            if name == "defaults":
                self.assertNotIn("SIGNALING_REPLICA_URL", env)
                self.assertNotIn("SIGNALING_MEETING_STORE", env)
                self.assertEqual(secrets, [])
                continue
            self.assertEqual(sts["spec"]["replicas"], 3)
            self.assertEqual(env["SIGNALING_MEETING_STORE"], f"redis://:$(REDIS_PASSWORD)@{FULL}-redis:6379")
            self.assertEqual(env["SIGNALING_REPLICA_URL"],
                             f"http://$(POD_NAME).{FULL}-signaling-pods.{NAMESPACE}.svc:9090")
            self.assertEqual(env["SIGNALING_REPLICA_SECRET_FILE"], "/etc/healthcare-sfu/replicas/secret")
            self.assertEqual(len(secrets), 1)
            import base64
            self.assertGreaterEqual(len(base64.b64decode(secrets[0]["data"]["secret"])), 32)
            volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
            self.assertEqual(volumes["replicas"]["secret"]["secretName"], f"{FULL}-replicas")

    def test_turn_is_optional_and_coturn_accepts_its_arguments(self):
        self.assertEqual([d for d in self.rendered["defaults"] if d["metadata"]["name"].endswith("-turn")], [])
        docs = self.rendered["turn"]
        pod = find(docs, "Deployment", f"{FULL}-turn")["spec"]["template"]["spec"]
        self.assertTrue(pod["hostNetwork"])
        args = pod["containers"][0]["args"]
        self.assertIn("--use-auth-secret", args)
        # The secret is nowhere on a command line or in the environment (the node's process
        # list shows host-network pods' command lines): an init container writes it to a file.
        self.assertFalse([a for a in args if "secret" in a and a != "--use-auth-secret"], args)
        self.assertNotIn("TURN_SECRET", json.dumps(pod["containers"]))
        init = pod["initContainers"][0]
        self.assertEqual(init["image"], pod["containers"][0]["image"])
        self.assertIn("--tls-listening-port=443", args)
        self.assertIn("--allowed-peer-ip=10.20.0.11-10.20.0.11", args)
        self.assertIn("--no-tcp-relay", args)
        config = tomllib.loads(find(docs, "ConfigMap", f"{FULL}-signaling")["data"]["signaling.toml"])
        self.assertEqual(config["turn"]["urls"][0], "turns:turn.region.example:443?transport=tcp")
        turnserver = shutil.which("turnserver")
        self.assertIsNotNone(turnserver, "coturn (Debian's coturn) is needed")
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj",
                            "/CN=turn.region.example", "-keyout", str(key), "-out", str(cert)],
                           check=True, capture_output=True)
            # The init container's own command, run on a copy of the Secret's key.
            (Path(tmp) / "secret").write_text("s3cret\n")
            script = init["command"][2].replace("/etc/coturn/secret/", f"{tmp}/") \
                .replace("/run/coturn/", f"{tmp}/")
            subprocess.run([*init["command"][:2], script], check=True)
            conf = Path(tmp) / "turnserver.conf"
            self.assertEqual(conf.read_text(), "static-auth-secret=s3cret\n")
            self.assertEqual(conf.stat().st_mode & 0o777, 0o600)
            real = [a.replace("$(NODE_IP)", "127.0.0.1").replace("/run/coturn/", f"{tmp}/")
                    .replace("/etc/coturn/tls/", f"{tmp}/").replace("=/tmp/turnserver.pid", f"={tmp}/pid")
                    for a in args]
            proc = subprocess.Popen([turnserver, *real], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            try:
                deadline = time.monotonic() + 10
                listening = False
                while time.monotonic() < deadline and proc.poll() is None and not listening:
                    try:
                        socket.create_connection(("127.0.0.1", 443), timeout=0.5).close()
                        listening = True
                    except OSError:
                        time.sleep(0.2)
                exited = proc.poll()
                # Credentials made from the secret get an allocation; from another, none.
                allocated = {}
                for secret in ["s3cret", "not-the-secret"]:
                    client = subprocess.run(
                        ["turnutils_uclient", "-W", secret, "-p", "3478", "-n", "1", "-m", "1",
                         "-e", "127.0.0.1", "127.0.0.1"],
                        capture_output=True, text=True, timeout=20)
                    said = client.stdout + client.stderr
                    # Allocated: the client went on to bind a channel (refused here, the peer
                    # being loopback, which the relay never serves); not allocated: it says so.
                    allocated[secret] = "channel bind" in said and "Cannot complete Allocation" not in said
                    if not allocated[secret]:
                        self.assertIn("Cannot complete Allocation", said, said)
            finally:
                proc.terminate()
                output = proc.communicate(timeout=10)[0]
            self.assertEqual(allocated, {"s3cret": True, "not-the-secret": False}, output)
            self.assertIsNone(exited, f"coturn exited on the chart's arguments:\n{output}")
            self.assertTrue(listening, f"coturn is not listening on 443:\n{output}")
            self.assertNotIn("unrecognized option", output)

    def test_monitoring_objects(self):
        docs = self.rendered["monitoring-and-jwks-url"]
        monitor = find(docs, "ServiceMonitor", FULL)
        self.assertEqual(monitor["metadata"]["labels"]["release"], "prometheus")
        wanted = monitor["spec"]["selector"]["matchLabels"]
        scraped = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "Service"
                         and all(d["metadata"]["labels"].get(k) == v for k, v in wanted.items()))
        self.assertEqual(scraped, [f"{FULL}-sfu", f"{FULL}-signaling-internal"])
        ports = {p["name"] for d in docs if d["kind"] == "Service" and d["metadata"]["name"] in scraped
                 for p in d["spec"]["ports"]}
        self.assertEqual({e["port"] for e in monitor["spec"]["endpoints"]}, ports)
        rule = find(docs, "PrometheusRule", FULL)
        alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
        self.assertEqual(rule["spec"]["groups"], alerts["groups"])
        dashboard = find(self.rendered["defaults"], "ConfigMap", f"{FULL}-dashboard")
        self.assertEqual(dashboard["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(json.loads(dashboard["data"]["healthcare-sfu.json"])["uid"], "healthcare-sfu")
        config = tomllib.loads(find(docs, "ConfigMap", f"{FULL}-signaling")["data"]["signaling.toml"])
        self.assertEqual(config["tokens"]["jwks_url"], "https://idp.region.example/jwks.json")
        self.assertNotIn("jwks_file", config["tokens"])
        self.assertEqual(config["api"]["clients"][0]["key_sha256"], "ab" * 32)
        # The API mints tokens with the key mounted from its Secret (and only then).
        self.assertEqual(config["tokens"]["signing_key"], "/etc/healthcare-sfu/token-signing/signing.key")
        pod = find(docs, "StatefulSet", f"{FULL}-signaling")["spec"]["template"]["spec"]
        mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        self.assertIn("/etc/healthcare-sfu/token-signing", mounts)
        default = tomllib.loads(find(self.rendered["defaults"], "ConfigMap", f"{FULL}-signaling")["data"]["signaling.toml"])
        self.assertNotIn("signing_key", default["tokens"])


class AlertsAndDashboard(unittest.TestCase):
    def exported_metrics(self) -> set[str]:
        names = set()
        for path in list((ROOT / "signaling" / "src").rglob("*.rs")) + list((ROOT / "sfu").rglob("src/**/*.rs")):
            names.update(re.findall(r'"((?:signaling|sfu|audit)_[a-z_]+)"', path.read_text()))
        return names

    def queries(self) -> list[str]:
        dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
        exprs += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
        return exprs

    def test_rules_pass_their_unit_tests(self):
        out = subprocess.run(["promtool", "test", "rules", str(ROOT / "helm/tests/alerts-test.yaml")],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)

    def test_every_query_parses_and_names_a_metric_the_services_export(self):
        exported = self.exported_metrics()
        self.assertIn("sfu_packets_out_total", exported)
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"q:{i}", "expr": e.replace("$namespace", ".*")}
            for i, e in enumerate(self.queries())]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            yaml.safe_dump(rules, f)
            f.flush()
            out = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        for expr in self.queries():
            used = {re.sub(r"_(bucket|count|sum)$", "", m) for m in
                    re.findall(r"\b((?:signaling|sfu|audit)_[a-z_]+)\b", expr)}
            self.assertTrue(used or "up{" in expr, expr)
            self.assertEqual(used - exported, set(), expr)


class ImageBuildContext(unittest.TestCase):
    def test_the_dockerfiles_build_context_holds_the_workspace(self):
        """What .dockerignore leaves in the build context resolves the workspace and its lock
        file offline, as `cargo build --locked` in the Dockerfiles needs."""
        ignored = [line.strip().rstrip("/").replace("**/", "") for line in
                   (ROOT / ".dockerignore").read_text().splitlines()
                   if line.strip() and not line.startswith("#")]
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
        with tempfile.TemporaryDirectory() as tmp:
            for f in files:
                parts = Path(f).parts
                if any(p in ignored or "/".join(parts[:i + 1]) in ignored
                       for i, p in enumerate(parts)):
                    continue
                dest = Path(tmp) / f
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, dest)
            for dockerfile in ["signaling/Dockerfile", "sfu/Dockerfile"]:
                text = (ROOT / dockerfile).read_text()
                package = re.search(r"cargo build --release --locked -p (\S+) --bin (\S+)", text)
                self.assertIsNotNone(package, dockerfile)
                out = subprocess.run(["cargo", "tree", "--locked", "--offline", "-p", package[1],
                                      "-e", "normal", "--depth", "1"], cwd=tmp,
                                     capture_output=True, text=True)
                self.assertEqual(out.returncode, 0, f"{dockerfile}: {out.stderr}")
                self.assertIn("USER 65532", text)


if __name__ == "__main__":
    unittest.main()
