//! AWS Marketplace Metering Service `BatchMeterUsage`, over its JSON 1.1 protocol, signed with
//! Signature Version 4.
//!
//! A request file holds the operation's input as the AWS CLI and SDKs take it (`Timestamp` as
//! RFC 3339); on the wire the JSON protocol carries timestamps as epoch seconds, so they are
//! converted when sent. Each record's answer is matched by customer, dimension and timestamp:
//! `Success` is `sent` (its `MeteringRecordId` kept), `DuplicateRecord` is `duplicate` (the
//! marketplace holds a record for that customer, dimension and hour), `CustomerNotSubscribed` and
//! the `UnprocessedRecords` are `failed` and planned again by the next export.

use hmac::{Hmac, Mac};
use meterflow_schemas::canonical::to_hex;
use meterflow_schemas::time::EventTime;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::outcome::{answered, Marketplace, Outcome, Status};
use crate::sinks::http::{Failure, Http};

const TARGET: &str = "AWSMPMeteringService.BatchMeterUsage";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The service name requests are signed for (the model's `signingName`).
const SIGNING_NAME: &str = "aws-marketplace";

/// Where credentials come from: `[exports.aws]`'s secrets (default: the standard
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

pub struct Aws {
    pub(super) http: Http,
    pub(super) url: hyper::Uri,
    pub(super) region: String,
    pub(super) credentials: Credentials,
    pub(super) max_attempts: u32,
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// The `Authorization` header of a Signature Version 4 request with an empty query string.
/// `headers`: every signed header, names in lower case, sorted by name (`host` and `x-amz-date`
/// among them); `amz_date`: `YYYYMMDDTHHMMSSZ`.
pub fn authorization(
    credentials: &Credentials,
    (region, service): (&str, &str),
    (method, path): (&str, &str),
    headers: &[(&str, String)],
    payload: &[u8],
    amz_date: &str,
) -> String {
    let date = &amz_date[..8];
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed = headers
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{method}\n{path}\n\n{canonical_headers}\n{signed}\n{}",
        to_hex(&Sha256::digest(payload))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        to_hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", credentials.secret_access_key).as_bytes(),
        date,
    );
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part);
    }
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={}",
        credentials.access_key_id,
        to_hex(&hmac(&key, &to_sign))
    )
}

/// `20261204T101500Z` for a time.
fn amz_date(t: EventTime) -> String {
    let s = t.to_string();
    format!(
        "{}T{}Z",
        s[..10].replace('-', ""),
        s[11..19].replace(':', "")
    )
}

/// Epoch seconds of an RFC 3339 or epoch-seconds timestamp.
fn seconds(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_f64().map(|f| f as i64),
        Value::String(s) => EventTime::parse_rfc3339(s)
            .ok()
            .map(|t| t.0.div_euclid(1000)),
        _ => None,
    }
}

/// Who, what and when a usage record is about.
fn identity(r: &Value) -> (String, String, Option<i64>) {
    let who = r
        .get("CustomerIdentifier")
        .or_else(|| r.get("CustomerAWSAccountId"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    let dimension = r["Dimension"].as_str().unwrap_or_default();
    (who.into(), dimension.into(), seconds(&r["Timestamp"]))
}

/// The body on the wire: the input with timestamps in epoch seconds.
fn wire(body: &Value) -> Value {
    let mut wire = body.clone();
    if let Some(records) = wire["UsageRecords"].as_array_mut() {
        for r in records {
            if let Some(s) = seconds(&r["Timestamp"]) {
                r["Timestamp"] = Value::from(s);
            }
        }
    }
    wire
}

/// The outcome of each record of `body` from a `BatchMeterUsage` answer.
fn outcomes(body: &Value, answer: &Value) -> Vec<Outcome> {
    let records = body["UsageRecords"].as_array().cloned().unwrap_or_default();
    let results = answer["Results"].as_array().cloned().unwrap_or_default();
    let unprocessed = answer["UnprocessedRecords"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    records
        .iter()
        .map(|r| {
            let me = identity(r);
            if let Some(res) = results.iter().find(|x| identity(&x["UsageRecord"]) == me) {
                let status = res["Status"].as_str().unwrap_or_default();
                let id = res["MeteringRecordId"].as_str().unwrap_or_default().into();
                return match status {
                    "Success" => Outcome::new(Status::Sent, id, ""),
                    "DuplicateRecord" => Outcome::new(
                        Status::Duplicate,
                        id,
                        "DuplicateRecord: AWS holds a record for this customer, dimension and hour with another quantity",
                    ),
                    "CustomerNotSubscribed" => Outcome::new(
                        Status::Failed,
                        id,
                        "CustomerNotSubscribed: the customer cannot use the product (unsubscribed or never subscribed); the next export sends it again",
                    ),
                    other => Outcome::new(Status::Failed, id, &format!("status {other}")),
                };
            }
            if unprocessed.iter().any(|u| identity(u) == me) {
                return Outcome::new(
                    Status::Failed,
                    String::new(),
                    "UnprocessedRecords: AWS did not process it; the next export sends it again",
                );
            }
            Outcome::new(
                Status::Failed,
                String::new(),
                "the answer does not mention this record; the next export sends it again",
            )
        })
        .collect()
}

impl Aws {
    fn host(&self) -> String {
        self.url
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default()
    }

    fn attempt(&self, payload: &[u8]) -> Result<Value, Failure> {
        let amz_date = amz_date(EventTime::now());
        let mut headers = vec![
            ("content-type", CONTENT_TYPE.to_string()),
            ("host", self.host()),
            ("x-amz-date", amz_date.clone()),
        ];
        if let Some(token) = &self.credentials.session_token {
            headers.push(("x-amz-security-token", token.clone()));
        }
        headers.push(("x-amz-target", TARGET.to_string()));
        let path = self.url.path();
        let auth = authorization(
            &self.credentials,
            (&self.region, SIGNING_NAME),
            ("POST", if path.is_empty() { "/" } else { path }),
            &headers,
            payload,
            &amz_date,
        );
        headers.push(("authorization", auth));
        let answer = self.http.post(&self.url, &headers, payload.to_vec())?;
        let json: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        if answer.is_success() {
            return if json.is_object() {
                Ok(json)
            } else {
                Err(Failure::permanent(format!(
                    "BatchMeterUsage answered HTTP {} with a body that is not JSON: {}",
                    answer.status,
                    answer.body.trim()
                )))
            };
        }
        // `{"__type": "...#ThrottlingException", "message": "..."}`
        let kind = json["__type"]
            .as_str()
            .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
            .unwrap_or_else(|| format!("HTTP {}", answer.status));
        let message = json["message"]
            .as_str()
            .or_else(|| json["Message"].as_str())
            .unwrap_or(answer.body.trim());
        Err(Failure {
            error: format!("{kind}: {message}"),
            retry: answer.is_transient()
                || matches!(
                    kind.as_str(),
                    "ThrottlingException" | "InternalServiceErrorException"
                ),
        })
    }
}

impl Marketplace for Aws {
    fn send(&mut self, _product: &str, body: &Value) -> Vec<Outcome> {
        let payload = wire(body).to_string().into_bytes();
        let n = body["UsageRecords"].as_array().map_or(0, Vec::len);
        answered(
            "BatchMeterUsage",
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
    fn requests_are_signed_as_botocore_signs_them() {
        // The expected signature was computed by botocore 1.43 (`SigV4Auth`) for this request.
        let credentials = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: Some("tok".into()),
        };
        let host = "metering.marketplace.us-east-1.amazonaws.com";
        let headers = [
            ("content-type", CONTENT_TYPE.to_string()),
            ("host", host.to_string()),
            ("x-amz-date", "20261204T101500Z".to_string()),
            ("x-amz-security-token", "tok".to_string()),
            ("x-amz-target", TARGET.to_string()),
        ];
        let auth = authorization(
            &credentials,
            ("us-east-1", SIGNING_NAME),
            ("POST", "/"),
            &headers,
            br#"{"ProductCode":"prod-x","UsageRecords":[]}"#,
            "20261204T101500Z",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261204/us-east-1/aws-marketplace/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, \
             Signature=21b8b179a0421944dc835624bf89252f9e905dabf942bd44c12d165534429aab"
        );
    }

    #[test]
    fn the_wire_carries_epoch_seconds_and_answers_are_matched_per_record() {
        assert_eq!(
            amz_date(EventTime::parse_rfc3339("2026-12-04T10:15:00Z").unwrap()),
            "20261204T101500Z"
        );
        let body = json!({"ProductCode": "p", "UsageRecords": [
            {"Timestamp": "2026-12-04T10:00:00Z", "CustomerIdentifier": "a", "Dimension": "d", "Quantity": 3},
            {"Timestamp": "2026-12-04T10:00:00Z", "CustomerIdentifier": "b", "Dimension": "d", "Quantity": 1},
            {"Timestamp": "2026-12-04T10:00:00Z", "CustomerAWSAccountId": "123456789012", "Dimension": "d", "Quantity": 1},
            {"Timestamp": "2026-12-04T10:00:00Z", "CustomerIdentifier": "c", "Dimension": "d", "Quantity": 1},
        ]});
        let t = 1_796_378_400;
        assert_eq!(wire(&body)["UsageRecords"][0]["Timestamp"], json!(t));
        let answer = json!({
            "Results": [
                {"UsageRecord": {"Timestamp": t as f64, "CustomerIdentifier": "b", "Dimension": "d", "Quantity": 1},
                 "MeteringRecordId": "m-b", "Status": "DuplicateRecord"},
                {"UsageRecord": {"Timestamp": t, "CustomerIdentifier": "a", "Dimension": "d", "Quantity": 3},
                 "MeteringRecordId": "m-a", "Status": "Success"},
                {"UsageRecord": {"Timestamp": t, "CustomerAWSAccountId": "123456789012", "Dimension": "d", "Quantity": 1},
                 "Status": "CustomerNotSubscribed"},
            ],
            "UnprocessedRecords": [{"Timestamp": t, "CustomerIdentifier": "c", "Dimension": "d", "Quantity": 1}],
        });
        let got: Vec<(Status, String)> = outcomes(&body, &answer)
            .into_iter()
            .map(|o| (o.status, o.id))
            .collect();
        assert_eq!(
            got,
            vec![
                (Status::Sent, "m-a".into()),
                (Status::Duplicate, "m-b".into()),
                (Status::Failed, String::new()),
                (Status::Failed, String::new()),
            ]
        );
    }
}
