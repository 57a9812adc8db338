//! What a marketplace answers for each record, and the trait every marketplace's sender
//! implements.

use serde_json::Value;

use crate::sinks::http::{with_retries, Failure};

/// What a marketplace answered for one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Accepted: the marketplace bills it.
    Sent,
    /// The marketplace holds a record for this customer, dimension and hour already (a resend
    /// after a crash between send and record, or another sender): not billed again.
    Duplicate,
    /// Not taken (refused, or the request failed): the next export plans it again.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Duplicate => "duplicate",
            Status::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub status: Status,
    /// The marketplace's id of the record (AWS `MeteringRecordId`, Azure `usageEventId`, GCP
    /// `operationId`), when it gave one.
    pub id: String,
    /// Why, for anything but `sent`.
    pub detail: String,
}

impl Outcome {
    pub fn new(status: Status, id: String, detail: &str) -> Outcome {
        Outcome {
            status,
            id,
            detail: detail.into(),
        }
    }
}

/// `n` records of a request that could not be sent.
pub fn all_failed(n: usize, why: &str) -> Vec<Outcome> {
    vec![Outcome::new(Status::Failed, String::new(), why); n]
}

/// A marketplace's metering API.
pub trait Marketplace {
    /// Sends one request (`product`: the listing's product code, or GCP service name); one
    /// outcome per record of `body`, in its order. Never fails as a whole: a request that
    /// cannot be sent makes every record `Failed`, with the reason.
    fn send(&mut self, product: &str, body: &Value) -> Vec<Outcome>;
}

/// One request to `api` of `n` records, retried as [`with_retries`] does: the `outcomes` of its
/// answer, or every record failed with the error.
pub fn answered(
    api: &str,
    n: usize,
    max_attempts: u32,
    attempt: impl FnMut() -> Result<Value, Failure>,
    outcomes: impl FnOnce(&Value) -> Vec<Outcome>,
) -> Vec<Outcome> {
    match with_retries(
        max_attempts,
        attempt,
        |attempt, error| tracing::warn!(attempt, %error, api, "marketplace request retried"),
    ) {
        Ok(answer) => outcomes(&answer),
        Err(e) => all_failed(n, &format!("{api}: {e}")),
    }
}
