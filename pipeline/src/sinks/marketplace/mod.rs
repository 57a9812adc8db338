//! Sending marketplace metering requests (`meterflow export ... --send`): AWS Marketplace
//! Metering Service ([`aws`]), Azure Marketplace metering ([`azure`]) and Google Cloud Service
//! Control ([`gcp`]), each behind [`Marketplace`], over HTTPS with the credentials `[exports]`
//! names (secrets from environment variables or files only).
//!
//! Nothing is sent unless `--send` is given: by default an export only writes the request files.
//! A request is retried with backoff while the marketplace throttles, fails on its side or does
//! not answer; once `max_attempts` are spent its records are `failed`, which the next export
//! plans again. Each record's own answer becomes its status in the `exports` table.

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod outcome;
pub mod tokens;

pub use outcome::{all_failed, Marketplace, Outcome, Status};

use std::path::PathBuf;
use std::time::Duration;

use meterflow_schemas::catalog::MarketplaceKind;
use meterflow_schemas::time::{EventTime, Span};
use serde::Deserialize;

use crate::config::secrets;
use crate::sinks::http::Http;

/// The oldest usage hour a live send may date a record at (AWS takes timestamps up to 6 hours
/// old, Azure up to 24): earlier hours are sent together as one record at the export's hour.
/// One hour of margin for the time the export itself takes.
pub fn oldest_hour(kind: MarketplaceKind, at: EventTime) -> Option<EventTime> {
    const HOUR: i64 = 3_600_000;
    let at_hour = at.0.div_euclid(HOUR) * HOUR;
    match kind {
        MarketplaceKind::Aws => Some(EventTime(at_hour - 5 * HOUR)),
        MarketplaceKind::Azure => Some(EventTime(at_hour - 23 * HOUR)),
        MarketplaceKind::Gcp => None,
    }
}

/// `[exports]` in the config: how `meterflow export --send` reaches each marketplace.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportsConfig {
    pub aws: AwsConfig,
    pub azure: AzureConfig,
    pub gcp: GcpConfig,
    /// Attempts per request (throttled, a marketplace error, no answer) before its records
    /// are recorded as failed.
    pub max_attempts: u32,
    /// Per-request timeout.
    pub timeout: Span,
}

impl Default for ExportsConfig {
    fn default() -> Self {
        ExportsConfig {
            aws: AwsConfig::default(),
            azure: AzureConfig::default(),
            gcp: GcpConfig::default(),
            max_attempts: 5,
            timeout: Span(30_000),
        }
    }
}

/// `[exports.aws]`: AWS Marketplace Metering Service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    pub region: String,
    /// Default `https://metering.marketplace.<region>.amazonaws.com`.
    pub endpoint: Option<String>,
    /// Default: `AWS_ACCESS_KEY_ID`.
    pub access_key_id_env: Option<String>,
    pub access_key_id_file: Option<PathBuf>,
    /// Default: `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key_env: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    /// Default: `AWS_SESSION_TOKEN` when it is set (temporary credentials).
    pub session_token_env: Option<String>,
    pub session_token_file: Option<PathBuf>,
}

impl Default for AwsConfig {
    fn default() -> Self {
        AwsConfig {
            region: "us-east-1".into(),
            endpoint: None,
            access_key_id_env: None,
            access_key_id_file: None,
            secret_access_key_env: None,
            secret_access_key_file: None,
            session_token_env: None,
            session_token_file: None,
        }
    }
}

/// `[exports.azure]`: Azure Marketplace metering, as the offer's Entra ID application.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureConfig {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret_env: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    /// Or a certificate registered on the application (PEM), instead of a secret: each token
    /// request carries a client assertion signed with its private key, which is in the same
    /// file or in `client_certificate_key_file`.
    pub client_certificate_file: Option<PathBuf>,
    pub client_certificate_key_file: Option<PathBuf>,
    /// The password of an encrypted private key.
    pub client_certificate_password_env: Option<String>,
    pub client_certificate_password_file: Option<PathBuf>,
    pub login_endpoint: String,
    pub endpoint: String,
    /// Tokens from the managed identity of the VM, AKS node or app meterflow runs on instead of
    /// the application's client secret (`tenant_id`, `client_id` and the secret are then unused).
    pub managed_identity: bool,
    /// A user-assigned identity's client id; empty: the system-assigned identity.
    pub managed_identity_client_id: String,
    /// The instance metadata service's token endpoint (App Service and Container Apps set
    /// `IDENTITY_ENDPOINT`, which wins).
    pub managed_identity_endpoint: String,
}

impl Default for AzureConfig {
    fn default() -> Self {
        AzureConfig {
            tenant_id: String::new(),
            client_id: String::new(),
            client_secret_env: None,
            client_secret_file: None,
            client_certificate_file: None,
            client_certificate_key_file: None,
            client_certificate_password_env: None,
            client_certificate_password_file: None,
            login_endpoint: "https://login.microsoftonline.com".into(),
            endpoint: "https://marketplaceapi.microsoft.com".into(),
            managed_identity: false,
            managed_identity_client_id: String::new(),
            managed_identity_endpoint: "http://169.254.169.254/metadata/identity/oauth2/token"
                .into(),
        }
    }
}

/// `[exports.gcp]`: Google Cloud Service Control.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcpConfig {
    /// The JSON key of the service account the product reports as: meterflow signs its own
    /// token requests and renews tokens as they expire.
    pub service_account_key_file: Option<PathBuf>,
    /// Or a ready OAuth access token of that account (e.g. `gcloud auth print-access-token`),
    /// used until it is refused.
    pub access_token_env: Option<String>,
    pub access_token_file: Option<PathBuf>,
    pub endpoint: String,
}

impl Default for GcpConfig {
    fn default() -> Self {
        GcpConfig {
            service_account_key_file: None,
            access_token_env: None,
            access_token_file: None,
            endpoint: "https://servicecontrol.googleapis.com".into(),
        }
    }
}

/// A secret from `[exports.<m>] <name>_env` / `<name>_file`, or from `default_env` when neither
/// is set.
fn secret(
    section: &str,
    name: &str,
    (env, file): (&Option<String>, &Option<PathBuf>),
    default_env: Option<&str>,
) -> Result<Option<String>, String> {
    let env = match (env, file, default_env) {
        (None, None, Some(d)) => Some(d),
        _ => env.as_deref(),
    };
    secrets::read(
        &format!("exports.{section}.{name}_env/{name}_file"),
        env,
        file.as_deref(),
    )
}

fn url(key: &str, text: &str) -> Result<hyper::Uri, String> {
    let u: hyper::Uri = text.parse().map_err(|e| {
        format!("exports.{key} `{text}` is not a URL ({e}); write it like https://host[:port]")
    })?;
    if !matches!(u.scheme_str(), Some("http" | "https")) || u.authority().is_none() {
        return Err(format!(
            "exports.{key} `{text}` is not an http(s) URL; write it like https://host[:port]"
        ));
    }
    Ok(u)
}

/// The sender of `kind`, or what in `[exports]` is missing or wrong (nothing is sent then).
pub fn connect(kind: MarketplaceKind, cfg: &ExportsConfig) -> Result<Box<dyn Marketplace>, String> {
    let max_attempts = cfg.max_attempts.max(1);
    let timeout = cfg.timeout.millis().max(1);
    let http = Http::new("marketplace sender", Duration::from_millis(timeout as u64))?;
    let trimmed = |s: &str| s.trim_end_matches('/').to_string();
    Ok(match kind {
        MarketplaceKind::Aws => {
            let c = &cfg.aws;
            let required = |name: &str, pair, default| -> Result<String, String> {
                Ok(secret("aws", name, pair, Some(default))?.unwrap_or_default())
            };
            let access_key_id = required(
                "access_key_id",
                (&c.access_key_id_env, &c.access_key_id_file),
                "AWS_ACCESS_KEY_ID",
            )?;
            let secret_access_key = required(
                "secret_access_key",
                (&c.secret_access_key_env, &c.secret_access_key_file),
                "AWS_SECRET_ACCESS_KEY",
            )?;
            let token_pair = (&c.session_token_env, &c.session_token_file);
            let session_token = match token_pair {
                (None, None) => std::env::var("AWS_SESSION_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
                _ => secret("aws", "session_token", token_pair, None)?,
            };
            if c.region.is_empty()
                || !c
                    .region
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(format!(
                    "exports.aws.region `{}` is not an AWS region; write it like \"us-east-1\" (Marketplace metering runs in us-east-1)",
                    c.region
                ));
            }
            let endpoint = c.endpoint.clone().unwrap_or_else(|| {
                format!("https://metering.marketplace.{}.amazonaws.com/", c.region)
            });
            Box::new(aws::Aws {
                http,
                url: url("aws.endpoint", &endpoint)?,
                region: c.region.clone(),
                credentials: aws::Credentials {
                    access_key_id,
                    secret_access_key,
                    session_token,
                },
                max_attempts,
            })
        }
        MarketplaceKind::Azure => {
            let c = &cfg.azure;
            let credential = if c.managed_identity {
                azure::Credential::ManagedIdentity(tokens::ManagedIdentity::new(
                    &c.managed_identity_endpoint,
                    &c.managed_identity_client_id,
                    azure::METERING_RESOURCE,
                )?)
            } else {
                for (key, v) in [("tenant_id", &c.tenant_id), ("client_id", &c.client_id)] {
                    if v.is_empty() {
                        return Err(format!(
                            "exports.azure.{key} is not set; write the {} of the Entra ID application registered for the SaaS offer (or set exports.azure.managed_identity = true)",
                            key.replace('_', " ")
                        ));
                    }
                }
                let client_secret = secret(
                    "azure",
                    "client_secret",
                    (&c.client_secret_env, &c.client_secret_file),
                    None,
                )?;
                let proof = match (client_secret, &c.client_certificate_file) {
                    (Some(_), Some(_)) => return Err("exports.azure: give either client_secret_env/client_secret_file or client_certificate_file, not both".into()),
                    (Some(secret), None) => tokens::ClientProof::Secret(secret),
                    (None, Some(path)) => {
                        let password = secret(
                            "azure",
                            "client_certificate_password",
                            (&c.client_certificate_password_env, &c.client_certificate_password_file),
                            None,
                        )?;
                        tokens::ClientProof::Certificate(tokens::Certificate::load(
                            "exports.azure.client_certificate_file",
                            path,
                            c.client_certificate_key_file.as_deref(),
                            password.as_deref(),
                        )?)
                    }
                    (None, None) => return Err("exports.azure.client_secret_env/client_secret_file: neither is set; name the environment variable or file holding the application's client secret, or give client_certificate_file (or set exports.azure.managed_identity = true)".into()),
                };
                azure::Credential::Application(tokens::ClientCredentials {
                    token_url: url(
                        "azure.login_endpoint",
                        &format!(
                            "{}/{}/oauth2/token",
                            trimmed(&c.login_endpoint),
                            c.tenant_id
                        ),
                    )?,
                    client_id: c.client_id.clone(),
                    proof,
                    resource: azure::METERING_RESOURCE,
                })
            };
            Box::new(azure::Azure {
                http,
                credential,
                usage_url: url(
                    "azure.endpoint",
                    &format!(
                        "{}/api/batchUsageEvent?api-version=2018-08-31",
                        trimmed(&c.endpoint)
                    ),
                )?,
                token: tokens::Cached::default(),
                max_attempts,
            })
        }
        MarketplaceKind::Gcp => {
            let c = &cfg.gcp;
            let ready = secret(
                "gcp",
                "access_token",
                (&c.access_token_env, &c.access_token_file),
                None,
            )?;
            let credential = match (&c.service_account_key_file, ready) {
                (Some(_), Some(_)) => return Err("exports.gcp: give either service_account_key_file or access_token_env/access_token_file, not both".into()),
                (Some(path), None) => gcp::Credential::ServiceAccount(tokens::ServiceAccount::load(
                    "exports.gcp.service_account_key_file",
                    path,
                )?),
                (None, Some(token)) => gcp::Credential::Ready(token),
                (None, None) => return Err("exports.gcp: no credential; set service_account_key_file to the product's service account key (JSON), or name an access token with access_token_env or access_token_file".into()),
            };
            url("gcp.endpoint", &c.endpoint)?;
            Box::new(gcp::Gcp {
                http,
                endpoint: format!("{}/v1/services/", trimmed(&c.endpoint)),
                credential,
                token: tokens::Cached::default(),
                max_attempts,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_sends_date_records_within_what_each_marketplace_takes() {
        let at = EventTime::parse_rfc3339("2026-12-04T10:40:00Z").unwrap();
        let t = |s| Some(EventTime::parse_rfc3339(s).unwrap());
        assert_eq!(
            oldest_hour(MarketplaceKind::Aws, at),
            t("2026-12-04T05:00:00Z")
        );
        assert_eq!(
            oldest_hour(MarketplaceKind::Azure, at),
            t("2026-12-03T11:00:00Z")
        );
        assert_eq!(oldest_hour(MarketplaceKind::Gcp, at), None);
    }

    #[test]
    fn missing_credentials_name_the_key_and_never_a_secret() {
        let mut cfg = ExportsConfig::default();
        cfg.aws.access_key_id_env = Some("METERFLOW_TEST_UNSET_AWS_KEY".into());
        let e = connect(MarketplaceKind::Aws, &cfg).err().unwrap();
        assert!(
            e.contains("exports.aws.access_key_id_env/access_key_id_file")
                && e.contains("METERFLOW_TEST_UNSET_AWS_KEY, which is not set"),
            "{e}"
        );
        let e = connect(MarketplaceKind::Azure, &cfg).err().unwrap();
        assert!(e.contains("exports.azure.tenant_id is not set"), "{e}");
        cfg.azure.tenant_id = "t".into();
        cfg.azure.client_id = "c".into();
        let e = connect(MarketplaceKind::Azure, &cfg).err().unwrap();
        assert!(
            e.contains("client_secret_env/client_secret_file: neither is set"),
            "{e}"
        );
        std::env::set_var("METERFLOW_TEST_AZURE_SECRET", "s3cr3t-azure");
        cfg.azure.client_secret_env = Some("METERFLOW_TEST_AZURE_SECRET".into());
        cfg.azure.client_certificate_file = Some("/nonexistent/metering.pem".into());
        let e = connect(MarketplaceKind::Azure, &cfg).err().unwrap();
        assert!(
            e.contains(
                "give either client_secret_env/client_secret_file or client_certificate_file"
            ),
            "{e}"
        );
        cfg.azure.client_secret_env = None;
        let e = connect(MarketplaceKind::Azure, &cfg).err().unwrap();
        assert!(
            e.starts_with(
                "exports.azure.client_certificate_file: cannot read /nonexistent/metering.pem"
            ),
            "{e}"
        );
        cfg.azure.client_certificate_file = None;
        cfg.azure.client_secret_env = Some("METERFLOW_TEST_AZURE_SECRET".into());
        cfg.azure.login_endpoint = "ftp://login".into();
        let e = connect(MarketplaceKind::Azure, &cfg).err().unwrap();
        assert!(
            e.contains("exports.azure.login_endpoint") && !e.contains("s3cr3t"),
            "{e}"
        );
        let e = connect(MarketplaceKind::Gcp, &cfg).err().unwrap();
        assert!(
            e.contains("exports.gcp: no credential; set service_account_key_file"),
            "{e}"
        );
    }
}
