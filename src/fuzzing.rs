//! The fuzz targets' bodies, shared by `cargo fuzz` (`fuzz/`) and by the
//! stable test below that replays the committed corpus, so an input that
//! once broke a decoder fails CI for good. Each decodes hostile bytes the way
//! the server does and checks what must hold of whatever it accepts.
//! Built for tests and for fuzzing only.

use switchboard_proto::{ClientFrame, OperatorFrame};

use crate::ws::reader::{Event, FrameReader};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus directory has.
pub const TARGETS: &[(&str, Target)] = &[
    ("ws_reader", ws_reader),
    ("client_frame", client_frame),
    ("operator_frame", operator_frame),
    ("ticket", ticket),
    ("handshake", handshake),
];

/// The WebSocket frame reader, fed in pieces (byte 0 sets their size): it
/// never panics, never returns text that is not UTF-8 or over the limit, and
/// never holds more than what arrived and is not yet handled.
pub fn ws_reader(data: &[u8]) {
    const MAX: usize = 1024;
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let mut reader = FrameReader::new(MAX);
    for chunk in rest.chunks(step) {
        reader.feed(chunk);
        loop {
            match reader.next_event() {
                Ok(None) => break,
                Ok(Some(Event::Text(text))) => {
                    assert!(text.len() <= MAX, "text over the limit");
                    assert!(std::str::from_utf8(&text).is_ok(), "text that is not UTF-8");
                }
                Ok(Some(_)) => {}
                Err(_) => return,
            }
        }
        reader.release_idle();
        // A partial frame (header, at most MAX payload) plus one piece,
        // twice over for the vectors' growth.
        let bound = 2 * (14 + MAX + step) + 2 * MAX;
        assert!(
            reader.held() <= bound,
            "holds {} for {step}-byte pieces",
            reader.held()
        );
    }
}

/// A client frame: refused with an error, or decoded into one that encodes
/// and decodes to itself.
pub fn client_frame(data: &[u8]) {
    if let Ok(frame) = ClientFrame::decode(data) {
        let text = frame.encode();
        let again = ClientFrame::decode(text.as_bytes());
        assert!(again.is_ok_and(|f| f.encode() == text), "{text}");
    }
}

/// An operator frame, likewise.
pub fn operator_frame(data: &[u8]) {
    if let Ok(frame) = OperatorFrame::decode(data) {
        let text = frame.encode();
        let again = OperatorFrame::decode(text.as_bytes());
        assert!(again.is_ok_and(|f| f.encode() == text), "{text}");
    }
}

/// Ticket verification (see [`crate::tickets`]).
pub fn ticket(data: &[u8]) {
    crate::tickets::fuzz_verify(data);
}

/// An upgrade request, parsed as hyper parses it, then checked as the
/// server checks it: a request it accepts gets a well-formed 101.
pub fn handshake(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = parsed.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return;
    };
    let mut builder = axum::http::Request::builder().method(method).uri(path);
    for h in parsed.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    let Ok(req) = builder.body(()) else {
        return;
    };
    if let Ok(key) = crate::ws::handshake::check_upgrade(&req) {
        let res = crate::ws::handshake::switching_protocols(&key);
        assert_eq!(res.status(), 101);
        assert!(res.headers().contains_key("sec-websocket-accept"));
    }
    let _ = crate::ws::handshake::credential(&req);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input of the committed corpus, through its target, on stable.
    #[test]
    fn the_committed_corpus_replays_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let inputs: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            assert!(inputs.len() >= 10, "{name}: a corpus of {} inputs", inputs.len());
            for path in inputs {
                let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                target(&data);
            }
        }
    }
}
