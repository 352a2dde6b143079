-- The directory and the mailboxes (PostgreSQL, cluster).
-- Every integer is BIGINT: the sqlx Any driver decodes them as i64.

CREATE TABLE domains (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE accounts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain_id BIGINT NOT NULL REFERENCES domains (id),
    address TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE mailboxes (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    special_use TEXT NOT NULL DEFAULT '',
    uid_validity BIGINT NOT NULL,
    uid_next BIGINT NOT NULL DEFAULT 1,
    highest_modseq BIGINT NOT NULL DEFAULT 1,
    UNIQUE (account_id, name)
);

CREATE TABLE messages (
    mailbox_id BIGINT NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid BIGINT NOT NULL,
    blob TEXT NOT NULL,
    size BIGINT NOT NULL,
    internal_date_ms BIGINT NOT NULL,
    flags TEXT NOT NULL DEFAULT '',
    modseq BIGINT NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
);

CREATE INDEX messages_blob ON messages (blob);

-- One row per (queue id, recipient) ever delivered; no foreign key so that
-- the key outlives an expunge and a redelivery still counts as a duplicate.
CREATE TABLE deliveries (
    idempotency_key TEXT PRIMARY KEY,
    mailbox_id BIGINT NOT NULL,
    uid BIGINT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE INDEX deliveries_mailbox ON deliveries (mailbox_id);

-- How many messages point at each content-addressed blob.
CREATE TABLE blob_refs (
    blob TEXT PRIMARY KEY,
    refcount BIGINT NOT NULL
);
