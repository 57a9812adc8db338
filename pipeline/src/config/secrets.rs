//! Secrets — the ClickHouse password, Kafka SASL and TLS key passwords, producers' HMAC keys —
//! come from an environment variable or a file (a Kubernetes Secret mounted as a volume, a
//! Docker secret), never from the config file itself. meterflow never logs, prints or stores
//! their values: errors name the variable or the file, not what it holds.

use std::path::Path;

/// Reads the secret `what` (a config key, for messages) from the environment variable `env` or
/// from `file` (one trailing newline ignored). `Ok(None)` when neither is given.
pub fn read(what: &str, env: Option<&str>, file: Option<&Path>) -> Result<Option<String>, String> {
    let value = match (env, file) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(format!(
                "{what}: give either an environment variable or a file, not both"
            ))
        }
        (Some(var), None) => std::env::var(var).map_err(|_| {
            format!("{what} names {var}, which is not set; export it before starting meterflow")
        })?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| {
                format!(
                    "{what}: cannot read {} ({}); mount the secret there or fix the path",
                    path.display(),
                    e.kind()
                )
            })?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
    };
    if value.is_empty() {
        return Err(format!(
            "{what}: the secret is empty; put the value in {}",
            env.map_or_else(
                || file.map(|f| f.display().to_string()).unwrap_or_default(),
                String::from
            )
        ));
    }
    Ok(Some(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_comes_from_a_file_or_the_environment_and_errors_never_show_it() {
        let dir = std::env::temp_dir().join(format!("meterflow-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3cr3t-from-file\n").unwrap();
        assert_eq!(
            read("clickhouse.password_file", None, Some(&file)).unwrap(),
            Some("s3cr3t-from-file".into())
        );
        std::env::set_var("METERFLOW_TEST_SECRET_A", "s3cr3t-from-env");
        assert_eq!(
            read("x", Some("METERFLOW_TEST_SECRET_A"), None).unwrap(),
            Some("s3cr3t-from-env".into())
        );
        assert_eq!(read("x", None, None).unwrap(), None);
        let both = read("x", Some("METERFLOW_TEST_SECRET_A"), Some(&file)).unwrap_err();
        assert!(
            both.contains("not both") && !both.contains("s3cr3t"),
            "{both}"
        );
        let unset = read("x", Some("METERFLOW_TEST_SECRET_UNSET"), None).unwrap_err();
        assert!(
            unset.contains("METERFLOW_TEST_SECRET_UNSET, which is not set"),
            "{unset}"
        );
        let missing = read("x", None, Some(&dir.join("nope"))).unwrap_err();
        assert!(
            missing.contains("cannot read") && missing.contains("nope"),
            "{missing}"
        );
        std::fs::write(&file, "\n").unwrap();
        assert!(read("x", None, Some(&file)).unwrap_err().contains("empty"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
