//! SMTP front door: MX inbound, submission and submissions.
