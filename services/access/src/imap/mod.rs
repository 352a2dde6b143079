//! IMAP4rev2 (RFC 9051), answering IMAP4rev1 (RFC 3501) clients too:
//! [`parser`] turns command bytes into [`parser::Command`]s, [`session`]
//! runs the state machine, [`response`] encodes what handlers return.

pub mod mime;
pub mod parser;
pub mod response;
pub mod search;
pub mod session;
pub mod utf7;

pub use session::serve;
