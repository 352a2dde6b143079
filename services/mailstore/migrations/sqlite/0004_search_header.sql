-- What IMAP SEARCH matches header keys against, parsed once at delivery:
-- decoded From/To/Cc/Bcc/Subject and the Date (epoch seconds), one
-- "name: value" line each. Empty for messages stored before this.
ALTER TABLE messages ADD COLUMN search_header TEXT NOT NULL DEFAULT '';
