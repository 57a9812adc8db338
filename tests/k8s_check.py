#!/usr/bin/env python3
"""Checks deploy/k8s/ offline: every manifest against Kubernetes' own OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail), and the StatefulSet against what meterflow
needs to form a timely cluster from it. Prints, as JSON, how the StatefulSet starts a process
(its environment), so the cluster test starts processes exactly that way.

usage: k8s_check.py DEPLOY_K8S_DIR KUBERNETES_VERSION
"""
import json
import pathlib
import re
import sys

import kubernetes_validate
import yaml


def fail(message):
    print(f"deploy/k8s: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    k8s, version = pathlib.Path(sys.argv[1]), sys.argv[2]
    docs = {}
    for path in sorted(k8s.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {e.message} at {list(e.path)}")
            docs[(doc["kind"], doc["metadata"]["name"])] = (path.name, doc)

    kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    shipped = {f for f, _ in docs.values() if not f.endswith(".example.yaml")}
    if listed != shipped:
        fail(f"kustomization.yaml lists {sorted(listed)}, the manifests are {sorted(shipped)}")

    sts = docs[("StatefulSet", "meterflow")][1]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    if spec.get("podManagementPolicy") != "Parallel":
        fail("the StatefulSet must start its pods in parallel: the cluster forms only when all are up")
    if env["METERFLOW_POD_NAME"].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        fail("METERFLOW_POD_NAME must come from the pod's metadata.name (its ordinal is the process index)")
    if env["METERFLOW_PROCESSES"]["value"] != str(spec["replicas"]):
        fail(f"METERFLOW_PROCESSES {env['METERFLOW_PROCESSES']['value']} != replicas {spec['replicas']}")
    peers = env["METERFLOW_PEERS"]["value"]
    expected = rf"^{sts['metadata']['name']}-\{{i\}}\.{spec['serviceName']}\.\$\(POD_NAMESPACE\)\.svc\.cluster\.local:(\d+)$"
    m = re.match(expected, peers)
    if not m:
        fail(f"METERFLOW_PEERS `{peers}` is not <statefulset>-{{i}}.<serviceName>.$(POD_NAMESPACE).svc.cluster.local:<port>")
    port = int(m.group(1))
    headless = docs[("Service", spec["serviceName"])][1]["spec"]
    if headless.get("clusterIP") != "None" or not headless.get("publishNotReadyAddresses"):
        fail("the peers Service must be headless and publish not-ready addresses")
    if [p["port"] for p in headless["ports"]] != [port]:
        fail(f"the peers Service's port is not the METERFLOW_PEERS port {port}")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    if ports.get("timely") != port:
        fail("the container's timely port is not the METERFLOW_PEERS port")

    config = docs[("ConfigMap", "meterflow-config")][1]["data"]["meterflow.toml"]
    metrics = re.search(r'^addr = "0\.0\.0\.0:(\d+)"', config, re.M)
    if not metrics or int(metrics.group(1)) != ports["metrics"]:
        fail("[metrics] addr must listen on the container's metrics port")
    for probe, path in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        if container[probe]["httpGet"] != {"path": path, "port": "metrics"}:
            fail(f"{probe} must GET {path} on the metrics port")
    if re.search(r"^\s*password\s*=", config, re.M):
        fail("the config holds a password: secrets come from files or the environment")
    grace = pod["terminationGracePeriodSeconds"]
    print(json.dumps({
        "statefulset": sts["metadata"]["name"],
        "replicas": spec["replicas"],
        "peers": peers,
        "port": port,
        "env": sorted(env),
        "args": container["args"],
        "grace_seconds": grace,
        "config": config,
    }))


main()
