//! The streams a subscription covers: linking a new one's pattern and streams at their tails,
//! adding and removing streams, and telling the registry to forget a deleted one's links.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use edgestream::subscription::{self as rules, SubscriptionError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use worker::{Delay, Response, Result};

use super::store::{Link, Record};
use super::{refuse_own_wake_stream, Failure, SubscriptionObject};
use crate::fault::Call;
use crate::http::now_ms;
use crate::subscription::registry::{
    Links, Matched, MatchedStreams, PatternLinked, PatternPage, RemoveExplicit, StreamLinked,
    StreamPath, SubLinked, SubLinks,
};
use crate::subscription::{call, registry_stub};

/// Streams the subscription was told are gone while one of its linking calls (a pattern's
/// page, or asking named streams for their tails) was out. Such a call's answer may hold a
/// stream's tail given before the stream went: the removal found no link to drop yet, so
/// saving one at that tail would leave a link to a stream that no longer exists, and a stream
/// created at the path later would find it placed there, its data before that tail never
/// delivered. Kept in memory, as the calls are (an object that restarts has none out); each
/// removal is numbered, so a call skips only the streams removed after it began, and the
/// list is dropped once no call is out.
#[derive(Default)]
pub(super) struct Removals {
    /// Removals numbered so far.
    count: Cell<u64>,
    /// Linking calls out now.
    out: Cell<u32>,
    /// Each stream removed while a call was out, with its removal's number.
    removed: RefCell<HashMap<String, u64>>,
}

impl Removals {
    /// The subscription was told `path` is gone.
    pub(super) fn removed(&self, path: &str) {
        if self.out.get() == 0 {
            return;
        }
        let n = self.count.get() + 1;
        self.count.set(n);
        self.removed.borrow_mut().insert(path.to_string(), n);
    }

    /// A linking call goes out: held until its answers are saved.
    fn call_out(&self) -> CallOut<'_> {
        self.out.set(self.out.get() + 1);
        CallOut {
            removals: self,
            since: self.count.get(),
        }
    }
}

/// A linking call out, from when it is made until its answers are saved (or dropped).
struct CallOut<'a> {
    removals: &'a Removals,
    /// The removals numbered before it went out.
    since: u64,
}

impl CallOut<'_> {
    /// Whether `path` was removed since the call went out: its answer is not to be linked.
    fn gone_since(&self, path: &str) -> bool {
        self.removals
            .removed
            .borrow()
            .get(path)
            .is_some_and(|n| *n > self.since)
    }
}

impl Drop for CallOut<'_> {
    fn drop(&mut self) {
        let out = self.removals.out.get().saturating_sub(1);
        self.removals.out.set(out);
        if out == 0 {
            self.removals.removed.borrow_mut().clear();
        }
    }
}

#[derive(Deserialize)]
struct StreamsBody {
    streams: Vec<String>,
}

impl SubscriptionObject {
    /// Links a new subscription's streams, as many as one invocation may, going on from where
    /// the last invocation stopped: the registry records its pattern and explicit streams and
    /// answers the explicit ones that exist, then lists the streams the pattern covers a page
    /// at a time (`LINKS_PER_CALL` streams), asking each of the page's streams for its tail
    /// before it answers: one call of this invocation's per page, at most
    /// `LINK_PAGES_PER_INVOCATION` pages. Each page's links are stored with the place after it,
    /// so no page is read twice and none skipped; the alarm links the next pages at once, and
    /// a PUT of the same configuration does too. So however many streams the registry knows,
    /// neither it nor this object holds more than a page of them, and no invocation makes
    /// more calls than Cloudflare allows.
    ///
    /// An existing stream is linked at its tail as its page finds it: its data from then on is
    /// delivered. A stream created while linking runs is found by the pattern itself, recorded
    /// before the first page: its registration links it (`notify`), its data from its start
    /// pending, and a page that reaches it later keeps that cursor. A failure is retried by
    /// the alarm with backoff, or by a PUT that finds it, from the page that failed. Streams
    /// a failed `POST .../streams` named (`placing`) are linked here too, first.
    pub(super) async fn finish_links(&self, record: &Record) -> Result<()> {
        let result = self.link_some(record).await;
        // Deleted, or created again, meanwhile: that incarnation links its own.
        let Some(mut current) = self.current(record)? else {
            return result.map(drop);
        };
        let settled = match &result {
            Ok(_) => Ok(()),
            Err(e) => Err(worker::Error::RustError(e.to_string())),
        };
        current.settle_links("linking", &settled);
        // Each step begins with the named streams: they are linked.
        if result.is_ok() {
            current.placing = false;
        }
        match result {
            Ok(true) => {
                current.linking = false;
                self.forget_provisional()?;
            }
            // More pages: the alarm goes on with them at once.
            Ok(false) => current.link_retry_at = Some(now_ms()),
            Err(_) => {}
        }
        // A provisional link its page has now placed may have data pending.
        self.wake_if_pending(&mut current)?;
        self.save(&current)?;
        self.schedule(&current).await?;
        settled
    }

    /// `record`'s incarnation as stored now, unless it was deleted (or created again).
    fn current(&self, record: &Record) -> Result<Option<Record>> {
        Ok(self
            .load()?
            .filter(|r| !r.deleted && r.epoch == record.epoch))
    }

    /// Registers the links with the registry (once), or links the named streams a failed
    /// `POST .../streams` left, then, while linking, links the pattern's pages from the one
    /// after the last linked, at most `LINK_PAGES_PER_INVOCATION` of them. Whether every
    /// stream is linked.
    async fn link_some(&self, record: &Record) -> Result<bool> {
        let config = crate::config::Config::from_env(&self.env);
        if !record.links_registered {
            let links = Links {
                id: record.id.clone(),
                pattern: record.pattern.clone(),
                explicit: self.explicit_paths()?,
                replace: true,
                epoch: record.epoch.clone(),
            };
            let matched = self.register_links(&links).await?;
            let linked = self.link_existing(record, matched).await?;
            let Some(mut current) = self.current(record)? else {
                return Ok(true);
            };
            current.links_registered = true;
            current.linked = Some(current.linked.unwrap_or(0) + linked);
            self.save(&current)?;
        } else if record.placing {
            self.link_named(record, self.unplaced_paths()?).await?;
        }
        // Only named streams were owed: the pattern's pages were all linked already.
        if !record.linking {
            return Ok(true);
        }
        let Some(pattern) = &record.pattern else {
            return Ok(true);
        };
        let limit = self.faults.page(
            &record.id,
            usize::try_from(config.links_per_call).unwrap_or(usize::MAX),
        );
        for _ in 0..config.link_pages_per_invocation {
            let Some(before) = self.current(record)? else {
                return Ok(true);
            };
            let ask = PatternPage {
                id: record.id.clone(),
                pattern: pattern.clone(),
                after: before.link_after.clone(),
                limit,
            };
            // The registry asks the page's streams itself: one call of this invocation's.
            let out = self.removals.call_out();
            let answer =
                call::<_, PatternLinked>(&registry_stub(&self.env)?, "pattern-page", &ask).await;
            self.faults.hold_page(&record.id).await;
            let page = match answer? {
                (200, Some(page)) if page.links.len() == page.streams.len() => page,
                (status, _) => {
                    return Err(worker::Error::RustError(format!(
                        "registry answered {status} to pattern-page"
                    )))
                }
            };
            // Deleted, or deleted and created again, meanwhile: its links are not ours to set.
            let Some(mut current) = self.current(record)? else {
                return Ok(true);
            };
            // Passes take turns (`changes`), so none has moved on meanwhile; should one have,
            // this page is its to store, and the next is read from where it got.
            if current.link_after != ask.after {
                continue;
            }
            self.faults.registry_paged(page.streams.len());
            let mut provisional = HashSet::new();
            for m in &page.streams {
                if self.provisional(&m.path)? {
                    provisional.insert(m.path.clone());
                }
            }
            // A link stored already keeps its cursor: a stream created since linking began
            // (its data from its start), or one this page linked before it failed. A
            // provisional one starts where the stream answered, or where it was acked since.
            let cursor = |l: &Link, tail: u64| match provisional.contains(&l.path) {
                true => l.acked.min(tail),
                false => l.acked,
            };
            let failed = self.atomically(|| {
                let (linked, failed) =
                    self.save_linked(&current, &page.streams, page.links, &out, &cursor)?;
                if failed.is_none() {
                    current.link_after = page.next.clone();
                    current.linked = Some(current.linked.unwrap_or(0) + linked);
                    self.save(&current)?;
                }
                Ok(failed)
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            if current.link_after.is_none() {
                return Ok(true);
            }
        }
        Ok(false)
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
    /// not yet placed (made before the stream was known to exist) moves to the tail too, or
    /// stays where a tail the stream told meanwhile put it, if earlier; placed links keep
    /// their cursor, so a retry after a failure leaves the links it made where they were, and
    /// their appends since are delivered. A stream that cannot be asked fails the request, after every other one is
    /// linked. The registry
    /// asks them, `LINKS_PER_CALL` per call: each call between objects counts against a
    /// per-request limit, and each of the registry's calls is a request of its own. Answers
    /// how many were linked.
    async fn link_existing(&self, record: &Record, matched: Vec<Matched>) -> Result<u64> {
        let per_call = crate::config::Config::from_env(&self.env).links_per_call;
        // An unplaced link told a tail already starts where that was, if earlier.
        let cursor = |l: &Link, tail: u64| match (l.placed, l.tail) {
            (true, _) => l.acked,
            (false, 0) => tail,
            (false, _) => l.acked.min(tail),
        };
        let mut failed = None;
        let mut linked = 0;
        for group in matched.chunks(usize::try_from(per_call).unwrap_or(usize::MAX)) {
            let ask = SubLinks {
                id: record.id.clone(),
                paths: group.iter().map(|m| m.path.clone()).collect(),
            };
            let out = self.removals.call_out();
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
                return Ok(linked);
            }
            let (count, failure) = self.save_linked(record, group, answers, &out, &cursor)?;
            linked += count;
            if let Some(e) = failure {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(linked), Err)
    }

    /// Saves the links of `group` at the tails its streams answered (`answers`, in the same
    /// order): a new link at its stream's tail, one stored already where `cursor` puts it
    /// (given the link and the tail). A stream new to the subscription (its registration found
    /// this incarnation, and its notification saying so has not been taken yet) counts as
    /// answering its start: it is covered from there. A stream removed while the call was out
    /// (`out`) is left as its removal left it. Answers how many streams were linked, and a
    /// failure of one that answered neither 200 nor 404, after the rest are saved.
    fn save_linked(
        &self,
        record: &Record,
        group: &[Matched],
        answers: Vec<StreamLinked>,
        out: &CallOut,
        cursor: &impl Fn(&Link, u64) -> u64,
    ) -> Result<(u64, Option<worker::Error>)> {
        let mut failed = None;
        let mut linked = 0;
        for (m, answer) in group.iter().zip(answers) {
            // Removed while the call was out: its answer may be the stream's from before, and
            // its removal has dropped (or moved to the start) whatever link it had. A stream
            // created at the path since, or later, is new: it links itself from its start.
            if out.gone_since(&m.path) {
                continue;
            }
            let glob = m.glob && record.pattern_covers(&m.path);
            // 404: the stream is gone, and the registry forgets it. Any other answer is
            // a failure: the link is retried.
            let (tail, start) = match (answer.status, answer.tail) {
                (200, Some(tail)) => {
                    let new = record.new_to_it(answer.created, answer.epoch.as_deref());
                    (tail, if new { 0 } else { tail })
                }
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
                    acked: cursor(&l, start),
                    tail: l.tail.max(tail),
                    placed: true,
                    ..l
                },
                None if glob => Link {
                    path: m.path.clone(),
                    glob: true,
                    explicit: m.explicit,
                    acked: start,
                    tail,
                    placed: true,
                },
                // An explicit link removed while the stream was asked.
                None => continue,
            };
            self.save_link(&link)?;
            linked += 1;
        }
        Ok((linked, failed))
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

    /// Names more streams. Each is linked at its tail, once: the registry is told of them and
    /// asks those that exist. Should that fail (503), or the request die, before each has
    /// answered, the subscription owes it (`placing`, saved with the links): the alarm links
    /// every named stream not yet placed, with backoff, whether or not the client retries.
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
        let owed_before = record.placing;
        let mut owing = record.clone();
        owing.placing = true;
        owing.link_retry_at = owing
            .link_retry_at
            .or(Some(now_ms() + super::configure::LINK_SAFETY_MS));
        self.atomically(|| {
            for (path, existing) in adding {
                let link = match existing {
                    Some(l) => Link {
                        explicit: true,
                        ..l
                    },
                    None => Link {
                        path: path.clone(),
                        glob: record.pattern_covers(path),
                        explicit: true,
                        acked: 0,
                        tail: 0,
                        placed: false,
                    },
                };
                self.save_link(&link)?;
            }
            self.save(&owing)
        })?;
        self.schedule(&owing).await?;
        let linked = self.link_named(&record, paths).await;
        let Some(mut current) = self.current(&record)? else {
            // Deleted, or created again, meanwhile: answered as it went.
            linked?;
            return Ok(Response::empty()?.with_status(204));
        };
        match &linked {
            // Streams an earlier request left are the alarm's still.
            Ok(()) if owed_before => {}
            Ok(()) => {
                current.placing = false;
                // Unless the pattern's linking goes on with its own retries.
                if !current.linking {
                    current.settle_links("placing", &Ok(()));
                }
            }
            Err(e) => {
                current.settle_links("placing", &Err(worker::Error::RustError(e.to_string())));
            }
        }
        self.save(&current)?;
        self.schedule(&current).await?;
        linked?;
        Ok(Response::empty()?.with_status(204))
    }

    /// Tells the registry of the streams named in `paths` (it records them, so a stream
    /// created at one of those paths later is linked as new) and links those that exist at
    /// their tails, leaving the cursor of each linked already.
    async fn link_named(&self, record: &Record, paths: Vec<String>) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let links = Links {
            id: record.id.clone(),
            pattern: None,
            explicit: paths,
            replace: false,
            epoch: record.epoch.clone(),
        };
        let matched = self.register_links(&links).await?;
        self.link_existing(record, matched).await.map(drop)
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

#[cfg(test)]
mod tests {
    use super::Removals;

    #[test]
    fn a_call_skips_only_the_streams_removed_while_it_was_out() {
        let removals = Removals::default();
        // No call out: nothing is kept.
        removals.removed("a");
        let first = removals.call_out();
        assert!(!first.gone_since("a"));
        removals.removed("b");
        // Began after b's removal: its answer for b is the stream's own, if any.
        let second = removals.call_out();
        removals.removed("c");
        assert!(first.gone_since("b") && first.gone_since("c"));
        assert!(!second.gone_since("b") && second.gone_since("c"));
        drop(first);
        assert!(second.gone_since("c"));
        drop(second);
        assert!(removals.removed.borrow().is_empty());
        let third = removals.call_out();
        assert!(!third.gone_since("c"));
    }
}
