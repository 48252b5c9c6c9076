//! A channel's live feed on one pod (cluster mode): what the stream
//! republishes for the channel (its messages and its turns' events, on one
//! subscription), delivered each once and in offset order. The republished
//! copies do not always arrive in offset order: nats-server stores a
//! message and republishes it after letting go of the stream, so two pods
//! publishing at once can have their copies swapped (NATS.md); and a core
//! message can be lost in a reconnect. So a message whose offset is not
//! the next after the last delivered one is held back while the stream is
//! asked for this channel's messages in between (one direct get when there
//! are none: the common case is another channel's messages), which are
//! delivered first; copies at or below the last delivered offset are
//! dropped. After its connection reconnects, a feed also reads what was
//! stored meanwhile, so the last message of a burst lost on the wire does
//! not wait for a next one to show its gap.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::StreamExt;
use switchboard_actors::BackplaneError;
use switchboard_proto::ChannelName;
use switchboard_proto::subjects::{self, Part};

use super::backplane::OrgLink;
use super::stream::{OrgStream, Stored};

/// The longest a feed's start waits for its subscription to be confirmed.
const ROUND_TRIP: Duration = Duration::from_secs(2);

/// The offset and previous offset a republished message carries.
pub fn sequences(headers: Option<&HeaderMap>) -> Option<(u64, u64)> {
    let headers = headers?;
    let get = |name: &str| headers.get(name)?.as_str().parse::<u64>().ok();
    Some((get("Nats-Sequence")?, get("Nats-Last-Sequence")?))
}

/// One channel's live feed on this pod.
pub struct Feed {
    client: async_nats::Client,
    live: async_nats::Subscriber,
    /// Bumped when the connection (re)connects; `None` once it is gone.
    reconnects: Option<tokio::sync::watch::Receiver<u64>>,
    stream: Arc<OrgStream>,
    channel: ChannelName,
    /// What was stored between the requested start and the floor, to be
    /// delivered first.
    catch_up: Vec<(String, Stored)>,
    /// The newest offset delivered (or the floor).
    delivered: u64,
}

impl Feed {
    /// Subscribes to `channel`'s republished messages and returns once the
    /// subscription is live on the server; the feed then delivers what comes
    /// after `after` (what was stored since is read from the stream first),
    /// or by default after the stream's newest offset, read after
    /// subscribing, so nothing falls between the two.
    pub async fn start(
        link: &OrgLink,
        stream: Arc<OrgStream>,
        channel: &ChannelName,
        after: Option<u64>,
    ) -> Result<Feed, BackplaneError> {
        let client = &link.client;
        let mut reconnects = link.reconnects.clone();
        reconnects.borrow_and_update();
        let live = client
            .subscribe(subjects::live(channel))
            .await
            .map_err(|e| BackplaneError::Unavailable(format!("live subscription: {e}")))?;
        // A round trip, so the subscription is live on the server (NATS.md, trap 7).
        let _ = tokio::time::timeout(ROUND_TRIP, client.request(subjects::PING, "".into())).await;
        let floor = stream.state(channel).await?.last;
        let catch_up = match after {
            Some(after) if after < floor => {
                stream
                    .read_subjects(&subjects::stored_all(channel), after, floor, usize::MAX)
                    .await?
            }
            _ => Vec::new(),
        };
        Ok(Feed {
            client: client.clone(),
            live,
            reconnects: Some(reconnects),
            stream,
            channel: channel.clone(),
            catch_up,
            delivered: floor,
        })
    }

    /// The newest offset this feed delivered (or started after).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Hands every message after the start to `deliver` with the part of
    /// the channel it belongs to, in order, each once, until the
    /// subscription ends or a gap cannot be read.
    pub async fn run(&mut self, mut deliver: impl FnMut(&Part, Stored)) -> Result<(), BackplaneError> {
        for (subject, m) in std::mem::take(&mut self.catch_up) {
            if let Some(part) = subjects::part(&subject, &self.channel) {
                deliver(&part, m);
            }
        }
        loop {
            let reconnected = async {
                match &mut self.reconnects {
                    Some(r) => r.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                message = self.live.next() => message,
                again = reconnected => {
                    if again {
                        self.catch_up(&mut deliver).await?;
                    } else {
                        self.reconnects = None;
                    }
                    continue;
                }
            };
            let Some(message) = message else {
                return Ok(());
            };
            let (Some((offset, _)), Some(part)) = (
                sequences(message.headers.as_ref()),
                subjects::part(&message.subject, &self.channel),
            ) else {
                continue;
            };
            if offset <= self.delivered {
                // Delivered already (read from the stream ahead of it), or
                // from before the start.
                continue;
            }
            if offset > self.delivered + 1 {
                self.fill(offset, &mut deliver).await?;
            }
            self.delivered = offset;
            deliver(
                &part,
                Stored {
                    offset,
                    headers: message.headers,
                    payload: message.payload,
                },
            );
        }
    }

    /// Delivers this channel's messages stored after the last delivered
    /// offset and before `before`, oldest first, from the stream.
    async fn fill(
        &mut self,
        before: u64,
        deliver: &mut impl FnMut(&Part, Stored),
    ) -> Result<(), BackplaneError> {
        let all = subjects::stored_all(&self.channel);
        loop {
            let next = self
                .stream
                .read_subjects(&all, self.delivered, before - 1, 1)
                .await?;
            let Some((subject, m)) = next.into_iter().next() else {
                return Ok(());
            };
            self.delivered = m.offset;
            if let Some(part) = subjects::part(&subject, &self.channel) {
                deliver(&part, m);
            }
        }
    }

    /// Delivers what was stored after the last delivered offset (what a
    /// reconnect may have lost on the wire), once the subscription is live
    /// again.
    async fn catch_up(&mut self, deliver: &mut impl FnMut(&Part, Stored)) -> Result<(), BackplaneError> {
        // A round trip: the resubscription is live on the server after it.
        let _ = tokio::time::timeout(ROUND_TRIP, self.client.request(subjects::PING, "".into())).await;
        let through = self.stream.state(&self.channel).await?.last;
        let missed = self
            .stream
            .read_subjects(
                &subjects::stored_all(&self.channel),
                self.delivered,
                through,
                usize::MAX,
            )
            .await?;
        for (subject, m) in missed {
            if m.offset <= self.delivered {
                continue;
            }
            self.delivered = m.offset;
            if let Some(part) = subjects::part(&subject, &self.channel) {
                deliver(&part, m);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_come_from_the_republished_headers() {
        let mut h = HeaderMap::new();
        h.insert("Nats-Sequence", "12");
        h.insert("Nats-Last-Sequence", "9");
        assert_eq!(sequences(Some(&h)), Some((12, 9)));
        assert_eq!(sequences(None), None);
        h.insert("Nats-Sequence", "x");
        assert_eq!(sequences(Some(&h)), None);
    }
}
