//! The subscription's own PUT (create, or re-confirm the same configuration), GET and DELETE.

use edgestream::subscription::{self as rules, SubscriptionError};
use edgestream::time::format_rfc3339;
use serde_json::{json as j, Value};
use worker::{Request, Response, Url};

use super::store::{Kind, Link, Record};
use super::{refuse_own_wake_stream, Failure, SubscriptionObject};
use crate::crypto;
use crate::fault::Call;
use crate::http::{header, now_ms};
use crate::subscription::{json, webhook, X_ORIGIN, X_SUBSCRIPTION};

/// Should a create die partway through linking its streams, the alarm goes on with it this
/// long after: longer than one invocation's linking takes, so it rarely runs beside the create
/// itself. A create that links all it may and leaves pages sets the alarm for at once.
pub(super) const LINK_SAFETY_MS: i64 = 10_000;

/// PUT body.
struct CreateBody {
    kind: String,
    pattern: Option<String>,
    streams: Vec<String>,
    /// `webhook.url`.
    webhook: Option<String>,
    wake_stream: Option<String>,
    lease_ttl_ms: Option<u64>,
    description: Option<String>,
}

impl CreateBody {
    /// Reads a PUT body, or says which field is of the wrong type. `type` is required,
    /// `streams` may be absent but not null, and null stands for any other absent field.
    pub(super) fn parse(body: &[u8]) -> std::result::Result<Self, &'static str> {
        let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
            return Err("body must be a JSON subscription object");
        };
        let streams = fields.remove("streams");
        let mut take = |name| fields.remove(name).filter(|v| !v.is_null());
        let string = |v: Option<Value>, why| match v {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(why),
        };
        const KIND: &str = "type must be webhook or pull-wake";
        const STREAMS: &str = "streams must be an array of stream paths";
        const WEBHOOK: &str = "webhook must be an object with a url";
        Ok(CreateBody {
            kind: string(take("type"), KIND)?.ok_or(KIND)?,
            pattern: string(take("pattern"), "pattern must be a string")?,
            streams: match streams {
                None => Vec::new(),
                Some(Value::Array(paths)) => paths
                    .into_iter()
                    .map(|v| string(Some(v), STREAMS)?.ok_or(STREAMS))
                    .collect::<std::result::Result<_, _>>()?,
                Some(_) => return Err(STREAMS),
            },
            webhook: match take("webhook") {
                None => None,
                Some(mut w) => {
                    Some(string(w.get_mut("url").map(Value::take), WEBHOOK)?.ok_or(WEBHOOK)?)
                }
            },
            wake_stream: string(take("wake_stream"), "wake_stream must be a stream path")?,
            lease_ttl_ms: match take("lease_ttl_ms") {
                None => None,
                Some(v) => Some(
                    v.as_u64()
                        .ok_or("lease_ttl_ms must be a whole number of milliseconds")?,
                ),
            },
            description: string(take("description"), "description must be a string")?,
        })
    }
}

impl SubscriptionObject {
    pub(super) async fn create(
        &self,
        req: &Request,
        body: &[u8],
    ) -> std::result::Result<Response, Failure> {
        let input = CreateBody::parse(body).map_err(SubscriptionError::InvalidRequest)?;
        // The answer lists the first page of the streams linked; `GET` pages through the rest.
        let first = rules::StreamsPage::default();
        let id = header(req.headers(), X_SUBSCRIPTION).unwrap_or_default();
        let origin = header(req.headers(), X_ORIGIN).unwrap_or_default();
        let kind = match input.kind.as_str() {
            "webhook" => Kind::Webhook,
            "pull-wake" => Kind::PullWake,
            _ => {
                return Err(
                    SubscriptionError::InvalidRequest("type must be webhook or pull-wake").into(),
                )
            }
        };
        self.faults.check(&id, Call::Broken)?;
        if let Some(p) = &input.pattern {
            if !rules::is_valid_pattern(p) {
                return Err(
                    SubscriptionError::InvalidRequest("pattern is not a valid glob").into(),
                );
            }
        }
        let explicit = rules::explicit_streams(input.streams)?;
        if input.pattern.is_none() && explicit.is_empty() {
            return Err(SubscriptionError::InvalidRequest("pattern or streams is required").into());
        }
        if input
            .description
            .as_ref()
            .is_some_and(|d| d.len() > rules::MAX_DESCRIPTION_BYTES)
        {
            return Err(SubscriptionError::InvalidRequest(
                "description must be at most 4096 bytes",
            )
            .into());
        }
        let lease_ttl_ms = rules::lease_ms(input.lease_ttl_ms)?;
        let webhook_url = match (kind, &input.webhook) {
            (Kind::Webhook, Some(url)) => {
                if url.len() > rules::MAX_WEBHOOK_URL_BYTES {
                    return Err(SubscriptionError::WebhookUrlRejected(
                        "webhook url must be at most 4096 bytes",
                    )
                    .into());
                }
                let allow = crate::config::Config::from_env(&self.env).webhook_allow_localhost;
                webhook::validate_url(url, allow)?;
                Some(url.clone())
            }
            (Kind::Webhook, None) => {
                return Err(SubscriptionError::InvalidRequest("webhook.url is required").into())
            }
            (Kind::PullWake, _) => None,
        };
        let wake_stream = match (kind, &input.wake_stream) {
            (Kind::PullWake, Some(w)) if rules::is_valid_path(w) => Some(w.clone()),
            (Kind::PullWake, _) => {
                return Err(
                    SubscriptionError::InvalidRequest("wake_stream must be a stream path").into(),
                )
            }
            (Kind::Webhook, _) => None,
        };
        refuse_own_wake_stream(wake_stream.as_ref(), &explicit)?;
        let canonical = j!({
            "type": input.kind,
            "pattern": input.pattern,
            "streams": explicit,
            "webhook": webhook_url,
            "wake_stream": wake_stream,
            "lease_ttl_ms": lease_ttl_ms,
            "description": input.description,
        })
        .to_string();
        // Awaited before the record is read: from that read to the save below nothing is
        // awaited, so of two PUTs racing to create one id, exactly one finds no record.
        if kind == Kind::Webhook {
            // A key the schedule kept may not sign now is the deliveries' concern, not the
            // create's: they fail and are retried until the registry answers.
            self.signer(&id).await?;
        }

        let previous = self.load()?;
        if let Some(existing) = previous.as_ref().filter(|r| !r.deleted) {
            if self.canonical()?.as_deref() != Some(canonical.as_str()) {
                return Err(SubscriptionError::AlreadyExists.into());
            }
            // A create answered 503 partway through linking, or answered before linking was
            // done, goes on from where linking stopped (not from the first page); and links
            // the streams a failed `POST .../streams` named.
            if existing.linking || existing.placing {
                self.finish_links(existing).await?;
            }
            let current = match self
                .load()?
                .filter(|r| !r.deleted && r.epoch == existing.epoch)
            {
                Some(current) => self.try_again(current).await?,
                // Deleted, or replaced, while linking: answered as it was found.
                None => existing.clone(),
            };
            return Ok(json(200, &self.describe(&current, &first).await?)?);
        }
        let record = Record {
            id: id.clone(),
            kind,
            pattern: input.pattern.clone(),
            webhook_url,
            wake_stream,
            lease_ttl_ms,
            description: input.description,
            created_at: format_rfc3339(now_ms()),
            origin,
            epoch: crypto::random_token(12)?,
            // A recreated subscription keeps counting, so old tokens stay fenced.
            generation: previous.map_or(0, |p| p.generation),
            wake_id: None,
            token: None,
            earlier_tokens: Vec::new(),
            holder: None,
            lease_deadline: None,
            deliver: false,
            failures: 0,
            next_attempt_at: None,
            failing_since: None,
            last_error: None,
            gave_up_at: None,
            resume_at: None,
            lapses: 0,
            releases: 0,
            offered_run: None,
            deleted: false,
            linking: true,
            placing: false,
            links_registered: false,
            link_after: None,
            linked: Some(0),
            unlinking: false,
            link_failures: 0,
            link_retry_at: Some(now_ms() + LINK_SAFETY_MS),
            list_from: None,
            list_next: None,
            canonical: String::new(),
            snapshot: Vec::new(),
        };
        // Explicit streams are linked at once, so a stream that appends while the registry is
        // asked already counts as linked; those that exist are moved to their tail below, each
        // once (a retry of linking leaves those placed where they are).
        let glob = |path: &str| {
            record
                .pattern
                .as_deref()
                .is_some_and(|p| rules::glob_matches(p, path))
        };
        self.atomically(|| {
            self.sql()?.exec("DELETE FROM links", None)?;
            self.sql()?.exec("DELETE FROM snapshot", None)?;
            self.forget_provisional()?;
            self.save(&record)?;
            self.save_canonical(&canonical)?;
            for path in &explicit {
                self.save_link(&Link {
                    path: path.clone(),
                    glob: glob(path),
                    explicit: true,
                    acked: 0,
                    tail: 0,
                    placed: false,
                })?;
            }
            Ok(())
        })?;
        // In the same turn as the record and its explicit links: should this request die
        // partway through linking, the alarm finishes it.
        self.set_alarm(now_ms() + LINK_SAFETY_MS).await?;
        self.faults.take_registry_page();
        self.finish_links(&record).await?;
        // As far as linking got in this invocation (deleted, or replaced, meanwhile: as made).
        let current = self
            .load()?
            .filter(|r| !r.deleted && r.epoch == record.epoch)
            .unwrap_or(record);
        let resp = json(201, &self.describe(&current, &first).await?)?;
        if self.faults.enabled() {
            let most = self.faults.take_registry_page().to_string();
            resp.headers()
                .set(crate::fault::REGISTRY_PAGE_HEADER, &most)?;
        }
        Ok(resp)
    }

    /// A `PUT` of a subscription whose deliveries are failing tries again at once, with the
    /// backoff and the give-up window started afresh: its owner has fixed the endpoint (or
    /// created the wake stream) and says so. One that gave up starts a wake for its data. The
    /// count of wakes released in a row goes too: the next release hands the work back at once.
    async fn try_again(&self, mut record: Record) -> worker::Result<Record> {
        if record.failures == 0 && record.gave_up_at.is_none() && record.releases == 0 {
            return Ok(record);
        }
        record.forget_failures();
        self.wake_if_pending(&mut record)?;
        self.save(&record)?;
        self.schedule(&record).await?;
        Ok(record)
    }

    /// The subscription, with the page of its streams that the query names (the edge has
    /// checked it: `limit`, `streams_after`).
    pub(super) async fn get(&self, url: &Url) -> std::result::Result<Response, Failure> {
        let pairs: Vec<_> = url.query_pairs().collect();
        let page = rules::StreamsPage::from_query(pairs.iter().map(|(k, v)| (&**k, &**v)))?;
        let record = self.live()?;
        let resp = json(200, &self.describe(&record, &page).await?)?;
        if self.faults.enabled() {
            // Tests see whether anything is left for the alarm to do.
            let at = crate::fault::alarm_shown(self.state.storage().get_alarm().await?);
            resp.headers().set(crate::fault::ALARM_HEADER, &at)?;
            let held = self.faults.pages_held().to_string();
            resp.headers().set(crate::fault::PAGES_HELD_HEADER, &held)?;
        }
        Ok(resp)
    }

    /// Deletes the subscription. Deleting one that does not exist is done already (204, as the
    /// reference server answers). The registry is told in this request, and should that fail,
    /// by the alarm: the subscription is gone from the answer on, and a DELETE retried on it
    /// tells the registry again.
    pub(super) async fn delete(&self) -> std::result::Result<Response, Failure> {
        let Some(mut record) = self.load()? else {
            return Ok(Response::empty()?.with_status(204));
        };
        record.deleted = true;
        record.wake_id = None;
        record.token = None;
        record.holder = None;
        record.lease_deadline = None;
        record.deliver = false;
        record.linking = false;
        record.placing = false;
        record.unlinking = true;
        record.link_failures = 0;
        record.link_retry_at = None;
        self.atomically(|| {
            self.save(&record)?;
            for q in [
                "DELETE FROM links",
                "DELETE FROM snapshot",
                "DELETE FROM offered",
                "DELETE FROM config",
                "DELETE FROM provisional",
            ] {
                self.sql()?.exec(q, None)?;
            }
            Ok(())
        })?;
        let _ = self.state.storage().delete_alarm().await;
        self.unlink(record).await?;
        Ok(Response::empty()?.with_status(204))
    }
}

#[cfg(test)]
mod tests {
    use super::CreateBody;

    #[test]
    fn a_create_body_refusal_names_the_field_of_the_wrong_type() {
        let refusal = |body: &str| CreateBody::parse(body.as_bytes()).err().unwrap_or("parsed");
        assert_eq!(refusal("[]"), "body must be a JSON subscription object");
        assert_eq!(refusal("{"), "body must be a JSON subscription object");
        assert_eq!(
            refusal(r#"{"pattern":"a/*"}"#),
            "type must be webhook or pull-wake"
        );
        assert_eq!(
            refusal(r#"{"type":"pull-wake","lease_ttl_ms":1.5}"#),
            "lease_ttl_ms must be a whole number of milliseconds"
        );
        assert_eq!(
            refusal(r#"{"type":"pull-wake","lease_ttl_ms":-1}"#),
            "lease_ttl_ms must be a whole number of milliseconds"
        );
        assert_eq!(
            refusal(r#"{"type":"pull-wake","streams":["a",1]}"#),
            "streams must be an array of stream paths"
        );
        assert_eq!(
            refusal(r#"{"type":"pull-wake","streams":null}"#),
            "streams must be an array of stream paths"
        );
        assert_eq!(
            refusal(r#"{"type":"webhook","webhook":"https://x"}"#),
            "webhook must be an object with a url"
        );
        let full = CreateBody::parse(
            br#"{"type":"webhook","pattern":"a/*","streams":["b"],"webhook":{"url":"https://x"},
                "wake_stream":null,"lease_ttl_ms":5000,"description":"d","extra":1}"#,
        )
        .expect("a valid body");
        assert_eq!(full.kind, "webhook");
        assert_eq!(full.pattern.as_deref(), Some("a/*"));
        assert_eq!(full.streams, ["b"]);
        assert_eq!(full.webhook.as_deref(), Some("https://x"));
        assert_eq!(full.wake_stream, None);
        assert_eq!(full.lease_ttl_ms, Some(5000));
        assert_eq!(full.description.as_deref(), Some("d"));
        // Null stands for an absent optional field.
        assert_eq!(
            refusal(r#"{"type":"pull-wake","pattern":null,"lease_ttl_ms":"9"}"#),
            "lease_ttl_ms must be a whole number of milliseconds"
        );
    }
}
