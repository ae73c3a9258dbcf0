//! The socket as the kernel sees it: facts about a connection that only the operating system
//! knows (today [`tcp_info`]: Linux `TCP_INFO`), kept apart from the protocol and the client
//! and server loops that will report them.

pub mod tcp_info;
