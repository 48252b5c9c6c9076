//! The socket's write protocol over a real TCP pair whose buffers are small,
//! so that writes are partial and queues fill for real.

#![allow(clippy::unwrap_used)]

use super::*;
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket};

const HEARTBEAT: Heartbeat = Heartbeat {
    ping_interval: Duration::from_secs(25),
    idle_timeout: Duration::from_secs(60),
    frame_timeout: Duration::from_secs(10),
};

/// A server-side socket and its peer, both with tiny kernel buffers.
async fn pair(capacity: usize, keep_unsent: bool) -> (Arc<Socket>, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = TcpSocket::new_v4().unwrap();
    peer.set_recv_buffer_size(4096).unwrap();
    let (peer, accepted) = tokio::join!(peer.connect(listener.local_addr().unwrap()), listener.accept());
    let (stream, _) = accepted.unwrap();
    socket2::SockRef::from(&stream)
        .set_send_buffer_size(4096)
        .unwrap();
    (
        Socket::new(stream, capacity, HEARTBEAT, keep_unsent),
        peer.unwrap(),
    )
}

fn text(n: u8, len: usize) -> PreparedFrame {
    PreparedFrame::from_wire(ws::frame(OpCode::Text, &vec![n; len]))
}

/// Every frame in `bytes`, as (opcode, payload); panics on a torn frame.
fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let (len, header) = match bytes[at + 1] & 0x7F {
            126 => (u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(bytes[at + 2..at + 10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let end = at + header + len;
        assert!(end <= bytes.len(), "a torn frame at byte {at}");
        out.push((bytes[at] & 0x0F, bytes[at + header..end].to_vec()));
        at = end;
    }
    out
}

async fn read_all(peer: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), peer.read_to_end(&mut all))
        .await
        .expect("the socket finishes")
        .unwrap();
    all
}

/// Offers frames of `len` bytes until one had to be queued.
fn offer_until_queued(socket: &Socket, len: usize) -> u8 {
    for n in 0..=u8::MAX {
        socket.offer(&text(n, len)).unwrap();
        if socket.queued() > 0 {
            return n;
        }
    }
    panic!("the kernel took 256 frames of {len} bytes");
}

#[tokio::test]
async fn a_frame_offered_to_an_idle_socket_is_written_at_once() {
    let (socket, mut peer) = pair(1 << 20, false).await;
    socket.offer(&text(1, 100)).unwrap();
    assert_eq!(socket.queued(), 0, "written directly, nothing queued");
    let mut buf = vec![0; 102];
    peer.read_exact(&mut buf).await.unwrap();
    assert_eq!(frames(&buf), vec![(1, vec![1; 100])]);
}

#[tokio::test]
async fn what_the_kernel_does_not_take_is_queued_in_order_and_flushed() {
    let (socket, mut peer) = pair(1 << 20, false).await;
    let last = offer_until_queued(&socket, 10_000);
    for n in last + 1..last + 6 {
        socket.offer(&text(n, 10_000)).unwrap();
    }
    let queued = socket.queued();
    assert!(queued > 5 * 10_000, "{queued}");
    let reader = tokio::spawn(async move { read_all(&mut peer).await });
    while socket.flush() == Flush::Blocked {
        socket.stream.writable().await.unwrap();
    }
    assert_eq!(socket.queued(), 0);
    socket.close(CloseReason::Normal);
    socket.finish(CloseReason::Normal).await;
    let got = frames(&reader.await.unwrap());
    let (close, data) = got.split_last().unwrap();
    assert_eq!(
        data.iter().map(|(_, p)| p[0]).collect::<Vec<_>>(),
        (0..last + 6).collect::<Vec<_>>(),
        "every frame once, in order"
    );
    assert_eq!(close.0, 0x8);
}

#[tokio::test]
async fn the_bound_is_in_bytes_and_a_slow_consumers_close_lands_on_a_frame_boundary() {
    let (socket, mut peer) = pair(200_000, false).await;
    let first_queued = offer_until_queued(&socket, 20_000);
    // The stream now ends inside frame `first_queued`; overflow the queue.
    let mut refused = None;
    for n in first_queued + 1..=u8::MAX {
        if let Err(e) = socket.offer(&text(n, 20_000)) {
            refused = Some(e);
            break;
        }
    }
    assert_eq!(refused, Some(Refused::Full));
    assert!(socket.queued() <= 200_000, "never past the bound");
    assert_eq!(socket.closing(), Some(CloseReason::SlowConsumer));
    assert_eq!(socket.offer(&text(0, 1)), Err(Refused::Closed));
    let reader = tokio::spawn(async move { read_all(&mut peer).await });
    socket.finish(CloseReason::SlowConsumer).await;
    let got = frames(&reader.await.unwrap());
    let (close, data) = got.split_last().unwrap();
    assert_eq!(
        data.iter().map(|(_, p)| p[0]).collect::<Vec<_>>(),
        (0..=first_queued).collect::<Vec<_>>(),
        "the torn frame was finished; the rest of the queue was dropped"
    );
    assert_eq!((close.0, &close.1[..2]), (0x8, &4008u16.to_be_bytes()[..]));
}

#[tokio::test]
async fn a_handler_waiting_for_room_is_served_while_the_queue_drains() {
    let (socket, mut peer) = pair(100_000, false).await;
    offer_until_queued(&socket, 20_000);
    let reader = tokio::spawn(async move { read_all(&mut peer).await });
    // The handler offers far more than the queue holds, paced; serve() is
    // what writes for it meanwhile.
    let frames_offered: Vec<PreparedFrame> = (0..50).map(|n| text(n, 20_000)).collect();
    let paced = switchboard_actors::sink::offer_paced(socket.as_ref(), &frames_offered);
    tokio::time::timeout(Duration::from_secs(10), socket.serve(paced))
        .await
        .expect("the replay completes")
        .unwrap();
    assert_eq!(socket.closing(), None, "never a slow consumer");
    socket.close(CloseReason::Normal);
    socket.finish(CloseReason::Normal).await;
    let got = frames(&reader.await.unwrap());
    assert!(got.len() > 50, "{}", got.len());
}

#[tokio::test]
async fn a_replaced_operator_socket_finishes_its_torn_frame_and_hands_over_the_rest() {
    let (socket, mut peer) = pair(1 << 20, true).await;
    let first_queued = offer_until_queued(&socket, 10_000);
    for n in first_queued + 1..first_queued + 4 {
        socket.offer(&text(n, 10_000)).unwrap();
    }
    assert!(
        socket.take_unsent().is_empty(),
        "nothing is unsent while it lives"
    );
    socket.close(CloseReason::Replaced);
    let moved: Vec<u8> = socket.take_unsent().iter().map(|f| f.payload()[0]).collect();
    assert_eq!(moved, (first_queued + 1..first_queued + 4).collect::<Vec<_>>());
    let reader = tokio::spawn(async move { read_all(&mut peer).await });
    socket.finish(CloseReason::Replaced).await;
    let got = frames(&reader.await.unwrap());
    let (close, data) = got.split_last().unwrap();
    assert_eq!(
        data.iter().map(|(_, p)| p[0]).collect::<Vec<_>>(),
        (0..=first_queued).collect::<Vec<_>>()
    );
    assert_eq!((close.0, &close.1[..2]), (0x8, &4009u16.to_be_bytes()[..]));
    assert!(socket.take_unsent().is_empty());
}

#[tokio::test]
async fn an_operator_socket_whose_peer_vanished_hands_back_every_frame_whole() {
    let (socket, _peer) = pair(1 << 20, true).await;
    let first_queued = offer_until_queued(&socket, 10_000);
    for n in first_queued + 1..first_queued + 3 {
        socket.offer(&text(n, 10_000)).unwrap();
    }
    socket.close(CloseReason::PeerGone);
    socket.finish(CloseReason::PeerGone).await;
    let unsent = socket.take_unsent();
    assert_eq!(
        unsent.iter().map(|f| f.payload()[0]).collect::<Vec<_>>(),
        (first_queued..first_queued + 3).collect::<Vec<_>>(),
        "the partly written frame too, whole"
    );
    assert!(unsent.iter().all(|f| f.len() == text(0, 10_000).len()));
    assert_eq!(socket.queued(), 0);
}

#[tokio::test]
async fn a_deferring_batch_queues_frames_and_writes_them_once_when_it_ends() {
    let (socket, mut peer) = pair(1 << 20, false).await;
    let batch = || {
        switchboard_actors::batch::scope(|| {
            socket.offer(&text(0, 100)).unwrap();
            assert_eq!(socket.queued(), 0, "before the batch defers, written at once");
            switchboard_actors::batch::defer();
            for n in 1..=10 {
                socket.offer(&text(n, 100)).unwrap();
            }
            socket.queued()
        })
    };
    assert_eq!(batch(), 10 * charge(&text(0, 100)), "deferred, not written");
    assert_eq!(socket.queued(), 0, "written when the batch ended");
    let mut buf = vec![0; 11 * 102];
    tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        frames(&buf).iter().map(|(_, p)| p[0]).collect::<Vec<_>>(),
        (0..=10).collect::<Vec<_>>(),
        "in order"
    );
}

#[tokio::test]
async fn a_batch_the_kernel_cannot_take_is_left_to_the_connections_task() {
    let (socket, mut peer) = pair(1 << 20, false).await;
    switchboard_actors::batch::scope(|| {
        switchboard_actors::batch::defer();
        for n in 0..100 {
            socket.offer(&text(n, 10_000)).unwrap();
        }
    });
    assert!(
        socket.queued() > 0,
        "a 4 KiB send buffer takes far less than 1 MB"
    );
    let signaled = std::future::poll_fn(|cx| std::task::Poll::Ready(socket.poll_signal(cx))).await;
    assert!(signaled, "the connection's task was told to write the rest");
    let reader = tokio::spawn(async move { read_all(&mut peer).await });
    while socket.flush() == Flush::Blocked {
        socket.stream.writable().await.unwrap();
    }
    socket.close(CloseReason::Normal);
    socket.finish(CloseReason::Normal).await;
    let got = frames(&reader.await.unwrap());
    assert_eq!(
        got[..got.len() - 1].iter().map(|(_, p)| p[0]).collect::<Vec<_>>(),
        (0..100).collect::<Vec<_>>()
    );
}
