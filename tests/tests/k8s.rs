//! `deploy/k8s/`: every manifest validates against a current Kubernetes (kubernetes-validate,
//! offline, strict), the StatefulSet is one meterflow can form a cluster from, and its config is
//! one meterflow accepts. (The cluster SIGKILL test in `kafka.rs` starts its processes with the
//! StatefulSet's environment.)

use std::path::Path;
use std::process::Command;

use meterflow::config::Config;
use meterflow_tests::k8s::{StatefulSet, KUBERNETES_VERSION};
use meterflow_tests::Scratch;

#[test]
fn the_manifests_validate_and_the_statefulset_starts_a_cluster_meterflow_accepts() {
    let sts = StatefulSet::from_manifests();
    for var in [
        "METERFLOW_POD_NAME",
        "METERFLOW_PROCESSES",
        "METERFLOW_PEERS",
    ] {
        assert!(sts.env.iter().any(|e| e == var), "the pods get {var}");
    }
    let config = Config::parse(&sts.config, "deploy/k8s/configmap.yaml")
        .unwrap_or_else(|e| panic!("the ConfigMap's meterflow.toml: {e}"));
    assert!(config.kafka.enabled() && config.clickhouse.enabled());
    assert!(
        config.clickhouse.password_env.is_none() && config.clickhouse.password_file.is_some(),
        "the ClickHouse password comes from the mounted Secret"
    );
    assert!(
        sts.grace_seconds >= 30,
        "the SIGTERM tests prove a commit and exit within 30 s; the grace period allows it"
    );
}

/// Copies deploy/k8s, changes one file, and returns the checker's complaint.
fn complaint(file: &str, from: &str, to: &str) -> String {
    let dir = Scratch::new("k8s-broken");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let k8s = root.join("../deploy/k8s");
    for e in std::fs::read_dir(&k8s).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    let path = dir.path().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} holds `{from}`");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    let out = Command::new("python3")
        .arg(root.join("k8s_check.py"))
        .arg(dir.path())
        .arg(KUBERNETES_VERSION)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the checker accepts {file} with `{to}`"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn the_checker_refuses_broken_manifests() {
    let unknown = complaint(
        "statefulset.yaml",
        "podManagementPolicy:",
        "podManagmentPolicy:",
    );
    assert!(unknown.contains("statefulset.yaml"), "{unknown}");
    let replicas = complaint("statefulset.yaml", "replicas: 2", "replicas: 3");
    assert!(
        replicas.contains("METERFLOW_PROCESSES 2 != replicas 3"),
        "{replicas}"
    );
    let ordered = complaint(
        "statefulset.yaml",
        "podManagementPolicy: Parallel",
        "podManagementPolicy: OrderedReady",
    );
    assert!(ordered.contains("parallel"), "{ordered}");
    let hidden = complaint(
        "services.yaml",
        "publishNotReadyAddresses: true",
        "publishNotReadyAddresses: false",
    );
    assert!(hidden.contains("not-ready"), "{hidden}");
    let password = complaint(
        "configmap.yaml",
        "    password_file = ",
        "    password = \"hunter2\"\n    password_file = ",
    );
    assert!(password.contains("holds a password"), "{password}");
    let probe = complaint("statefulset.yaml", "path: /readyz", "path: /healthz");
    assert!(probe.contains("readinessProbe"), "{probe}");
}
