//! The client's delivery state, with no I/O: which readings are waiting, in flight,
//! acknowledged or timed out. Retry and loss logic is unit-tested here without sockets.
