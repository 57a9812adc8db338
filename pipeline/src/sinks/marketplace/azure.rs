//! Azure Marketplace metering service `batchUsageEvent`, with a bearer token from Microsoft Entra
//! ID: the client-credentials grant of the app registered for the SaaS offer (by its secret or a
//! certificate), or the managed identity of the VM, AKS node or app meterflow runs on
//! ([`super::tokens`]).
//!
//! Each event's answer is matched by resource, dimension and hour: `Accepted` is `sent` (its
//! `usageEventId` kept), `Duplicate` is `duplicate` (Azure holds an event for that resource,
//! dimension and hour), and every other status (`Expired`, `ResourceNotFound`,
//! `InvalidDimension`, ...) is `failed`, with Azure's message, and planned again by the next
//! export.

use serde_json::Value;

use super::outcome::{answered, Marketplace, Outcome, Status};
use super::tokens::{Cached, ClientCredentials, ManagedIdentity};
use crate::sinks::http::{Failure, Http};

/// The resource a token for the marketplace metering API is asked for (Azure's fixed id).
pub const METERING_RESOURCE: &str = "20e940b3-4c77-4b0b-9a53-9e16a1b010a7";

/// How the sender gets its tokens.
pub enum Credential {
    /// The offer's Entra ID application, by its secret or certificate.
    Application(ClientCredentials),
    ManagedIdentity(ManagedIdentity),
}

pub struct Azure {
    pub(super) http: Http,
    pub(super) credential: Credential,
    pub(super) usage_url: hyper::Uri,
    pub(super) token: Cached,
    pub(super) max_attempts: u32,
}

/// The hour an `effectiveStartTime` names, to whole seconds, without its zone.
fn hour_of(v: &Value) -> String {
    v.as_str()
        .map(|s| s.chars().take(19).collect())
        .unwrap_or_default()
}

fn identity(e: &Value) -> (String, String, String) {
    (
        e["resourceId"].as_str().unwrap_or_default().into(),
        e["dimension"].as_str().unwrap_or_default().into(),
        hour_of(&e["effectiveStartTime"]),
    )
}

/// The outcome of each event of `body` from a `batchUsageEvent` answer.
fn outcomes(body: &Value, answer: &Value) -> Vec<Outcome> {
    let events = body["request"].as_array().cloned().unwrap_or_default();
    let results = answer["result"].as_array().cloned().unwrap_or_default();
    events
        .iter()
        .map(|e| {
            let me = identity(e);
            let Some(r) = results.iter().find(|r| identity(r) == me) else {
                return Outcome::new(
                    Status::Failed,
                    String::new(),
                    "the answer does not mention this event; the next export sends it again",
                );
            };
            let id = r["usageEventId"].as_str().unwrap_or_default().to_string();
            let message = r["error"]["message"].as_str().unwrap_or_default();
            match r["status"].as_str().unwrap_or_default() {
                "Accepted" => Outcome::new(Status::Sent, id, ""),
                "Duplicate" => {
                    let first = r["error"]["additionalInfo"]["acceptedMessage"]["usageEventId"]
                        .as_str()
                        .map_or(id, String::from);
                    Outcome::new(
                        Status::Duplicate,
                        first,
                        "Duplicate: Azure holds an event for this resource, dimension and hour",
                    )
                }
                other => Outcome::new(
                    Status::Failed,
                    id,
                    format!("{other}: {message}").trim_end_matches([':', ' ']),
                ),
            }
        })
        .collect()
}

impl Azure {
    fn token(&mut self) -> Result<String, Failure> {
        let http = &self.http;
        self.token.get(|| match &self.credential {
            Credential::ManagedIdentity(identity) => identity.fetch(http),
            Credential::Application(grant) => grant.fetch(http),
        })
    }

    fn attempt(&mut self, payload: &[u8]) -> Result<Value, Failure> {
        let token = self.token()?;
        let headers = [
            ("content-type", "application/json".to_string()),
            ("authorization", format!("Bearer {token}")),
        ];
        let answer = self
            .http
            .post(&self.usage_url, &headers, payload.to_vec())?;
        let json: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        if answer.is_success() && json.is_object() {
            return Ok(json);
        }
        if answer.status == 401 {
            // An expired token: the retry asks for a new one.
            self.token.forget();
            return Err(Failure::transient(format!(
                "HTTP 401: {}",
                answer.body.trim()
            )));
        }
        let message = json["message"].as_str().unwrap_or(answer.body.trim());
        Err(Failure {
            error: format!("HTTP {}: {message}", answer.status),
            retry: answer.is_transient(),
        })
    }
}

impl Marketplace for Azure {
    fn send(&mut self, _product: &str, body: &Value) -> Vec<Outcome> {
        let payload = body.to_string().into_bytes();
        let n = body["request"].as_array().map_or(0, Vec::len);
        answered(
            "batchUsageEvent",
            n,
            self.max_attempts,
            || self.attempt(&payload),
            |answer| outcomes(body, answer),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_event_gets_the_status_azure_gave_it() {
        let event = |who: &str| json!({"resourceId": who, "quantity": 1.5, "dimension": "d", "effectiveStartTime": "2026-12-04T10:00:00Z", "planId": "p"});
        let body = json!({"request": [event("a"), event("b"), event("c"), event("d")]});
        let answer = json!({"count": 3, "result": [
            {"usageEventId": "u-c", "status": "Expired", "resourceId": "c", "dimension": "d", "effectiveStartTime": "2026-12-04T10:00:00", "error": {"message": "too old"}},
            {"usageEventId": "u-a", "status": "Accepted", "resourceId": "a", "dimension": "d", "effectiveStartTime": "2026-12-04T10:00:00"},
            {"usageEventId": "u-b", "status": "Duplicate", "resourceId": "b", "dimension": "d", "effectiveStartTime": "2026-12-04T10:00:00Z",
             "error": {"additionalInfo": {"acceptedMessage": {"usageEventId": "u-first"}}}},
        ]});
        let got: Vec<(Status, String, String)> = outcomes(&body, &answer)
            .into_iter()
            .map(|o| (o.status, o.id, o.detail))
            .collect();
        assert_eq!(got[0], (Status::Sent, "u-a".into(), String::new()));
        assert_eq!(
            (got[1].0, got[1].1.as_str()),
            (Status::Duplicate, "u-first")
        );
        assert_eq!(
            got[2],
            (Status::Failed, "u-c".into(), "Expired: too old".into())
        );
        assert_eq!(got[3].0, Status::Failed);
    }
}
