//! Buffers lent to connections while they have something to do: each thread keeps one
//! spare of each kind, which the next connection it serves takes. A fleet of connections
//! sending one reading at a time then reuses a few allocations instead of making and
//! freeing each of its buffers per reading, and an idle connection holds none of them.

use std::cell::Cell;
use std::collections::VecDeque;
use std::thread::LocalKey;
use std::time::Instant;

use bytes::BytesMut;

use super::connection::{Decoded, Out};
use super::pending::{InFlight, PendingReply};
use super::stream::READ_CHUNK_BYTES;

/// Largest buffer kept as a spare: a burst's larger one goes back to the allocator.
const MAX_SPARE_BYTES: usize = 8 * READ_CHUNK_BYTES;

thread_local! {
    static READ: Cell<BytesMut> = Cell::new(BytesMut::new());
    static OUT: Cell<Option<Box<Out>>> = const { Cell::new(None) };
    static REPLIES: Cell<Vec<PendingReply>> = const { Cell::new(Vec::new()) };
    static DECODED: Cell<Option<Box<Decoded>>> = const { Cell::new(None) };
    static INFLIGHT: Cell<VecDeque<InFlight>> = const { Cell::new(VecDeque::new()) };
}

/// This thread's spare (empty when there is none, or while the thread exits).
fn take<T: Default>(key: &'static LocalKey<Cell<T>>) -> T {
    key.try_with(Cell::take).unwrap_or_default()
}

/// Keep `spare` (emptied by the caller) for the next taker on this thread, in place of
/// the one kept, if any.
fn keep<T>(key: &'static LocalKey<Cell<T>>, spare: T) {
    // While the thread exits it is just dropped.
    let _ = key.try_with(|slot| slot.set(spare));
}

/// A read buffer: the spare, else a new one (the read reserves its room).
pub(super) fn read_buf() -> BytesMut {
    take(&READ)
}

/// Give back a read buffer the connection has consumed.
pub(super) fn give_read_buf(mut buf: BytesMut) {
    debug_assert!(buf.is_empty());
    if buf.capacity() > 0 && buf.capacity() <= MAX_SPARE_BYTES {
        buf.clear();
        keep(&READ, buf);
    }
}

/// Replies to encode: the spare, else a new one with room for a write's first replies.
pub(super) fn out() -> Box<Out> {
    take(&OUT).unwrap_or_else(|| Box::new(Out::new()))
}

/// Give back replies once written.
pub(super) fn give_out(out: Box<Out>) {
    if out.bytes.capacity() <= MAX_SPARE_BYTES
        && out.ack_receipts.capacity() <= MAX_SPARE_BYTES / size_of::<Instant>()
    {
        let mut out = out;
        out.clear();
        keep(&OUT, Some(out));
    }
}

/// Room for what a read decodes: the spare (its reply vector from the spare ones), else
/// a new one.
pub(super) fn decoded() -> Box<Decoded> {
    let mut decoded = take(&DECODED).unwrap_or_default();
    if decoded.replies.capacity() == 0 {
        decoded.replies = take(&REPLIES);
    }
    decoded
}

/// Give back what was decoded once submitted (its vectors were taken: only the box).
pub(super) fn give_decoded(decoded: Box<Decoded>) {
    if decoded.batch.capacity() == 0 && decoded.replies.capacity() == 0 {
        keep(&DECODED, Some(decoded));
    }
}

/// Give back a vector of replies once they are encoded.
pub(super) fn give_replies(mut replies: Vec<PendingReply>) {
    if replies.capacity() > 0 && replies.capacity() <= 64 {
        replies.clear();
        keep(&REPLIES, replies);
    }
}

/// A queue of batches in flight.
pub(super) fn inflight() -> VecDeque<InFlight> {
    take(&INFLIGHT)
}

/// Give back the queue once every batch in it is answered.
pub(super) fn give_inflight(mut inflight: VecDeque<InFlight>) {
    if inflight.capacity() > 0 && inflight.capacity() <= 64 {
        inflight.clear();
        keep(&INFLIGHT, inflight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer given back is the next one taken on the same thread (no new allocation);
    /// an oversize one is not kept.
    #[test]
    fn a_given_buffer_is_taken_again() {
        let mut written = out();
        written.bytes.extend_from_slice(b"ack 1\n");
        written.ack_receipts.push(Instant::now());
        let at = written.bytes.as_ptr();
        give_out(written);
        let again = out();
        assert_eq!(again.bytes.as_ptr(), at);
        assert!(again.bytes.is_empty());
        assert!(again.ack_receipts.is_empty());
        let mut large = out();
        large.bytes.reserve(MAX_SPARE_BYTES + 1);
        give_out(large);
        assert!(
            out().bytes.capacity() < MAX_SPARE_BYTES,
            "an oversize buffer is not kept"
        );

        let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
        buf.extend_from_slice(b"m v=1\n");
        bytes::Buf::advance(&mut buf, 6);
        let at = buf.as_ptr();
        give_read_buf(buf);
        let again = read_buf();
        assert!(again.capacity() > 0);
        assert_eq!(again.as_ptr(), at);
        assert_eq!(read_buf().capacity(), 0, "one spare, taken once");
    }
}
