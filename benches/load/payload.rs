//! Stamped payloads: `{"c":<channel>,"s":<sequence>,"t":<scheduled µs>,"p":"xx.."}`
//! padded to the requested size. The stamp is the *scheduled* send time, so
//! a server that falls behind shows it in latency instead of hiding it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (both processes share the machine's clock).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A JSON object of about `size` bytes carrying the stamp.
pub fn stamped(channel: u32, seq: u64, scheduled_us: u64, size: usize) -> String {
    let mut out = format!(r#"{{"c":{channel},"s":{seq},"t":{scheduled_us},"p":""#);
    let pad = size.saturating_sub(out.len() + 2);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out
}

/// The stamp as plain text (`c=1;s=2;t=3;xx..`), for token text that goes
/// inside a JSON string and would have its quotes escaped.
pub fn stamped_text(channel: u32, seq: u64, scheduled_us: u64, size: usize) -> String {
    let mut out = format!("c={channel};s={seq};t={scheduled_us};");
    let pad = size.saturating_sub(out.len());
    out.extend(std::iter::repeat_n('x', pad));
    out
}

/// The stamp found in a delivered frame (any framing around the payload).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub channel: u32,
    pub seq: u64,
    pub scheduled_us: u64,
}

fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    let at = text.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = text[at..].iter().take_while(|b| b.is_ascii_digit());
    let mut n: u64 = 0;
    let mut any = false;
    for d in digits {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(n)
}

/// Scans `frame` for the stamp (either form), without parsing the JSON around it.
pub fn scan(frame: &[u8]) -> Option<Stamp> {
    let json = || {
        Some(Stamp {
            channel: u32::try_from(number_after(frame, br#""c":"#)?).ok()?,
            seq: number_after(frame, br#""s":"#)?,
            scheduled_us: number_after(frame, br#""t":"#)?,
        })
    };
    let text = || {
        Some(Stamp {
            channel: u32::try_from(number_after(frame, b"c=")?).ok()?,
            seq: number_after(frame, b";s=")?,
            scheduled_us: number_after(frame, b";t=")?,
        })
    };
    json().or_else(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_survive_switchboard_framing() {
        let p = stamped(7, 42, 1_700_000_000_000_000, 100);
        assert_eq!(p.len(), 100);
        assert!(serde_json::from_str::<serde_json::Value>(&p).is_ok());
        let frame = format!(r#"{{"type":"message","channel":"room","offset":9,"data":{p}}}"#);
        assert_eq!(
            scan(frame.as_bytes()),
            Some(Stamp {
                channel: 7,
                seq: 42,
                scheduled_us: 1_700_000_000_000_000
            })
        );
        assert_eq!(scan(b"{\"type\":\"ack\",\"id\":1}"), None);
    }

    #[test]
    fn text_stamps_survive_token_framing() {
        let t = stamped_text(3, 9, 77, 40);
        assert_eq!(t.len(), 40);
        let frame = format!(r#"{{"type":"token","channel":"turns.3","offset":5,"turn":"t3","text":"{t}"}}"#);
        assert_eq!(
            scan(frame.as_bytes()),
            Some(Stamp {
                channel: 3,
                seq: 9,
                scheduled_us: 77
            })
        );
    }

    #[test]
    fn small_sizes_still_carry_the_stamp() {
        let p = stamped(1, 2, 3, 10);
        assert_eq!(scan(p.as_bytes()).map(|s| s.seq), Some(2));
    }
}
