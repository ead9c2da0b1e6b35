//! Per-thread reusable byte buffers for the request path and the tunnel.
//!
//! A connection stays on the worker thread that accepted it, so a buffer
//! borrowed for a request head or for a burst of tunnel reads circulates
//! within one thread: no allocation and no cross-thread free per use
//! (allocating and freeing 32 KiB for every burst, two or more per tunnel,
//! showed in profiles as malloc work). At most [`Buffer::KEPT`] wait per
//! thread, and only while nothing borrows them: an idle tunnel holds none.
//!
//! This module only lends memory; it never reads or writes a socket.

/// Size of every buffer: room for the largest request head
/// (`request::MAX_HEAD_BYTES`) and for a burst of tunnel reads; a read that
/// fills it marks bulk data (see `tunnel`). Below glibc's 64 KiB threshold
/// at which a free consolidates the heap, which showed up in profiles when
/// every small request/response burst paid it.
pub const SIZE: usize = 32 * 1024;

/// A buffer of [`SIZE`] bytes' capacity, empty when taken, given back to
/// this thread's spares when dropped (cleared, so nothing of one connection
/// reaches the next; a buffer that grew past [`SIZE`] is freed instead).
pub struct Buffer(Vec<u8>);

thread_local! {
    static SPARES: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Buffer {
    /// The most spare buffers one thread keeps.
    pub const KEPT: usize = 8;

    pub fn take() -> Buffer {
        let spare = SPARES.try_with(|spare| spare.borrow_mut().pop()).ok().flatten();
        Buffer(spare.unwrap_or_else(|| Vec::with_capacity(SIZE)))
    }
}

/// Shows the length only: the bytes are a client's.
impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer").field("len", &self.0.len()).finish()
    }
}

impl std::ops::Deref for Buffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut buffer = std::mem::take(&mut self.0);
        if buffer.capacity() != SIZE {
            return;
        }
        buffer.clear();
        // During thread teardown the list may be gone: then the buffer is simply freed.
        let _ = SPARES.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < Buffer::KEPT {
                spare.push(buffer);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // tests: a panic is a failure

    use super::*;

    /// A dropped buffer is handed out again on the same thread, empty; at
    /// most `KEPT` wait, and a buffer that grew is not kept.
    #[test]
    fn buffers_are_reused_within_a_thread_and_bounded() {
        std::thread::spawn(|| {
            let mut first = Buffer::take();
            first.extend_from_slice(b"secret");
            let address = first.as_ptr();
            drop(first);
            let again = Buffer::take();
            assert_eq!(again.as_ptr(), address, "the same allocation comes back");
            assert!(again.is_empty(), "nothing of the last use is left");
            assert_eq!(again.capacity(), SIZE);
            drop(again);

            let many: Vec<Buffer> = (0..Buffer::KEPT + 5).map(|_| Buffer::take()).collect();
            drop(many);
            assert_eq!(SPARES.with(|spare| spare.borrow().len()), Buffer::KEPT);

            let mut grown = Buffer::take();
            grown.extend_from_slice(&vec![0u8; SIZE + 1]);
            drop(grown);
            assert_eq!(SPARES.with(|spare| spare.borrow().len()), Buffer::KEPT - 1);
        })
        .join()
        .unwrap();
    }
}
