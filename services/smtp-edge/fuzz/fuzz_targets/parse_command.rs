//! Fuzzes the SMTP command parser and what reads its output: every LF-
//! terminated line of the input is parsed as a command (so one input
//! replays a whole EHLO/MAIL/RCPT/BDAT/AUTH dialog, mox's habit), the
//! addresses go through the relay and SMTPUTF8 checks, AUTH initial
//! responses through the SASL decoders. Nothing may panic.

#![no_main]

// auth.rs decodes through `mailfleet_runtime::base64`; the fuzz crate
// compiles that one file itself under the runtime's name rather than
// building the whole runtime (databases, NATS, TLS) with sanitizers.
extern crate self as mailfleet_runtime;
#[allow(dead_code)]
#[path = "../../../runtime/src/base64.rs"]
mod base64;

#[path = "../../src/address.rs"]
mod address;
#[allow(dead_code)]
#[path = "../../src/auth.rs"]
mod auth;
#[allow(dead_code)]
#[path = "../../src/parser.rs"]
mod parser;

use libfuzzer_sys::fuzz_target;
use parser::Command;

fuzz_target!(|data: &[u8]| {
    for line in data.split_inclusive(|&b| b == b'\n') {
        match parser::parse_command(line) {
            Ok(Command::Mail(from)) => {
                let _ = address::relay_trick(&from.address);
                let _ = address::needs_smtputf8(&from.address);
            }
            Ok(Command::Rcpt(to)) => {
                let _ = address::relay_trick(&to.address);
                let _ = address::needs_smtputf8(&to.address);
            }
            Ok(Command::Auth {
                initial_response: Some(response),
                ..
            }) => {
                if let Ok(decoded) = auth::decode_response(&response) {
                    let _ = auth::parse_plain(&decoded);
                    let _ = auth::parse_login_field(&decoded);
                }
            }
            _ => {}
        }
    }
    // The whole input as one (possibly unterminated) line, too.
    let _ = parser::parse_command(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = auth::decode_response(text);
    }
});
