-- Subscriptions, aliases, catch-all addresses and quotas (PostgreSQL).

-- RFC 9051 §6.3.7: SUBSCRIBE; the default mailboxes start subscribed.
ALTER TABLE mailboxes ADD COLUMN subscribed BIGINT NOT NULL DEFAULT 1;

-- Storage limit in bytes; 0 is unlimited.
ALTER TABLE accounts ADD COLUMN quota_bytes BIGINT NOT NULL DEFAULT 0;

-- The last UIDVALIDITY given to a mailbox of the account, so that a mailbox
-- deleted and created again never gets its old one (RFC 9051 §2.3.1.1).
ALTER TABLE accounts ADD COLUMN last_uid_validity BIGINT NOT NULL DEFAULT 0;

-- The account receiving mail for unknown local parts of the domain.
ALTER TABLE domains ADD COLUMN catch_all_account_id BIGINT
    REFERENCES accounts (id) ON DELETE SET NULL;

-- An alias address delivers to each of its accounts.
CREATE TABLE aliases (
    address TEXT NOT NULL,
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (address, account_id)
);
