//! The socket as the kernel sees it: facts about a connection that only the operating system
//! knows ([`tcp_info`]: Linux `TCP_INFO`; [`pktinfo`]: the local address a UDP datagram
//! was sent to, to reply from it), kept apart from the protocol and the client and server
//! loops that use them.

pub mod pktinfo;
pub mod tcp_info;
