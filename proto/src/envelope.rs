//! The binary envelope pods exchange over the backplane (bincode 2).
//!
//! Byte 0 is the envelope version; a pod refuses versions it does not know
//! instead of misreading them, so the codec can change in a rolling upgrade
//! (new pods learn to read version N+1 before any pod writes it).

use bincode::{Decode, Encode};
use serde_json::value::RawValue;

use crate::channel::ChannelName;

/// The version this build writes.
pub const VERSION: u8 = 1;

/// Largest envelope a pod accepts, so a corrupt length cannot allocate wildly.
const MAX_ENVELOPE: usize = 16 << 20;

#[derive(Clone, Debug)]
pub enum Envelope {
    /// A message to append to a channel (offset assigned by the backplane).
    Publish {
        channel: ChannelName,
        data: Box<RawValue>,
        /// Microseconds since the Unix epoch when the publish was accepted.
        published_at_us: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("empty envelope")]
    Empty,
    #[error("envelope version {0} is not supported (this pod reads {VERSION})")]
    Version(u8),
    #[error("malformed envelope: {0}")]
    Malformed(String),
}

/// What actually goes on the wire: plain strings, validated on the way back in.
#[derive(Encode, Decode)]
enum WireV1 {
    Publish {
        channel: String,
        data: String,
        published_at_us: u64,
    },
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_ENVELOPE>()
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let wire = match self {
            Envelope::Publish {
                channel,
                data,
                published_at_us,
            } => WireV1::Publish {
                channel: channel.as_str().to_owned(),
                data: data.get().to_owned(),
                published_at_us: *published_at_us,
            },
        };
        let mut out = vec![VERSION];
        // Encoding owned strings and integers into a Vec cannot fail.
        let _ = bincode::encode_into_std_write(&wire, &mut out, config());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let (&version, body) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
        if version != VERSION {
            return Err(EnvelopeError::Version(version));
        }
        let (wire, used): (WireV1, usize) = bincode::decode_from_slice(body, config())
            .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
        if used != body.len() {
            return Err(EnvelopeError::Malformed("trailing bytes".into()));
        }
        match wire {
            WireV1::Publish {
                channel,
                data,
                published_at_us,
            } => Ok(Envelope::Publish {
                channel: ChannelName::new(&channel).map_err(|e| EnvelopeError::Malformed(e.to_string()))?,
                data: RawValue::from_string(data)
                    .map_err(|e| EnvelopeError::Malformed(format!("data: {e}")))?,
                published_at_us,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn publish(channel: &str, data: &str, at: u64) -> Envelope {
        Envelope::Publish {
            channel: ChannelName::new(channel).unwrap(),
            data: RawValue::from_string(data.to_owned()).unwrap(),
            published_at_us: at,
        }
    }

    #[test]
    fn version_byte_leads() {
        let bytes = publish("a", "1", 2).encode();
        assert_eq!(bytes[0], VERSION);
        let mut future = bytes.clone();
        future[0] = VERSION + 1;
        assert!(matches!(Envelope::decode(&future), Err(EnvelopeError::Version(v)) if v == VERSION + 1));
        assert!(matches!(Envelope::decode(&[]), Err(EnvelopeError::Empty)));
        let mut trailing = bytes;
        trailing.push(0);
        assert!(matches!(
            Envelope::decode(&trailing),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    #[test]
    fn invalid_contents_are_refused() {
        let bad_channel = {
            let mut out = vec![VERSION];
            let wire = WireV1::Publish {
                channel: "a b".into(),
                data: "1".into(),
                published_at_us: 0,
            };
            bincode::encode_into_std_write(&wire, &mut out, config()).unwrap();
            out
        };
        assert!(matches!(
            Envelope::decode(&bad_channel),
            Err(EnvelopeError::Malformed(_))
        ));
        let bad_json = {
            let mut out = vec![VERSION];
            let wire = WireV1::Publish {
                channel: "a".into(),
                data: "{".into(),
                published_at_us: 0,
            };
            bincode::encode_into_std_write(&wire, &mut out, config()).unwrap();
            out
        };
        assert!(matches!(
            Envelope::decode(&bad_json),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn round_trips(channel in "[a-z]{1,8}(\\.[a-z0-9]{1,8}){0,3}", text in ".{0,64}", at in any::<u64>()) {
            let data = serde_json::Value::from(text).to_string();
            let env = publish(&channel, &data, at);
            let bytes = env.encode();
            prop_assert_eq!(Envelope::decode(&bytes).unwrap().encode(), bytes);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Envelope::decode(&bytes);
        }
    }
}
