//! [`Channels`]: the one home for publishing and reading channels. HTTP
//! publish, client publish and operator turns all call
//! [`Channels::publish`], which owns its metrics and its logging; every
//! subscribe and history read goes through [`Channels::read`]. Behind it
//! are the hub and whichever backplane the server runs with.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::backplane::{Backplane, BackplaneError, Event, History, HistoryRead, Position, Published, Sent};
use crate::clock;
use crate::hub::{ChannelKey, Hub};
use crate::telemetry;

pub struct Channels {
    hub: Arc<Hub>,
    backplane: Arc<dyn Backplane>,
    history: Arc<dyn History>,
}

impl Channels {
    pub fn new(hub: Arc<Hub>, backplane: Arc<dyn Backplane>, history: Arc<dyn History>) -> Self {
        Self {
            hub,
            backplane,
            history,
        }
    }

    /// This pod's subscribers.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Appends `event` to the channel and fans it out.
    pub async fn publish(&self, key: &ChannelKey, event: Event<'_>) -> Result<Published, BackplaneError> {
        let started = clock::now();
        let result = self.backplane.publish(key, event).await;
        match &result {
            Ok(_) => telemetry::published(started),
            Err(e) => {
                telemetry::publish_refused(e.code());
                log_unavailable(key, "publish", e);
            }
        }
        result
    }

    /// Sends a plain message on its way ([`Backplane::send`]): several may
    /// be in flight when the backplane pipelines.
    pub async fn send(&self, key: &ChannelKey, data: &RawValue) -> Result<Sent, BackplaneError> {
        if !self.backplane.pipelines() {
            return self.publish(key, Event::Message(data)).await.map(Sent::Stored);
        }
        let started = clock::now();
        let refused = |key: &ChannelKey, e: &BackplaneError| {
            telemetry::publish_refused(e.code());
            log_unavailable(key, "publish", e);
        };
        match self.backplane.send(key, data).await {
            Ok(Sent::Pending(stored)) => {
                let key = key.clone();
                Ok(Sent::Pending(Box::pin(async move {
                    let result = stored.await;
                    match &result {
                        Ok(_) => telemetry::published(started),
                        Err(e) => refused(&key, e),
                    }
                    result
                })))
            }
            Ok(Sent::Stored(published)) => {
                telemetry::published(started);
                Ok(Sent::Stored(published))
            }
            Err(e) => {
                refused(key, &e);
                Err(e)
            }
        }
    }

    /// Reads the channel's history from `from`, at most `limit` messages.
    pub async fn read(
        &self,
        key: &ChannelKey,
        from: Position,
        limit: usize,
    ) -> Result<HistoryRead, BackplaneError> {
        let result = self.history.read(key, from, limit).await;
        if let Err(e) = &result {
            log_unavailable(key, "history read", e);
        }
        result
    }

    /// Starts receiving `key` from the backplane (its first local subscriber).
    pub async fn attach(&self, key: &ChannelKey) -> Result<(), BackplaneError> {
        let result = self.backplane.attach(key).await;
        if let Err(e) = &result {
            log_unavailable(key, "attach", e);
        }
        result
    }

    pub fn detach(&self, key: &ChannelKey) {
        self.backplane.detach(key);
    }

    /// The backplane's periodic upkeep.
    pub fn maintain(&self) {
        self.backplane.maintain();
    }

    /// Forgets the history and live turns of a deleted org.
    pub fn drop_org(&self, org: &switchboard_proto::OrgId) {
        self.backplane.drop_org(org);
    }
}

/// Turn mistakes are the caller's and are answered to it; an unavailable
/// backplane is ours to look into.
fn log_unavailable(key: &ChannelKey, what: &'static str, e: &BackplaneError) {
    if let BackplaneError::Unavailable(detail) = e {
        tracing::warn!(org = %key.org, channel = %key.channel, error = %detail, "{what} failed");
    }
}
