-- ENVELOPE, BODYSTRUCTURE and BODY as IMAP FETCH sends them, rendered once
-- at delivery (mailfleet_runtime::imap_mime) so that FETCH need not read and
-- parse the blob. Empty for messages stored before this: access computes
-- those from the blob.
ALTER TABLE messages ADD COLUMN envelope TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN body_structure TEXT NOT NULL DEFAULT '';
ALTER TABLE messages ADD COLUMN body_simple TEXT NOT NULL DEFAULT '';
