//! Frames for operator sessions whose operator is away, kept in the org's
//! `OPS` stream on `parked.<sid>` (cluster mode): whichever pod the operator
//! reconnects to hands them over, also when the pod that hosted the session
//! died. A session parks while its socket is away; a pod whose `send` finds
//! the session's host gone parks for it.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream;
use parking_lot::Mutex;
use switchboard_actors::BackplaneError;
use switchboard_proto::{OrgId, PreparedFrame, Sid, subjects, ws};

use super::accounts::Accounts;
use super::stream::{DUPLICATE_WINDOW, OrgStream};

/// The parking stream's name inside each org's account.
pub const STREAM: &str = "OPS";
/// What an org may have parked at once; past it a session keeps frames in
/// its own memory (bounded by `operators.buffer_bytes`).
const MAX_BYTES: i64 = 64 << 20;
/// More than any session's buffer holds.
const MAX_READ: usize = 1 << 20;

pub struct Parking {
    pool: Arc<OnceLock<Arc<Accounts>>>,
    /// How long a parked frame is kept: as long as a session's record.
    keep: Duration,
    /// Opened streams, with the id of the connection they were opened over.
    open: Mutex<HashMap<OrgId, (u64, Arc<OrgStream>)>>,
}

fn unavailable(e: impl std::fmt::Display) -> BackplaneError {
    BackplaneError::Unavailable(e.to_string())
}

impl Parking {
    pub fn new(pool: Arc<OnceLock<Arc<Accounts>>>, keep: Duration) -> Parking {
        Parking {
            pool,
            keep,
            open: Mutex::new(HashMap::new()),
        }
    }

    async fn stream(&self, org: &OrgId) -> Result<Arc<OrgStream>, BackplaneError> {
        let accounts = self
            .pool
            .get()
            .ok_or_else(|| unavailable("the account pool is not up yet"))?;
        let link = accounts.open_conn(org).await.map_err(unavailable)?;
        if let Some((id, stream)) = self.open.lock().get(org)
            && *id == link.id
        {
            return Ok(Arc::clone(stream));
        }
        let config = stream::Config {
            name: STREAM.into(),
            subjects: vec![subjects::PARKED_ALL.into()],
            storage: stream::StorageType::File,
            max_age: self.keep,
            max_bytes: MAX_BYTES,
            // A full stream refuses: the session keeps the frame itself
            // rather than the stream dropping an older one unseen.
            discard: stream::DiscardPolicy::New,
            duplicate_window: DUPLICATE_WINDOW,
            allow_direct: true,
            num_replicas: 1,
            ..Default::default()
        };
        let stream = Arc::new(OrgStream::open_with(link.client, config).await?);
        self.open
            .lock()
            .insert(org.clone(), (link.id, Arc::clone(&stream)));
        Ok(stream)
    }

    /// Stores `frames`, in order, for the session `sid`; returns how many,
    /// from the first, were stored.
    pub async fn park(&self, org: &OrgId, sid: &Sid, frames: &[PreparedFrame]) -> usize {
        let stream = match self.stream(org).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(%org, %sid, error = %e, "cannot park frames");
                return 0;
            }
        };
        let subject = subjects::parked(sid);
        for (n, frame) in frames.iter().enumerate() {
            let message = PublishMessage::build().payload(frame.payload());
            if let Err(e) = stream.publish(subject.clone(), message).await {
                tracing::debug!(%org, %sid, error = %e, "cannot park a frame");
                self.open.lock().remove(org);
                return n;
            }
        }
        frames.len()
    }

    /// Takes what is parked for `sid`, oldest first.
    pub async fn unpark(&self, org: &OrgId, sid: &Sid) -> Result<Vec<PreparedFrame>, BackplaneError> {
        let stream = self.stream(org).await?;
        let subject = subjects::parked(sid);
        let stored = stream.read(&subject, 0, u64::MAX, MAX_READ).await?;
        if let Some(last) = stored.last() {
            stream.purge_through(&subject, last.offset).await?;
        }
        Ok(stored
            .into_iter()
            .map(|m| PreparedFrame::from_wire(ws::text_frame(&m.payload)))
            .collect())
    }

    /// Drops what is parked for a session that ended.
    pub async fn discard(&self, org: &OrgId, sid: &Sid) {
        if let Ok(stream) = self.stream(org).await {
            let _ = stream.purge(&subjects::parked(sid)).await;
        }
    }
}
