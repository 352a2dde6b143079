//! POP3 (RFC 1939, with CAPA from RFC 2449 and the AUTH response code of
//! RFC 3206) over the account's INBOX: [`parser`] reads command lines,
//! [`session`] runs the AUTHORIZATION / TRANSACTION / UPDATE states.

pub mod parser;
pub mod session;

pub use session::serve;
