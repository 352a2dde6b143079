-- The directory and the mailboxes (SQLite, single node).
-- Integers are 64-bit; names and addresses are stored lowercased by the code.

CREATE TABLE domains (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE accounts (
    id INTEGER PRIMARY KEY,
    domain_id INTEGER NOT NULL REFERENCES domains (id),
    address TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE TABLE mailboxes (
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    special_use TEXT NOT NULL DEFAULT '',
    uid_validity INTEGER NOT NULL,
    uid_next INTEGER NOT NULL DEFAULT 1,
    highest_modseq INTEGER NOT NULL DEFAULT 1,
    UNIQUE (account_id, name)
);

CREATE TABLE messages (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid INTEGER NOT NULL,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    internal_date_ms INTEGER NOT NULL,
    flags TEXT NOT NULL DEFAULT '',
    modseq INTEGER NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
);

CREATE INDEX messages_blob ON messages (blob);

-- One row per (queue id, recipient) ever delivered; no foreign key so that
-- the key outlives an expunge and a redelivery still counts as a duplicate.
CREATE TABLE deliveries (
    idempotency_key TEXT PRIMARY KEY,
    mailbox_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
);

CREATE INDEX deliveries_mailbox ON deliveries (mailbox_id);

-- How many messages point at each content-addressed blob.
CREATE TABLE blob_refs (
    blob TEXT PRIMARY KEY,
    refcount INTEGER NOT NULL
);
