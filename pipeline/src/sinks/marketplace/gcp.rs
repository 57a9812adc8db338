//! Google Cloud Service Control `services.report`, for a SaaS product sold on Google Cloud
//! Marketplace, with an OAuth access token of the service account the product reports as: from
//! its key file, renewed as tokens expire ([`super::tokens`]), or given ready-made.
//!
//! Service Control recognises an operation it had by its `operationId` (the record key); an
//! operation it refuses comes back in `reportErrors` and is `failed`, with its message, and
//! planned again by the next export; the others are `sent`.

use serde_json::Value;

use super::outcome::{all_failed, answered, Marketplace, Outcome, Status};
use super::tokens::{Cached, ServiceAccount, Token};
use crate::sinks::http::{Failure, Http};

/// How the sender gets its tokens.
pub enum Credential {
    ServiceAccount(ServiceAccount),
    /// A token given ready-made: used until refused.
    Ready(String),
}

pub struct Gcp {
    pub(super) http: Http,
    /// Up to `/v1/services/`; the service name and `:report` follow.
    pub(super) endpoint: String,
    pub(super) credential: Credential,
    pub(super) token: Cached,
    pub(super) max_attempts: u32,
}

/// The outcome of each operation of `body` from a `services.report` answer.
fn outcomes(body: &Value, answer: &Value) -> Vec<Outcome> {
    let errors = answer["reportErrors"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    body["operations"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|op| {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            match errors
                .iter()
                .find(|e| e["operationId"].as_str() == Some(&id))
            {
                None => Outcome::new(Status::Sent, id, ""),
                Some(e) => {
                    let detail = format!(
                        "code {}: {}",
                        e["status"]["code"],
                        e["status"]["message"].as_str().unwrap_or_default()
                    );
                    Outcome::new(Status::Failed, id, &detail)
                }
            }
        })
        .collect()
}

impl Gcp {
    fn token(&mut self) -> Result<String, Failure> {
        let http = &self.http;
        self.token.get(|| match &self.credential {
            Credential::ServiceAccount(account) => account.fetch(http),
            Credential::Ready(value) => Ok(Token::fixed(value.clone())),
        })
    }

    fn attempt(&mut self, url: &hyper::Uri, payload: &[u8]) -> Result<Value, Failure> {
        let headers = [
            ("content-type", "application/json".to_string()),
            ("authorization", format!("Bearer {}", self.token()?)),
        ];
        let answer = self.http.post(url, &headers, payload.to_vec())?;
        let json: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        if answer.is_success() && json.is_object() {
            return Ok(json);
        }
        if answer.status == 401 {
            if let Credential::ServiceAccount(_) = self.credential {
                // An expired or revoked token: the retry asks for a new one.
                self.token.forget();
                return Err(Failure::transient(format!(
                    "HTTP 401: {}",
                    answer.body.trim()
                )));
            }
        }
        let message = json["error"]["message"]
            .as_str()
            .unwrap_or(answer.body.trim());
        Err(Failure {
            error: format!("HTTP {}: {message}", answer.status),
            retry: answer.is_transient(),
        })
    }
}

impl Marketplace for Gcp {
    fn send(&mut self, product: &str, body: &Value) -> Vec<Outcome> {
        let n = body["operations"].as_array().map_or(0, Vec::len);
        let url = format!("{}{product}:report", self.endpoint);
        let url: hyper::Uri = match url.parse() {
            Ok(u) => u,
            Err(e) => return all_failed(n, &format!("services.report: {url}: {e}")),
        };
        let payload = body.to_string().into_bytes();
        answered(
            "services.report",
            n,
            self.max_attempts,
            || self.attempt(&url, &payload),
            |answer| outcomes(body, answer),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_in_report_errors_fail_and_the_rest_are_sent() {
        let body = json!({"operations": [{"operationId": "o1"}, {"operationId": "o2"}]});
        let answer = json!({"reportErrors": [{"operationId": "o2", "status": {"code": 3, "message": "unknown metric"}}]});
        let got: Vec<(Status, String, String)> = outcomes(&body, &answer)
            .into_iter()
            .map(|o| (o.status, o.id, o.detail))
            .collect();
        assert_eq!(
            got,
            vec![
                (Status::Sent, "o1".into(), String::new()),
                (Status::Failed, "o2".into(), "code 3: unknown metric".into()),
            ]
        );
    }
}
