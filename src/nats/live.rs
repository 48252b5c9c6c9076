//! A channel's live feed on one pod (cluster mode): the stream's republished
//! messages on `live.<channel>`, delivered each once and in offset order.
//! A message whose previous offset (`Nats-Last-Sequence`) is not the last
//! one delivered means something was missed (a core message lost in a
//! reconnect, a trim, an age-out: NATS.md treats every mismatch as a gap),
//! and the missing range is read from the stream before it goes on.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use futures_util::StreamExt;
use switchboard_actors::BackplaneError;
use switchboard_proto::{ChannelName, subjects};

use super::stream::{OrgStream, Stored};

/// The longest a feed's start waits for its subscription to be confirmed.
const ROUND_TRIP: Duration = Duration::from_secs(2);

/// What to do with one republished message.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The next one: deliver it.
    Deliver,
    /// Delivered already (or older): drop it.
    Stale,
    /// Something came between: read the stream after the last delivered
    /// offset up to this one first.
    Gap,
}

/// The ordering state of one channel's feed.
#[derive(Debug)]
pub struct Sequencer {
    last: u64,
}

impl Sequencer {
    /// A feed that has delivered everything through `last`.
    pub fn new(last: u64) -> Self {
        Sequencer { last }
    }

    pub fn last(&self) -> u64 {
        self.last
    }

    /// Judges a message at `offset` whose channel's previous one was `previous`.
    pub fn offer(&self, offset: u64, previous: u64) -> Step {
        if offset <= self.last {
            Step::Stale
        } else if previous == self.last {
            Step::Deliver
        } else {
            Step::Gap
        }
    }

    /// Records that `offset` was delivered.
    pub fn delivered(&mut self, offset: u64) {
        self.last = self.last.max(offset);
    }
}

/// The offset and previous offset a republished message carries.
pub fn sequences(headers: Option<&HeaderMap>) -> Option<(u64, u64)> {
    let headers = headers?;
    let get = |name: &str| headers.get(name)?.as_str().parse::<u64>().ok();
    Some((get("Nats-Sequence")?, get("Nats-Last-Sequence")?))
}

/// One channel's live feed on this pod.
pub struct Feed {
    live: async_nats::Subscriber,
    stream: Arc<OrgStream>,
    channel: ChannelName,
    seq: Sequencer,
}

impl Feed {
    /// Subscribes to `channel`'s republished messages and returns once the
    /// subscription is live on the server; the feed then delivers what comes
    /// after `after` (by default the channel's newest stored offset, read
    /// after subscribing, so nothing falls between the two).
    pub async fn start(
        client: &async_nats::Client,
        stream: Arc<OrgStream>,
        channel: &ChannelName,
        after: Option<u64>,
    ) -> Result<Feed, BackplaneError> {
        let live = client
            .subscribe(subjects::live(channel))
            .await
            .map_err(|e| BackplaneError::Unavailable(format!("live subscription: {e}")))?;
        // A round trip, so the subscription is live on the server (NATS.md, trap 7).
        let _ = tokio::time::timeout(ROUND_TRIP, client.request(subjects::PING, "".into())).await;
        let last = match after {
            Some(after) => after,
            None => stream.last(channel).await?.unwrap_or(0),
        };
        Ok(Feed {
            live,
            stream,
            channel: channel.clone(),
            seq: Sequencer::new(last),
        })
    }

    /// Hands every message after the start to `deliver`, in order, each
    /// once, until the subscription ends or a gap cannot be read.
    pub async fn run(mut self, mut deliver: impl FnMut(Stored)) -> Result<(), BackplaneError> {
        while let Some(message) = self.live.next().await {
            let Some((offset, previous)) = sequences(message.headers.as_ref()) else {
                continue;
            };
            match self.seq.offer(offset, previous) {
                Step::Stale => continue,
                Step::Deliver => {}
                Step::Gap => {
                    let missed = self
                        .stream
                        .read(&self.channel, self.seq.last(), offset - 1, usize::MAX)
                        .await?;
                    for m in missed {
                        self.seq.delivered(m.offset);
                        deliver(m);
                    }
                }
            }
            self.seq.delivered(offset);
            deliver(Stored {
                offset,
                payload: message.payload,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stale_and_gaps() {
        let mut s = Sequencer::new(0);
        assert_eq!(s.offer(1, 0), Step::Deliver);
        s.delivered(1);
        assert_eq!(s.offer(1, 0), Step::Stale, "a duplicate");
        assert_eq!(s.offer(4, 1), Step::Deliver, "offsets need not be contiguous");
        s.delivered(4);
        assert_eq!(s.offer(9, 7), Step::Gap, "7 was never delivered");
        assert_eq!(
            s.offer(9, 0),
            Step::Gap,
            "an age-out or purge says 0: read the stream"
        );
        s.delivered(9);
        assert_eq!(s.last(), 9);
        let mut h = HeaderMap::new();
        h.insert("Nats-Sequence", "12");
        h.insert("Nats-Last-Sequence", "9");
        assert_eq!(sequences(Some(&h)), Some((12, 9)));
        assert_eq!(sequences(None), None);
    }
}
