//! Mailboxes and the directory, over SQLite or PostgreSQL, served over gRPC.
