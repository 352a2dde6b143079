-- DKIM signing keys (RFC 6376) of our domains (SQLite). A (domain, selector)
-- holds one key; delivery signs with the newest key of a domain.
CREATE TABLE dkim_keys (
    domain TEXT NOT NULL,
    selector TEXT NOT NULL,
    -- "rsa-sha256" or "ed25519-sha256".
    algorithm TEXT NOT NULL,
    -- PKCS#8 PEM.
    private_key_pem TEXT NOT NULL,
    -- The p= value published in DNS, base64.
    public_key TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (domain, selector)
);
