//! Where the processes of a timely cluster find each other: a hostfile (one `host:port` per
//! process, this process named by `--process`), or — under an orchestrator such as a Kubernetes
//! StatefulSet — a pod name whose ordinal is the process index and an address template expanded
//! for every index (`meterflow-{i}.meterflow-peers:2101`, the headless Service's stable names).

/// The process index of a StatefulSet pod: the number after the last `-` of its name
/// (`meterflow-2` → 2).
pub fn ordinal(pod_name: &str) -> Result<usize, String> {
    let digits = pod_name.rsplit_once('-').map_or("", |(_, n)| n);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "pod name `{pod_name}` does not end in `-<ordinal>`: set METERFLOW_POD_NAME from the \
             StatefulSet pod's metadata.name (e.g. `meterflow-0`), or give --process"
        ));
    }
    digits
        .parse()
        .map_err(|_| format!("pod name `{pod_name}`: ordinal out of range"))
}

/// The address of every process from a template holding `{i}` (the process index).
pub fn peers(template: &str, processes: usize) -> Result<Vec<String>, String> {
    if !template.contains("{i}") {
        return Err(format!(
            "peer template `{template}` has no `{{i}}`: write the address of process i, e.g. \
             `meterflow-{{i}}.meterflow-peers:2101`"
        ));
    }
    let addresses: Vec<String> = (0..processes)
        .map(|i| template.replace("{i}", &i.to_string()))
        .collect();
    for a in &addresses {
        let port = a.rsplit_once(':').map(|(_, p)| p);
        if port.is_none_or(|p| p.parse::<u16>().is_err()) {
            return Err(format!(
                "peer template `{template}` gives `{a}`, which has no port: end it in `:<port>`"
            ));
        }
    }
    Ok(addresses)
}

/// The addresses listed in a hostfile: the first `processes` non-blank lines.
pub fn hostfile(text: &str, name: &str, processes: usize) -> Result<Vec<String>, String> {
    let addresses: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(processes)
        .map(String::from)
        .collect();
    if addresses.len() < processes {
        return Err(format!(
            "--hostfile {name} lists {} addresses but --processes is {processes}",
            addresses.len()
        ));
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_ordinal_is_its_process_index() {
        assert_eq!(ordinal("meterflow-0"), Ok(0));
        assert_eq!(ordinal("meterflow-12"), Ok(12));
        assert_eq!(ordinal("billing-meterflow-3"), Ok(3));
        for bad in [
            "meterflow",
            "meterflow-",
            "meterflow-a1",
            "meterflow-1b",
            "",
            "-",
        ] {
            let e = ordinal(bad).unwrap_err();
            assert!(e.contains("METERFLOW_POD_NAME"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_template_gives_every_process_its_stable_name() {
        assert_eq!(
            peers(
                "meterflow-{i}.meterflow-peers.billing.svc.cluster.local:2101",
                3
            )
            .unwrap(),
            [
                "meterflow-0.meterflow-peers.billing.svc.cluster.local:2101",
                "meterflow-1.meterflow-peers.billing.svc.cluster.local:2101",
                "meterflow-2.meterflow-peers.billing.svc.cluster.local:2101",
            ]
        );
        // Loopback addresses 127.0.0.10, .11: one port, as pods have.
        assert_eq!(
            peers("127.0.0.1{i}:2101", 2).unwrap(),
            ["127.0.0.10:2101", "127.0.0.11:2101"]
        );
        assert!(peers("meterflow-0.peers:2101", 2)
            .unwrap_err()
            .contains("has no `{i}`"));
        assert!(peers("meterflow-{i}.peers", 2)
            .unwrap_err()
            .contains("has no port"));
    }

    #[test]
    fn a_hostfile_must_list_every_process() {
        let text = "a:1\n\n  b:2 \nc:3\n";
        assert_eq!(hostfile(text, "hosts", 2).unwrap(), ["a:1", "b:2"]);
        assert!(hostfile(text, "hosts", 4)
            .unwrap_err()
            .contains("lists 3 addresses but --processes is 4"));
    }
}
