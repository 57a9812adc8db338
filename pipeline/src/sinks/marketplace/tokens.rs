//! Access tokens the marketplace senders obtain and renew themselves, so a long
//! `export --follow` keeps sending after its first token expires:
//!
//! - a Google service account's key file: a JWT asserting the account, signed RS256 with its
//!   private key, exchanged at the key's `token_uri` (Google's OAuth 2.0 JWT bearer grant);
//! - an Azure managed identity: the instance metadata service of a VM or AKS node (IMDS), or the
//!   identity endpoint App Service and Container Apps give a process (`IDENTITY_ENDPOINT` and
//!   `IDENTITY_HEADER`);
//! - Azure's client-credentials grant of the offer's Entra ID application.
//!
//! A token is used until a minute before its `expires_in`, or until the marketplace answers 401.

use std::path::Path;
use std::time::{Duration, Instant};

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use serde_json::Value;

use crate::sinks::http::{form_encode, Answer, Failure, Http};

/// The OAuth scope Service Control reports need.
pub const SERVICE_CONTROL_SCOPE: &str = "https://www.googleapis.com/auth/servicecontrol";

/// An access token and when to stop using it.
#[derive(Clone, Debug)]
pub struct Token {
    pub value: String,
    renew_at: Instant,
}

impl Token {
    /// A token given ready-made (no expiry known: used until a 401).
    pub fn fixed(value: String) -> Token {
        Token {
            value,
            renew_at: Instant::now() + Duration::from_secs(100 * 365 * 86_400),
        }
    }

    pub fn fresh(&self) -> bool {
        Instant::now() < self.renew_at
    }

    /// The token in an OAuth answer (`access_token`, `expires_in` as a number or a string), or
    /// what `from` said instead; never echoes a secret the request carried.
    pub fn from_answer(answer: &Answer, from: &str) -> Result<Token, Failure> {
        let json: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        if !answer.is_success() {
            let why = json["error_description"]
                .as_str()
                .or_else(|| json["error"].as_str())
                .or_else(|| json["error"]["message"].as_str())
                .unwrap_or(answer.body.trim());
            return Err(Failure {
                error: format!("no token from {from} (HTTP {}): {why}", answer.status),
                retry: answer.is_transient(),
            });
        }
        let value = json["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Failure::permanent(format!("{from} answered without an access_token")))?
            .to_string();
        let seconds = match &json["expires_in"] {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(3600);
        Ok(Token {
            value,
            renew_at: Instant::now() + Duration::from_secs(seconds.saturating_sub(60).max(1)),
        })
    }
}

/// The token in use, fetched again once it is stale or was refused.
#[derive(Default)]
pub struct Cached(Option<Token>);

impl Cached {
    pub fn get(
        &mut self,
        fetch: impl FnOnce() -> Result<Token, Failure>,
    ) -> Result<String, Failure> {
        if let Some(t) = self.0.as_ref().filter(|t| t.fresh()) {
            return Ok(t.value.clone());
        }
        let token = fetch()?;
        let value = token.value.clone();
        self.0 = Some(token);
        Ok(value)
    }

    /// The marketplace answered 401: the next request fetches a new token.
    pub fn forget(&mut self) {
        self.0 = None;
    }
}

/// One OAuth token request: `form` posted to `url`.
fn post_form(http: &Http, url: &hyper::Uri, form: String) -> Result<Answer, Failure> {
    http.post(
        url,
        &[(
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        )],
        form.into_bytes(),
    )
}

/// An Entra ID application's client-credentials grant, for `resource`.
pub struct ClientSecret {
    pub token_url: hyper::Uri,
    pub client_id: String,
    pub client_secret: String,
    pub resource: &'static str,
}

impl ClientSecret {
    pub fn fetch(&self, http: &Http) -> Result<Token, Failure> {
        let form = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}&resource={}",
            form_encode(&self.client_id),
            form_encode(&self.client_secret),
            self.resource
        );
        // The answer names the problem (wrong secret, unknown client); never the secret.
        Token::from_answer(
            &post_form(http, &self.token_url, form)?,
            &self.token_url.to_string(),
        )
    }
}

/// A Google service account, from its JSON key file.
pub struct ServiceAccount {
    pub email: String,
    key: PKey<Private>,
    pub token_uri: hyper::Uri,
}

fn base64url(bytes: &[u8]) -> String {
    openssl::base64::encode_block(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

impl ServiceAccount {
    /// Reads a key file (`type = service_account`, `client_email`, `private_key`, `token_uri`);
    /// errors name `key` (the config key) and the fix, never the key's contents.
    pub fn load(key: &str, path: &Path) -> Result<ServiceAccount, String> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            format!(
                "{key}: cannot read {} ({}); mount the service account's JSON key there or fix the path",
                path.display(),
                e.kind()
            )
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|_| {
            format!(
                "{key}: {} is not JSON; it must be a service account key as `gcloud iam service-accounts keys create` writes it",
                path.display()
            )
        })?;
        if json["type"] != "service_account" {
            return Err(format!(
                "{key}: {} is not a service account key (its `type` is {}); create one with `gcloud iam service-accounts keys create`",
                path.display(),
                json["type"]
            ));
        }
        let field = |name: &str| -> Result<&str, String> {
            json[name]
                .as_str()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    format!(
                        "{key}: {} has no `{name}`; download the key again",
                        path.display()
                    )
                })
        };
        let email = field("client_email")?.to_string();
        let pem = field("private_key")?;
        let key_pem = PKey::private_key_from_pem(pem.as_bytes()).map_err(|_| {
            format!(
                "{key}: the `private_key` of {} is not a PEM private key; download the key again",
                path.display()
            )
        })?;
        let uri = json["token_uri"]
            .as_str()
            .unwrap_or("https://oauth2.googleapis.com/token");
        let token_uri = uri
            .parse()
            .map_err(|_| format!("{key}: the `token_uri` of {} is not a URL", path.display()))?;
        Ok(ServiceAccount {
            email,
            key: key_pem,
            token_uri,
        })
    }

    /// The signed JWT asserting this account for Service Control, issued at `now` (Unix s), valid
    /// for an hour (the longest Google takes).
    pub fn assertion(&self, now: i64) -> Result<String, String> {
        let header = base64url(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = serde_json::json!({
            "iss": self.email,
            "scope": SERVICE_CONTROL_SCOPE,
            "aud": self.token_uri.to_string(),
            "iat": now,
            "exp": now + 3600,
        });
        let input = format!("{header}.{}", base64url(claims.to_string().as_bytes()));
        let mut signer =
            Signer::new(MessageDigest::sha256(), &self.key).map_err(|e| e.to_string())?;
        signer.update(input.as_bytes()).map_err(|e| e.to_string())?;
        let signature = signer.sign_to_vec().map_err(|e| e.to_string())?;
        Ok(format!("{input}.{}", base64url(&signature)))
    }

    pub fn fetch(&self, http: &Http) -> Result<Token, Failure> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let assertion = self.assertion(now).map_err(Failure::permanent)?;
        let form = format!(
            "grant_type={}&assertion={assertion}",
            form_encode("urn:ietf:params:oauth:grant-type:jwt-bearer")
        );
        let answer = post_form(http, &self.token_uri, form)?;
        Token::from_answer(&answer, &format!("{} for {}", self.token_uri, self.email))
    }
}

/// An Azure managed identity.
pub struct ManagedIdentity {
    url: hyper::Uri,
    header: (&'static str, String),
}

impl ManagedIdentity {
    /// The identity endpoint the platform gave this process (`IDENTITY_ENDPOINT` and
    /// `IDENTITY_HEADER`: App Service, Container Apps), else the instance metadata service at
    /// `imds` (VMs, AKS); `client_id` picks a user-assigned identity.
    pub fn new(imds: &str, client_id: &str, resource: &str) -> Result<ManagedIdentity, String> {
        let platform = (
            std::env::var("IDENTITY_ENDPOINT").ok(),
            std::env::var("IDENTITY_HEADER").ok(),
        );
        let (base, version, header) = match platform {
            (Some(endpoint), Some(secret)) if !endpoint.is_empty() => {
                (endpoint, "2019-08-01", ("x-identity-header", secret))
            }
            _ => (
                imds.to_string(),
                "2018-02-01",
                ("metadata", "true".to_string()),
            ),
        };
        let mut text = format!("{base}?api-version={version}&resource={resource}");
        if !client_id.is_empty() {
            text.push_str(&format!("&client_id={}", form_encode(client_id)));
        }
        let url = text.parse().map_err(|_| {
            format!("exports.azure.managed_identity_endpoint `{base}` is not a URL; write it like http://169.254.169.254/metadata/identity/oauth2/token")
        })?;
        Ok(ManagedIdentity { url, header })
    }

    pub fn fetch(&self, http: &Http) -> Result<Token, Failure> {
        let answer = http.get(&self.url, &[(self.header.0, self.header.1.clone())])?;
        Token::from_answer(&answer, "the managed identity endpoint")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path) -> std::path::PathBuf {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let pem = String::from_utf8(rsa.private_key_to_pem().unwrap()).unwrap();
        let path = dir.join("key.json");
        let json = serde_json::json!({
            "type": "service_account",
            "client_email": "meter@acme-saas.iam.gserviceaccount.com",
            "private_key": pem,
            "token_uri": "http://127.0.0.1:9/token",
        });
        std::fs::write(&path, json.to_string()).unwrap();
        path
    }

    #[test]
    fn a_service_account_assertion_is_an_rs256_jwt_its_public_key_verifies() {
        let dir = std::env::temp_dir().join(format!("meterflow-sa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let account =
            ServiceAccount::load("exports.gcp.service_account_key_file", &key_file(&dir)).unwrap();
        let jwt = account.assertion(1_780_000_000).unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let decode = |s: &str| {
            let mut b = s.replace('-', "+").replace('_', "/");
            while !b.len().is_multiple_of(4) {
                b.push('=');
            }
            openssl::base64::decode_block(&b).unwrap()
        };
        let claims: Value = serde_json::from_slice(&decode(parts[1])).unwrap();
        assert_eq!(claims["iss"], "meter@acme-saas.iam.gserviceaccount.com");
        assert_eq!(claims["aud"], "http://127.0.0.1:9/token");
        assert_eq!(claims["scope"], SERVICE_CONTROL_SCOPE);
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            3600
        );
        let mut verifier =
            openssl::sign::Verifier::new(MessageDigest::sha256(), &account.key).unwrap();
        verifier
            .update(format!("{}.{}", parts[0], parts[1]).as_bytes())
            .unwrap();
        assert!(verifier.verify(&decode(parts[2])).unwrap());
        // A tampered claim no longer verifies.
        let mut verifier =
            openssl::sign::Verifier::new(MessageDigest::sha256(), &account.key).unwrap();
        verifier
            .update(format!("{}.{}x", parts[0], parts[1]).as_bytes())
            .unwrap();
        assert!(!verifier.verify(&decode(parts[2])).unwrap());
    }

    #[test]
    fn a_bad_key_file_names_the_key_and_the_fix_never_its_contents() {
        let dir = std::env::temp_dir().join(format!("meterflow-sa-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let k = "exports.gcp.service_account_key_file";
        let e = ServiceAccount::load(k, &dir.join("absent.json"))
            .err()
            .unwrap();
        assert!(
            e.starts_with(k) && e.contains("mount the service account's JSON key"),
            "{e}"
        );
        let path = dir.join("user.json");
        std::fs::write(
            &path,
            r#"{"type": "authorized_user", "client_secret": "zz-secret"}"#,
        )
        .unwrap();
        let e = ServiceAccount::load(k, &path).err().unwrap();
        assert!(
            e.contains("not a service account key") && !e.contains("zz-secret"),
            "{e}"
        );
        std::fs::write(
            &path,
            r#"{"type": "service_account", "client_email": "a@b", "private_key": "zz-not-pem"}"#,
        )
        .unwrap();
        let e = ServiceAccount::load(k, &path).err().unwrap();
        assert!(
            e.contains("not a PEM private key") && !e.contains("zz-not-pem"),
            "{e}"
        );
    }

    #[test]
    fn token_answers_give_the_token_and_when_to_renew_it() {
        let answer = |status, body: &str| Answer {
            status,
            body: body.to_string(),
        };
        let t = Token::from_answer(
            &answer(200, r#"{"access_token": "t1", "expires_in": "3599"}"#),
            "x",
        )
        .unwrap();
        assert!(t.value == "t1" && t.fresh());
        let t = Token::from_answer(
            &answer(200, r#"{"access_token": "t2", "expires_in": 30}"#),
            "x",
        )
        .unwrap();
        assert!(t.fresh(), "renewed after a second at the earliest");
        let e = Token::from_answer(
            &answer(
                400,
                r#"{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}"#,
            ),
            "the token endpoint",
        )
        .err()
        .unwrap();
        assert!(
            !e.retry && e.error.contains("Invalid JWT Signature."),
            "{}",
            e.error
        );
        assert!(
            Token::from_answer(&answer(503, "busy"), "x")
                .err()
                .unwrap()
                .retry
        );
    }
}
