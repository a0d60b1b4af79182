//! The streams a subscription covers: linking a new one's pattern and streams at their tails,
//! adding and removing streams, and telling the registry to forget a deleted one's links.

use std::collections::HashSet;
use std::time::Duration;

use edgestream::subscription::{self as rules, SubscriptionError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use worker::{Delay, Response, Result};

use super::store::{Link, Record};
use super::{refuse_own_wake_stream, Failure, SubscriptionObject};
use crate::fault::Call;
use crate::subscription::registry::{
    Links, Matched, MatchedStreams, PatternLinked, PatternPage, RemoveExplicit, StreamLinked,
    StreamPath, SubLinked, SubLinks,
};
use crate::subscription::{call, registry_stub};

#[derive(Deserialize)]
struct StreamsBody {
    streams: Vec<String>,
}

impl SubscriptionObject {
    /// Links a new subscription's streams: the registry records its pattern and explicit
    /// streams and answers the explicit ones that exist, then lists the streams the pattern
    /// covers a page at a time (`LINKS_PER_CALL` streams), asking each of the page's streams
    /// for its tail before it answers: one call of this request's per page. So however many
    /// streams the registry knows, neither it nor this object holds more than a page of them.
    /// A stream created while the pages are read is found by the pattern itself, recorded
    /// before the first page: on a page still to come, it is
    /// linked at its tail like the rest; on one already read, its creation links it, its data
    /// pending (`notify`). Every link starts at its stream's tail as of the pass that succeeds
    /// (including one an append has made meanwhile): the subscription exists from the answer
    /// that says so. A failure is retried by the alarm with backoff, or by a PUT that finds it.
    pub(super) async fn finish_links(&self, record: &Record) -> Result<()> {
        let links = Links {
            id: record.id.clone(),
            pattern: record.pattern.clone(),
            explicit: self.explicit_paths()?,
            replace: true,
        };
        let result = self.link_all(record, &links).await;
        // Deleted, or created again, meanwhile: that incarnation links its own.
        let Some(mut current) = self
            .load()?
            .filter(|r| !r.deleted && r.epoch == record.epoch)
        else {
            return result;
        };
        if current.settle_links("linking", &result) {
            current.linking = false;
        }
        self.save(&current)?;
        self.schedule(&current).await?;
        result
    }

    /// Registers `links` and links the streams they cover, page by page. A page that fails is
    /// the answer, after the rest are linked.
    async fn link_all(&self, record: &Record, links: &Links) -> Result<()> {
        let matched = self.register_links(links).await?;
        let mut failed = self.link_existing(record, matched, |_| true).await.err();
        let Some(pattern) = &record.pattern else {
            return failed.map_or(Ok(()), Err);
        };
        let per_call = crate::config::Config::from_env(&self.env).links_per_call;
        let limit = self
            .faults
            .page(&record.id, usize::try_from(per_call).unwrap_or(usize::MAX));
        let mut after = None;
        loop {
            let ask = PatternPage {
                id: record.id.clone(),
                pattern: pattern.clone(),
                after,
                limit,
            };
            // The registry asks the page's streams itself: one call of this request's per page.
            let page =
                match call::<_, PatternLinked>(&registry_stub(&self.env)?, "pattern-page", &ask)
                    .await?
                {
                    (200, Some(page)) if page.links.len() == page.streams.len() => page,
                    (status, _) => {
                        return Err(worker::Error::RustError(format!(
                            "registry answered {status} to pattern-page"
                        )))
                    }
                };
            // Deleted, or deleted and created again, meanwhile: its links are not ours to set.
            if !self.still(record)? {
                return Ok(());
            }
            self.faults.registry_paged(page.streams.len());
            if let Err(e) = self.save_linked(record, &page.streams, page.links, &|_: &str| true) {
                failed.get_or_insert(e);
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return failed.map_or(Ok(()), Err),
            }
        }
    }

    async fn register_links(&self, links: &Links) -> Result<Vec<Matched>> {
        let (status, reply) =
            call::<_, MatchedStreams>(&registry_stub(&self.env)?, "links", links).await?;
        match reply {
            Some(r) if status == 200 => Ok(r.streams),
            _ => Err(worker::Error::RustError(format!(
                "registry links request failed ({status})"
            ))),
        }
    }

    /// Subscribes to existing streams and links each at its current tail (no replay). A link
    /// that is `fresh` (made by this request before the stream was known to exist, or by an
    /// append notified meanwhile) moves to the tail too; others keep their cursor. A stream
    /// that cannot be asked fails the request, after every other one is linked. The registry
    /// asks them, `LINKS_PER_CALL` per call: each call between objects counts against a
    /// per-request limit, and each of the registry's calls is a request of its own.
    async fn link_existing(
        &self,
        record: &Record,
        matched: Vec<Matched>,
        fresh: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let per_call = crate::config::Config::from_env(&self.env).links_per_call;
        let mut failed = None;
        for group in matched.chunks(usize::try_from(per_call).unwrap_or(usize::MAX)) {
            let ask = SubLinks {
                id: record.id.clone(),
                paths: group.iter().map(|m| m.path.clone()).collect(),
            };
            let answers =
                match call::<_, SubLinked>(&registry_stub(&self.env)?, "sub-link", &ask).await {
                    Ok((200, Some(linked))) if linked.links.len() == group.len() => linked.links,
                    Ok((status, _)) => {
                        failed.get_or_insert(worker::Error::RustError(format!(
                            "registry answered {status} to sub-link"
                        )));
                        continue;
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                        continue;
                    }
                };
            // Deleted, or deleted and created again, meanwhile: its links are not ours to set.
            if !self.still(record)? {
                return Ok(());
            }
            if let Err(e) = self.save_linked(record, group, answers, &fresh) {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Saves the links of `group` at the tails its streams answered (`answers`, in the same
    /// order). A stream that answered neither 200 nor 404 fails the whole, after the rest are
    /// saved.
    fn save_linked(
        &self,
        record: &Record,
        group: &[Matched],
        answers: Vec<StreamLinked>,
        fresh: &impl Fn(&str) -> bool,
    ) -> Result<()> {
        let mut failed = None;
        for (m, answer) in group.iter().zip(answers) {
            let glob = m.glob && record.pattern_covers(&m.path);
            // 404: the stream is gone, and the registry forgets it. Any other answer is
            // a failure: the link is retried.
            let tail = match (answer.status, answer.tail) {
                (200, Some(tail)) => tail,
                (404, _) => continue,
                (status, _) => {
                    failed.get_or_insert(worker::Error::RustError(format!(
                        "stream {} answered {status} to sub-link",
                        m.path
                    )));
                    continue;
                }
            };
            // Read now, not before the await: an append may have been notified meanwhile.
            let link = match self.link(&m.path)? {
                Some(l) => Link {
                    glob: l.glob || glob,
                    explicit: l.explicit || m.explicit,
                    acked: if fresh(&m.path) {
                        l.acked.max(tail)
                    } else {
                        l.acked
                    },
                    tail: l.tail.max(tail),
                    ..l
                },
                None if glob => Link {
                    path: m.path.clone(),
                    glob: true,
                    explicit: m.explicit,
                    acked: tail,
                    tail,
                },
                // An explicit link removed while the stream was asked.
                None => continue,
            };
            self.save_link(&link)?;
        }
        failed.map_or(Ok(()), Err)
    }

    /// Tells the registry to forget a deleted subscription's links; streams drop their
    /// subscriber entry the next time they notify it. A failure is retried by the alarm with
    /// backoff. Runs in a turn of `changes`, so a PUT that creates the id again (and replaces
    /// the links) comes before or after it, never between the call and its record.
    pub(super) async fn unlink(&self, record: Record) -> Result<()> {
        let told = self.tell_unlinked(&record.id).await;
        let Some(mut current) = self
            .load()?
            .filter(|r| r.deleted && r.unlinking && r.epoch == record.epoch)
        else {
            return Ok(());
        };
        if current.settle_links("unlinking", &told) {
            current.unlinking = false;
        }
        self.save(&current)?;
        self.schedule(&current).await
    }

    async fn tell_unlinked(&self, id: &str) -> Result<()> {
        if self.faults.slow(id, Call::SubscriptionRemoved) {
            Delay::from(Duration::from_secs(1)).await;
        } else {
            self.faults.check(id, Call::SubscriptionUnlinked)?;
        }
        self.tell_registry(
            "subscription-removed",
            &StreamPath {
                path: id.to_string(),
            },
        )
        .await
    }

    /// Calls one of the registry's operations whose answer carries nothing but its status.
    async fn tell_registry<B: Serialize>(&self, op: &str, body: &B) -> Result<()> {
        let (status, _) = call::<_, Value>(&registry_stub(&self.env)?, op, body).await?;
        if !(200..300).contains(&status) {
            return Err(worker::Error::RustError(format!(
                "registry answered {status} to {op}"
            )));
        }
        Ok(())
    }

    pub(super) async fn add_streams(&self, body: &[u8]) -> std::result::Result<Response, Failure> {
        let record = self.live()?;
        let input: StreamsBody = serde_json::from_slice(body)
            .map_err(|_| SubscriptionError::InvalidRequest("body must be {\"streams\": [...]}"))?;
        let paths = rules::explicit_streams(input.streams)?;
        refuse_own_wake_stream(record.wake_stream.as_ref(), &paths)?;
        // Checked and linked here before anything is awaited: the registry is told only of
        // streams that fit, and a concurrent request counts these.
        let mut adding = Vec::new();
        for path in &paths {
            match self.link(path)? {
                Some(l) if l.explicit => {}
                other => adding.push((path, other)),
            }
        }
        rules::check_explicit_total(self.explicit_count()?, adding.len())?;
        let mut fresh = HashSet::new();
        for (path, existing) in adding {
            let link = match existing {
                Some(l) => Link {
                    explicit: true,
                    ..l
                },
                None => {
                    fresh.insert(path.clone());
                    Link {
                        path: path.clone(),
                        glob: record.pattern_covers(path),
                        explicit: true,
                        acked: 0,
                        tail: 0,
                    }
                }
            };
            self.save_link(&link)?;
        }
        let links = Links {
            id: record.id.clone(),
            pattern: None,
            explicit: paths,
            replace: false,
        };
        let matched = self.register_links(&links).await?;
        self.link_existing(&record, matched, |path| fresh.contains(path))
            .await?;
        Ok(Response::empty()?.with_status(204))
    }

    pub(super) async fn remove_stream(
        &self,
        path: Option<&str>,
    ) -> std::result::Result<Response, Failure> {
        let record = self.live()?;
        let Some(path) = path.filter(|p| rules::is_valid_path(p)) else {
            return Err(
                SubscriptionError::InvalidRequest("a valid stream path is required").into(),
            );
        };
        if let Some(link) = self.link(path)? {
            // The pattern decides whether the link stays, not a flag saved when the stream was
            // first linked: a stream named before it existed was linked as explicit only.
            let glob = record
                .pattern
                .as_deref()
                .is_some_and(|p| rules::glob_matches(p, path));
            if glob {
                // Still linked by the pattern, at the same cursor.
                self.save_link(&Link {
                    glob: true,
                    explicit: false,
                    ..link
                })?;
            } else {
                self.remove_link(path)?;
            }
        }
        // The stream is dropped: the answer says so whether or not the registry hears it. The
        // registry's links only say which subscriptions a new or removed stream asks, and
        // this one answers a stream it no longer links `linked: false` (which then drops it),
        // so a link left there costs a stream created at that path one call. A retried
        // DELETE tells the registry again, and deleting the subscription clears its links.
        let told = match self.faults.check(&record.id, Call::ExplicitRemoved) {
            Ok(()) => {
                let removed = RemoveExplicit {
                    id: record.id.clone(),
                    path: path.to_string(),
                };
                self.tell_registry("remove-explicit", &removed).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = told {
            worker::console_warn!(
                "subscription {}: the registry was not told it dropped {path}: {e}",
                record.id
            );
        }
        Ok(Response::empty()?.with_status(204))
    }
}
