//! IMAP4rev2/rev1 and POP3 servers reading the mailstore.
