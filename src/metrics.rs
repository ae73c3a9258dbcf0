//! Every counter the server keeps.
