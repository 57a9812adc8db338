//! One HTTP(S) client for what meterflow sends out of the dataflow: alert webhooks and marketplace
//! metering requests. HTTP/1 on a small tokio runtime of its own, TLS through the system's
//! OpenSSL (which librdkafka links already), a timeout per request, and retries with backoff for
//! what a retry may fix. And the TLS settings every HTTPS connection of the process shares,
//! ClickHouse's included ([`https_connector`]).

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_tls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;

type Client = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A connector for `http://` and `https://` URLs, with TLS settings every HTTPS client of the
/// process shares. Building them reads and parses the system's CA certificates, 42 ms of CPU on
/// the 2-core machine of benchmarks/RESULTS.md; a run opens a ClickHouse client per table per
/// worker, and building the settings for each cost B2 a fifth of meterflow's CPU (session 33).
/// They are built on first use, once.
pub fn https_connector(
    keepalive: Option<Duration>,
) -> Result<HttpsConnector<HttpConnector>, String> {
    static TLS: OnceLock<Result<native_tls::TlsConnector, String>> = OnceLock::new();
    let tls = TLS
        .get_or_init(|| {
            native_tls::TlsConnector::new().map_err(|e| {
                format!("cannot set up TLS from the system's OpenSSL and CA certificates: {e}")
            })
        })
        .clone()?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_keepalive(keepalive);
    Ok(HttpsConnector::from((http, tls.into())))
}

/// An answer: its status code and body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Throttled, or the server's fault: a retry may succeed.
    pub fn is_transient(&self) -> bool {
        self.status == 429 || self.status >= 500
    }
}

/// Why a request failed, and whether a retry may succeed.
#[derive(Debug)]
pub struct Failure {
    pub error: String,
    pub retry: bool,
}

impl Failure {
    pub fn permanent(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            retry: false,
        }
    }

    pub fn transient(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            retry: true,
        }
    }

    /// A non-success answer: transient when throttled or the server's fault.
    pub fn of(answer: &Answer) -> Failure {
        Failure {
            error: format!("HTTP {}: {}", answer.status, answer.body.trim()),
            retry: answer.is_transient(),
        }
    }
}

pub struct Http {
    runtime: tokio::runtime::Runtime,
    client: Client,
    timeout: Duration,
}

impl Http {
    /// `what` names the sender in the error when its runtime cannot start.
    pub fn new(what: &str, timeout: Duration) -> Result<Http, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the {what}: {e}"))?;
        let connector = https_connector(None)?;
        let client = {
            let _guard = runtime.enter();
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector)
        };
        Ok(Http {
            runtime,
            client,
            timeout,
        })
    }

    /// One POST of `body` with `headers`; any answer is `Ok` (the caller judges its status), a
    /// request that got none is a transient failure.
    pub fn post(
        &self,
        url: &hyper::Uri,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Answer, Failure> {
        self.request(hyper::Method::POST, url, headers, body)
    }

    /// One GET with `headers`, answered as [`Http::post`] is.
    pub fn get(&self, url: &hyper::Uri, headers: &[(&str, String)]) -> Result<Answer, Failure> {
        self.request(hyper::Method::GET, url, headers, Vec::new())
    }

    fn request(
        &self,
        method: hyper::Method,
        url: &hyper::Uri,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<Answer, Failure> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(url.clone())
            .header("user-agent", "meterflow");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Failure::permanent(e.to_string()))?;
        self.runtime.block_on(async {
            let response = tokio::time::timeout(self.timeout, self.client.request(request))
                .await
                .map_err(|_| Failure::transient(format!("no answer within {:?}", self.timeout)))?
                .map_err(|e| Failure::transient(e.to_string()))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            Ok(Answer { status, body })
        })
    }
}

/// Calls `attempt` up to `max_attempts` times while it fails transiently, waiting 200 ms, then
/// twice as long each time (at most 5 s); `on_retry` hears of each failure that is retried.
pub fn with_retries<T>(
    max_attempts: u32,
    mut attempt: impl FnMut() -> Result<T, Failure>,
    mut on_retry: impl FnMut(u32, &str),
) -> Result<T, String> {
    let mut delay = Duration::from_millis(200);
    let mut n = 1;
    loop {
        match attempt() {
            Ok(t) => return Ok(t),
            Err(f) if f.retry && n < max_attempts.max(1) => {
                on_retry(n, &f.error);
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
                n += 1;
            }
            Err(f) if f.retry => return Err(format!("{} (after {n} attempts)", f.error)),
            Err(f) => return Err(f.error),
        }
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
pub fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stop_at_success_at_the_limit_or_at_a_permanent_failure() {
        let mut calls = 0;
        let mut retried = Vec::new();
        let r = with_retries(
            5,
            || {
                calls += 1;
                if calls < 3 {
                    Err(Failure::transient(format!("busy {calls}")))
                } else {
                    Ok(calls)
                }
            },
            |n, e| retried.push((n, e.to_string())),
        );
        assert_eq!(r, Ok(3));
        assert_eq!(retried, vec![(1, "busy 1".into()), (2, "busy 2".into())]);
        let mut calls = 0;
        let r: Result<(), String> = with_retries(
            2,
            || {
                calls += 1;
                Err(Failure::transient("down"))
            },
            |_, _| {},
        );
        assert_eq!(r, Err("down (after 2 attempts)".into()));
        assert_eq!(calls, 2);
        let mut calls = 0;
        let r: Result<(), String> = with_retries(
            5,
            || {
                calls += 1;
                Err(Failure::permanent("HTTP 403: no"))
            },
            |_, _| {},
        );
        assert_eq!((r, calls), (Err("HTTP 403: no".into()), 1));
    }

    #[test]
    fn form_values_are_percent_encoded() {
        assert_eq!(form_encode("a b+c/=~_.-Z9"), "a%20b%2Bc%2F%3D~_.-Z9");
        assert_eq!(form_encode("é"), "%C3%A9");
    }
}
