//! Sender authentication and spam scoring: the verdict for every message.
