-- Message history (PostgreSQL): what happened to each message (received, verdict,
-- every delivery outcome), read by `mailfleet trace` by queue id or
-- Message-ID, and deleted after mailstore.history_retention_days.
CREATE TABLE message_history (
    id BIGSERIAL PRIMARY KEY,
    queue_id TEXT NOT NULL,
    -- With angle brackets; empty when the message had none.
    message_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    stage TEXT NOT NULL,
    recipient TEXT NOT NULL,
    remote TEXT NOT NULL,
    reply TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX message_history_queue_id ON message_history (queue_id);
CREATE INDEX message_history_message_id ON message_history (message_id);
-- The retention sweep deletes by age.
CREATE INDEX message_history_at_ms ON message_history (at_ms);
