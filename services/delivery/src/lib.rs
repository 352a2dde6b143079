//! Queue workers: local delivery to mailstore, later MX routing and outbound SMTP.
