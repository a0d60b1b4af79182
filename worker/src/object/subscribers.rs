//! The stream's side of subscriptions: register with the registry when created, tell linked
//! subscriptions about every new tail, and deregister when removed.
//!
//! Notifications are awaited before the append is acknowledged, so a subscription never lags
//! behind what a writer has been told. A failed notification is logged and does not fail the
//! append: the next one carries the absolute tail and repairs it.

use serde_json::{json, Value};
use worker::{Env, Result};

use super::store::{Meta, Store};
use crate::path::STREAM_PREFIX;
use crate::subscription::object::Notify;
use crate::subscription::registry::{ChannelRef, CreatedStream, StreamPath, SubscriptionIds};
use crate::subscription::{call, registry_stub, subscription_stub};

/// The root-relative name subscriptions use (`events/a` for `/v1/stream/events/a`).
fn name(meta: &Meta) -> &str {
    meta.path.strip_prefix(STREAM_PREFIX).unwrap_or(&meta.path)
}

/// A new stream: learn which subscriptions cover it, and tell them where it starts. Answers the
/// channels above it (for a channel, none: the registry links the streams below it instead).
pub async fn created(env: &Env, store: &Store, meta: &Meta) -> Result<Vec<ChannelRef>> {
    let path = CreatedStream {
        path: name(meta).to_string(),
        channel: meta.channel.then(|| meta.instance.clone()),
    };
    let (status, reply) =
        call::<_, SubscriptionIds>(&registry_stub(env)?, "stream-created", &path).await?;
    let Some(ids) = reply.filter(|_| status == 200) else {
        worker::console_warn!("stream {}: registry answered {status}", meta.path);
        return Ok(Vec::new());
    };
    for id in &ids.subs {
        store.add_subscriber(id)?;
    }
    notify(env, store, meta, &ids.subs).await?;
    Ok(ids.channels)
}

/// After an append: every linked subscription learns the new tail.
pub async fn appended(env: &Env, store: &Store, meta: &Meta) -> Result<()> {
    let subs = store.subscribers()?;
    if subs.is_empty() {
        return Ok(());
    }
    notify(env, store, meta, &subs).await
}

async fn notify(env: &Env, store: &Store, meta: &Meta, subs: &[String]) -> Result<()> {
    let message = Notify {
        path: name(meta).to_string(),
        tail: meta.tail.position(),
    };
    let message = &message;
    let calls = subs.iter().map(|id| async move {
        let result = match subscription_stub(env, id) {
            Ok(stub) => call::<_, Value>(&stub, "notify", &message).await,
            Err(e) => Err(e),
        };
        (id, result)
    });
    for (id, result) in futures_util::future::join_all(calls).await {
        match result {
            Ok((200, Some(reply))) if reply["linked"] == json!(false) => {
                store.remove_subscriber(id)?
            }
            Ok((200, _)) => {}
            Ok((status, _)) => worker::console_warn!("subscription {id}: notify answered {status}"),
            Err(e) => worker::console_warn!("subscription {id}: notify failed: {e}"),
        }
    }
    Ok(())
}

/// The stream is gone: patterns no longer find it.
pub async fn removed(env: &Env, meta: &Meta) -> Result<()> {
    let path = StreamPath {
        path: name(meta).to_string(),
    };
    call::<_, Value>(&registry_stub(env)?, "stream-removed", &path).await?;
    Ok(())
}
