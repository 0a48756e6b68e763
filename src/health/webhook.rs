//! Alarm delivery to a webhook: one JSON POST per alarm, with a Slack-compatible `text`, a timeout and
//! retries with backoff. A failing webhook is reported and never fails the sync.

use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::Value;

/// Where and how alarms are posted. The URL and token are sensitive and never logged.
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    pub token: Option<String>,
    pub timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Webhook(<redacted>)")
    }
}

/// Why a POST did not get through (without the URL).
#[derive(Debug, thiserror::Error)]
#[error("alert webhook failed after {attempts} attempt(s): {last}")]
pub struct WebhookError {
    pub attempts: u32,
    pub last: String,
}

impl Webhook {
    /// POST one alarm body; retries on connection errors, timeouts and non-2xx answers.
    pub fn post(&self, body: &Value) -> Result<(), WebhookError> {
        let client = Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| WebhookError {
                attempts: 0,
                last: e.without_url().to_string(),
            })?;
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(self.backoff * 2u32.saturating_pow(attempt - 1));
            }
            let mut req = client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            match req.send() {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) => last = format!("HTTP {}", resp.status()),
                Err(e) => last = e.without_url().to_string(),
            }
        }
        Err(WebhookError {
            attempts: self.retries + 1,
            last,
        })
    }
}
