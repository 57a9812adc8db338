//! How the Kubernetes StatefulSet in `deploy/k8s/` starts a process of the cluster, as read by
//! `tests/k8s_check.py` (which also validates every manifest): the tests start processes the
//! same way, with loopback addresses in place of the headless Service's names.

use std::path::Path;
use std::process::Command;

/// The Kubernetes version the manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.35.0";

pub struct StatefulSet {
    /// The StatefulSet's name: pod `p` is `<name>-<p>`.
    pub name: String,
    pub replicas: usize,
    /// METERFLOW_PEERS as the manifest sets it (`meterflow-{i}.meterflow-peers....:2101`).
    pub peers: String,
    /// The names of the environment variables the container gets.
    pub env: Vec<String>,
    /// `meterflow.toml` of the ConfigMap.
    pub config: String,
    pub grace_seconds: u64,
}

impl StatefulSet {
    /// Validates `deploy/k8s/` and reads its StatefulSet (panics with the checker's message).
    pub fn from_manifests() -> StatefulSet {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new("python3")
            .arg(root.join("k8s_check.py"))
            .arg(root.join("../deploy/k8s"))
            .arg(KUBERNETES_VERSION)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "deploy/k8s does not check out:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("checker's JSON");
        StatefulSet {
            name: v["statefulset"].as_str().unwrap().into(),
            replicas: v["replicas"].as_u64().unwrap() as usize,
            peers: v["peers"].as_str().unwrap().into(),
            env: v["env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().into())
                .collect(),
            config: v["config"].as_str().unwrap().into(),
            grace_seconds: v["grace_seconds"].as_u64().unwrap(),
        }
    }

    /// The environment pod `p` gets, with every process's host (`<name>-{i}.<service>...`)
    /// replaced by the loopback address `127.0.0.1{i}` (127.0.0.10, 127.0.0.11, ...: one port for
    /// all, as pods have) and the port by `port`.
    pub fn pod_env(&self, p: usize, port: u16) -> Vec<(String, String)> {
        let (host, _) = self
            .peers
            .rsplit_once(':')
            .expect("METERFLOW_PEERS has a port");
        assert!(host.contains("{i}"), "METERFLOW_PEERS names process {{i}}");
        vec![
            ("METERFLOW_POD_NAME".into(), format!("{}-{p}", self.name)),
            ("METERFLOW_PROCESSES".into(), self.replicas.to_string()),
            ("METERFLOW_PEERS".into(), format!("127.0.0.1{{i}}:{port}")),
        ]
    }
}

/// A port free on the loopback addresses of `processes` pods (127.0.0.10, 127.0.0.11, ...).
pub fn free_pod_port(processes: usize) -> u16 {
    loop {
        let port = crate::servers::free_port();
        if (0..processes)
            .all(|i| std::net::TcpListener::bind(format!("127.0.0.1{i}:{port}")).is_ok())
        {
            return port;
        }
    }
}
