//! Access tokens the marketplace senders obtain and renew themselves, so a long
//! `export --follow` keeps sending after its first token expires:
//!
//! - a Google service account's key file: a JWT asserting the account, signed RS256 with its
//!   private key, exchanged at the key's `token_uri` (Google's OAuth 2.0 JWT bearer grant);
//! - an Azure managed identity: the instance metadata service of a VM or AKS node (IMDS), or the
//!   identity endpoint App Service and Container Apps give a process (`IDENTITY_ENDPOINT` and
//!   `IDENTITY_HEADER`);
//! - Azure's client-credentials grant of the offer's Entra ID application, proved by its client
//!   secret or by a certificate registered on it (a JWT client assertion signed RS256 with the
//!   certificate's private key, naming the certificate by its thumbprints).
//!
//! A token is used until a minute before its `expires_in`, or until the marketplace answers 401.

use std::path::Path;
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use openssl::x509::X509;
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

/// How an Entra ID application proves itself in the client-credentials grant.
pub enum ClientProof {
    Secret(String),
    Certificate(Certificate),
}

/// An Entra ID application's client-credentials grant, for `resource`.
pub struct ClientCredentials {
    pub token_url: hyper::Uri,
    pub client_id: String,
    pub proof: ClientProof,
    pub resource: &'static str,
}

impl ClientCredentials {
    /// The form of one token request, its assertion (if any) issued at `now` (Unix s).
    fn form(&self, now: i64) -> Result<String, String> {
        let proof = match &self.proof {
            ClientProof::Secret(secret) => format!("client_secret={}", form_encode(secret)),
            ClientProof::Certificate(certificate) => format!(
                "client_assertion_type={}&client_assertion={}",
                form_encode("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                certificate.assertion(&self.client_id, &self.token_url.to_string(), now)?
            ),
        };
        Ok(format!(
            "grant_type=client_credentials&client_id={}&{proof}&resource={}",
            form_encode(&self.client_id),
            self.resource
        ))
    }

    pub fn fetch(&self, http: &Http) -> Result<Token, Failure> {
        let form = self.form(unix_now()).map_err(Failure::permanent)?;
        // The answer names the problem (wrong secret, unknown certificate, unknown client);
        // never the secret.
        Token::from_answer(
            &post_form(http, &self.token_url, form)?,
            &self.token_url.to_string(),
        )
    }
}

/// A certificate registered on an Entra ID application, with its private key.
pub struct Certificate {
    key: PKey<Private>,
    /// SHA-1 and SHA-256 of the certificate's DER: how the assertion names it (`x5t`,
    /// `x5t#S256`).
    thumbprints: (Vec<u8>, Vec<u8>),
    /// Whole days until the certificate expires, when it was read (under 30: a warning).
    pub days_left: i32,
}

impl Certificate {
    /// Reads the certificate (PEM) from `path` and its private key from `key_path`, or from the
    /// same file (as `az ad sp create-for-rbac --create-cert` writes it), decrypting it with
    /// `password` when it is encrypted. Errors name `what` (the config key) and the fix, never
    /// the key.
    pub fn load(
        what: &str,
        path: &Path,
        key_path: Option<&Path>,
        password: Option<&str>,
    ) -> Result<Certificate, String> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| {
                format!(
                    "{what}: cannot read {} ({}); mount the application's certificate there or fix the path",
                    p.display(),
                    e.kind()
                )
            })
        };
        let pem = read(path)?;
        let cert = X509::from_pem(&pem).map_err(|_| {
            format!(
                "{what}: {} holds no PEM certificate; convert a .pfx with `openssl pkcs12 -in cert.pfx -out cert.pem -nodes`",
                path.display()
            )
        })?;
        let key_pem = match key_path {
            Some(p) => read(p)?,
            None => pem,
        };
        let key_file = key_path.unwrap_or(path).display();
        let encrypted = String::from_utf8_lossy(&key_pem).contains("ENCRYPTED");
        let key = match (encrypted, password) {
            (true, None) => {
                return Err(format!(
                    "{what}: the private key in {key_file} is encrypted; name its password with exports.azure.client_certificate_password_env or _file"
                ))
            }
            (true, Some(p)) => PKey::private_key_from_pem_passphrase(&key_pem, p.as_bytes())
                .map_err(|_| {
                    format!("{what}: cannot decrypt the private key in {key_file}; check exports.azure.client_certificate_password_env/_file")
                })?,
            (false, _) => PKey::private_key_from_pem(&key_pem).map_err(|_| {
                format!(
                    "{what}: {key_file} holds no PEM private key; give the certificate's key there or in exports.azure.client_certificate_key_file"
                )
            })?,
        };
        let matches = cert
            .public_key()
            .map(|public| public.public_eq(&key))
            .unwrap_or(false);
        if !matches {
            return Err(format!(
                "{what}: the private key in {key_file} is not the key of the certificate in {}; give the pair registered on the application",
                path.display()
            ));
        }
        if key.rsa().is_err() {
            return Err(format!(
                "{what}: the certificate's key is not RSA; Entra ID signs client assertions with RS256, so register an RSA certificate"
            ));
        }
        let now = Asn1Time::days_from_now(0).map_err(|e| e.to_string())?;
        if cert.not_after() < now {
            return Err(format!(
                "{what}: the certificate in {} expired on {}; upload a new certificate to the application and mount it here",
                path.display(),
                cert.not_after()
            ));
        }
        let days_left = now.diff(cert.not_after()).map_or(0, |d| d.days);
        if days_left < 30 {
            tracing::warn!(
                certificate = %path.display(),
                expires = %cert.not_after(),
                days_left,
                "the Azure application's certificate expires soon: upload a new one to the application and mount it here"
            );
        }
        let digest = |d: MessageDigest| {
            cert.digest(d)
                .map(|b| b.to_vec())
                .map_err(|e| e.to_string())
        };
        Ok(Certificate {
            thumbprints: (
                digest(MessageDigest::sha1())?,
                digest(MessageDigest::sha256())?,
            ),
            key,
            days_left,
        })
    }

    /// The client assertion of `client_id` for `audience` (the token endpoint), issued at `now`
    /// (Unix s), valid for ten minutes, with a unique `jti`.
    pub fn assertion(&self, client_id: &str, audience: &str, now: i64) -> Result<String, String> {
        let mut jti = [0u8; 16];
        openssl::rand::rand_bytes(&mut jti).map_err(|e| e.to_string())?;
        let header = serde_json::json!({
            "alg": "RS256",
            "typ": "JWT",
            "x5t": base64url(&self.thumbprints.0),
            "x5t#S256": base64url(&self.thumbprints.1),
        });
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "nbf": now,
            "iat": now,
            "exp": now + 600,
        });
        signed_jwt(&header, &claims, &self.key)
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `header.claims.signature`, each base64url, the signature RS256 by `key`.
fn signed_jwt(header: &Value, claims: &Value, key: &PKey<Private>) -> Result<String, String> {
    let input = format!(
        "{}.{}",
        base64url(header.to_string().as_bytes()),
        base64url(claims.to_string().as_bytes())
    );
    let mut signer = Signer::new(MessageDigest::sha256(), key).map_err(|e| e.to_string())?;
    signer.update(input.as_bytes()).map_err(|e| e.to_string())?;
    let signature = signer.sign_to_vec().map_err(|e| e.to_string())?;
    Ok(format!("{input}.{}", base64url(&signature)))
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
        let claims = serde_json::json!({
            "iss": self.email,
            "scope": SERVICE_CONTROL_SCOPE,
            "aud": self.token_uri.to_string(),
            "iat": now,
            "exp": now + 3600,
        });
        signed_jwt(
            &serde_json::json!({"alg": "RS256", "typ": "JWT"}),
            &claims,
            &self.key,
        )
    }

    pub fn fetch(&self, http: &Http) -> Result<Token, Failure> {
        let assertion = self.assertion(unix_now()).map_err(Failure::permanent)?;
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

    fn decode(s: &str) -> Vec<u8> {
        let mut b = s.replace('-', "+").replace('_', "/");
        while !b.len().is_multiple_of(4) {
            b.push('=');
        }
        openssl::base64::decode_block(&b).unwrap()
    }

    /// A self-signed RSA certificate valid for `days` from now (negative: already expired), and
    /// its key, as PEM.
    fn certificate(days: i32) -> (Vec<u8>, PKey<Private>) {
        let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "meterflow-metering")
            .unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        let (from, to) = if days < 0 {
            (2 * days, days)
        } else {
            (0, days)
        };
        let at = |d: i32| Asn1Time::from_unix(unix_now() + i64::from(d) * 86_400).unwrap();
        b.set_not_before(&at(from)).unwrap();
        b.set_not_after(&at(to)).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        (b.build().to_pem().unwrap(), key)
    }

    fn verifies(jwt: &str, key: &PKey<Private>) -> bool {
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        let mut verifier = openssl::sign::Verifier::new(MessageDigest::sha256(), key).unwrap();
        verifier.update(input.as_bytes()).unwrap();
        verifier.verify(&decode(signature)).unwrap()
    }

    #[test]
    fn a_certificate_assertion_names_the_certificate_and_its_key_signs_it() {
        let dir = std::env::temp_dir().join(format!("meterflow-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let what = "exports.azure.client_certificate_file";
        let (cert, key) = certificate(365);
        // Key and certificate in one file, the key first (as `az ad sp create-for-rbac
        // --create-cert` writes it).
        let both = dir.join("both.pem");
        std::fs::write(
            &both,
            [key.private_key_to_pem_pkcs8().unwrap(), cert.clone()].concat(),
        )
        .unwrap();
        let c = Certificate::load(what, &both, None, None).unwrap();
        assert!((364..=365).contains(&c.days_left), "{}", c.days_left);
        let audience = "https://login.microsoftonline.com/tenant-1/oauth2/token";
        let jwt = c.assertion("offer-app", audience, 1_780_000_000).unwrap();
        assert!(verifies(&jwt, &key));
        let parts: Vec<&str> = jwt.split('.').collect();
        let header: Value = serde_json::from_slice(&decode(parts[0])).unwrap();
        let claims: Value = serde_json::from_slice(&decode(parts[1])).unwrap();
        let x509 = X509::from_pem(&cert).unwrap();
        let thumb = |d| base64url(&x509.digest(d).unwrap());
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["x5t"], thumb(MessageDigest::sha1()));
        assert_eq!(header["x5t#S256"], thumb(MessageDigest::sha256()));
        assert_eq!(claims["aud"], audience);
        assert!(claims["iss"] == "offer-app" && claims["sub"] == "offer-app");
        assert_eq!(claims["nbf"], 1_780_000_000);
        assert_eq!(claims["exp"], 1_780_000_600);
        let again = c.assertion("offer-app", audience, 1_780_000_000).unwrap();
        let jti = |jwt: &str| {
            let claims: Value =
                serde_json::from_slice(&decode(jwt.split('.').nth(1).unwrap())).unwrap();
            claims["jti"].as_str().unwrap().to_string()
        };
        assert!(
            jti(&jwt).len() == 32 && jti(&jwt) != jti(&again),
            "jti is unique"
        );
        // The form carries the assertion, never a secret.
        let grant = ClientCredentials {
            token_url: audience.parse().unwrap(),
            client_id: "offer-app".into(),
            proof: ClientProof::Certificate(c),
            resource: "r",
        };
        let form = grant.form(1_780_000_000).unwrap();
        assert!(form.starts_with("grant_type=client_credentials&client_id=offer-app&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=ey"), "{form}");
        assert!(!form.contains("client_secret"));

        // Key in a file of its own, encrypted.
        let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_file, &cert).unwrap();
        let encrypted = key
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_256_cbc(), b"pa55")
            .unwrap();
        std::fs::write(&key_file, encrypted).unwrap();
        let e = Certificate::load(what, &cert_file, Some(&key_file), None)
            .err()
            .unwrap();
        assert!(e.contains("is encrypted; name its password with exports.azure.client_certificate_password_env"), "{e}");
        let e = Certificate::load(what, &cert_file, Some(&key_file), Some("wrong"))
            .err()
            .unwrap();
        assert!(e.contains("cannot decrypt") && !e.contains("wrong"), "{e}");
        let c = Certificate::load(what, &cert_file, Some(&key_file), Some("pa55")).unwrap();
        assert!(verifies(&c.assertion("a", "b", 1).unwrap(), &key));

        // A certificate that expires in 10 days still works (with a warning).
        let (soon, soon_key) = certificate(10);
        std::fs::write(
            &both,
            [soon_key.private_key_to_pem_pkcs8().unwrap(), soon].concat(),
        )
        .unwrap();
        let c = Certificate::load(what, &both, None, None).unwrap();
        assert!((9..=10).contains(&c.days_left), "{}", c.days_left);

        // Another certificate's key, an expired certificate, a key with no certificate.
        let (_, other) = certificate(365);
        std::fs::write(&key_file, other.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let e = Certificate::load(what, &cert_file, Some(&key_file), None)
            .err()
            .unwrap();
        assert!(e.contains("is not the key of the certificate"), "{e}");
        let (old, old_key) = certificate(-1);
        std::fs::write(
            &both,
            [old, old_key.private_key_to_pem_pkcs8().unwrap()].concat(),
        )
        .unwrap();
        let e = Certificate::load(what, &both, None, None).err().unwrap();
        assert!(
            e.contains("expired on") && e.contains("upload a new certificate"),
            "{e}"
        );
        let e = Certificate::load(what, &key_file, None, None)
            .err()
            .unwrap();
        assert!(
            e.starts_with(what) && e.contains("holds no PEM certificate"),
            "{e}"
        );
        assert!(!e.contains("PRIVATE KEY"), "{e}");
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
