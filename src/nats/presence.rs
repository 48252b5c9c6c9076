//! Presence across pods (cluster mode): who is subscribed to a channel on
//! any pod. Every pod with an org open answers requests on `sb.presence` in
//! the org's account with its own subscribers of the channel the request
//! names; the asking pod gathers the answers that come within
//! [`WINDOW`] (pods without the org open have no subscriber of it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard_actors::Services;
use switchboard_proto::{ChannelName, OrgId, Subject, subjects};

/// How long the asking pod waits for the others' answers.
pub const WINDOW: Duration = Duration::from_millis(250);

/// One pod's answer: connections per subject.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Here {
    pub subscribers: BTreeMap<String, usize>,
}

/// Connections per subject, from a subject per connection.
pub fn count(subjects: Vec<Subject>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in subjects {
        *out.entry(s.as_str().to_owned()).or_default() += 1;
    }
    out
}

/// Answers presence requests for `org` with this pod's subscribers.
pub async fn answer(
    org: OrgId,
    client: async_nats::Client,
    mut requests: async_nats::Subscriber,
    services: Arc<Services>,
) {
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply else { continue };
        let Some(channel) = std::str::from_utf8(&request.payload)
            .ok()
            .and_then(|c| ChannelName::new(c).ok())
        else {
            continue;
        };
        let here = Here {
            subscribers: count(services.presence(&org, &channel).await),
        };
        if let Ok(body) = serde_json::to_vec(&here) {
            let _ = client.publish(reply, body.into()).await;
        }
    }
}

/// Everyone subscribed to `channel` on any pod, and how many pods answered.
pub async fn gather(
    client: &async_nats::Client,
    channel: &ChannelName,
) -> Result<(BTreeMap<String, usize>, usize), String> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.map_err(|e| e.to_string())?;
    client
        .publish_with_reply(subjects::PRESENCE, inbox, channel.as_str().to_owned().into())
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + WINDOW;
    let (mut all, mut pods) = (BTreeMap::new(), 0);
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, answers.next()).await {
        let Ok(here) = serde_json::from_slice::<Here>(&m.payload) else {
            continue;
        };
        pods += 1;
        for (sub, n) in here.subscribers {
            *all.entry(sub).or_default() += n;
        }
    }
    Ok((all, pods))
}
