//! Questions about an org to every pod (cluster mode): who is subscribed to
//! a channel (`sb.presence`, the payload names it) and which operator
//! sessions each pod hosts (`sb.sessions`). Every pod with an org open
//! answers in the org's account; the asking pod gathers the answers that
//! come within [`WINDOW`] (a pod without the org open has neither
//! subscribers nor sessions of it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use switchboard_actors::{Services, SessionInfo};
use switchboard_proto::{ChannelName, OrgId, RoleName, Sid, Subject, subjects};

/// How long the asking pod waits for the others' answers.
pub const WINDOW: Duration = Duration::from_millis(250);

/// One pod's answer: connections per subject.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Here {
    pub subscribers: BTreeMap<String, usize>,
}

/// One session, as its pod tells it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hosted {
    pub sid: Sid,
    pub roles: Vec<RoleName>,
    pub connected: bool,
}

impl From<SessionInfo> for Hosted {
    fn from(i: SessionInfo) -> Hosted {
        Hosted {
            sid: i.sid,
            roles: i.roles,
            connected: i.connected,
        }
    }
}

/// Connections per subject, from a subject per connection.
pub fn count(subjects: Vec<Subject>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for s in subjects {
        *out.entry(s.as_str().to_owned()).or_default() += 1;
    }
    out
}

/// This pod's answer to one question about `org`, if it is one.
async fn answer_one(org: &OrgId, services: &Services, subject: &str, payload: &[u8]) -> Option<Vec<u8>> {
    match subject {
        subjects::PRESENCE => {
            let channel = std::str::from_utf8(payload)
                .ok()
                .and_then(|c| ChannelName::new(c).ok())?;
            let here = Here {
                subscribers: count(services.presence(org, &channel).await),
            };
            serde_json::to_vec(&here).ok()
        }
        subjects::SESSIONS => {
            let hosted: Vec<Hosted> = services
                .sessions
                .of_org(org)
                .await
                .into_iter()
                .map(Hosted::from)
                .collect();
            serde_json::to_vec(&hosted).ok()
        }
        _ => None,
    }
}

/// Answers other pods' questions about `org` with what this pod has.
pub async fn answer(
    org: OrgId,
    client: async_nats::Client,
    mut requests: async_nats::Subscriber,
    services: Arc<Services>,
) {
    while let Some(request) = requests.next().await {
        let Some(reply) = request.reply else { continue };
        if let Some(body) = answer_one(&org, &services, request.subject.as_str(), &request.payload).await {
            let _ = client.publish(reply, body.into()).await;
        }
    }
}

/// Asks every pod with the org open; their answers within [`WINDOW`].
async fn ask_all(
    client: &async_nats::Client,
    subject: &'static str,
    payload: Bytes,
) -> Result<Vec<Bytes>, String> {
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.map_err(|e| e.to_string())?;
    client
        .publish_with_reply(subject, inbox, payload)
        .await
        .map_err(|e| e.to_string())?;
    client.flush().await.map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + WINDOW;
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout_at(deadline, answers.next()).await {
        out.push(m.payload);
    }
    Ok(out)
}

/// Everyone subscribed to `channel` on any pod, and how many pods answered.
pub async fn gather(
    client: &async_nats::Client,
    channel: &ChannelName,
) -> Result<(BTreeMap<String, usize>, usize), String> {
    let answers = ask_all(client, subjects::PRESENCE, channel.as_str().to_owned().into()).await?;
    let (mut all, mut pods) = (BTreeMap::new(), 0);
    for here in answers
        .iter()
        .filter_map(|a| serde_json::from_slice::<Here>(a).ok())
    {
        pods += 1;
        for (sub, n) in here.subscribers {
            *all.entry(sub).or_default() += n;
        }
    }
    Ok((all, pods))
}

/// The org's operator sessions on every pod, by sid.
pub async fn sessions(client: &async_nats::Client) -> Result<Vec<Hosted>, String> {
    let answers = ask_all(client, subjects::SESSIONS, Bytes::new()).await?;
    let mut all: Vec<Hosted> = answers
        .iter()
        .filter_map(|a| serde_json::from_slice::<Vec<Hosted>>(a).ok())
        .flatten()
        .collect();
    all.sort_by(|a, b| a.sid.cmp(&b.sid));
    // A session moving between pods may be told by both.
    all.dedup_by(|a, b| a.sid == b.sid);
    Ok(all)
}
