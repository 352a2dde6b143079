//! The messages a run sends: sizes (fixed or a weighted mix, picked
//! deterministically per message index), and a body with a unique marker in
//! Subject and Message-ID so the e2e scenario can find each one again.

use std::fmt::Write as _;

/// A size or a weighted mix of sizes: `4k`, `100k`, `4k:70,100k:30`.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeMix(Vec<(usize, u32)>);

impl std::str::FromStr for SizeMix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in s.split(',') {
            let (size, weight) = match part.split_once(':') {
                Some((size, w)) => (
                    size,
                    w.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("bad weight in {part:?}"))?,
                ),
                None => (part, 1),
            };
            if weight == 0 {
                continue;
            }
            out.push((parse_size(size)?, weight));
        }
        if out.is_empty() {
            return Err(format!("no size in {s:?}"));
        }
        Ok(SizeMix(out))
    }
}

/// `4096`, `4k`, `4K`, `1m`: bytes (k = 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1024),
        Some((i, 'm' | 'M')) => (&s[..i], 1024 * 1024),
        _ => (s, 1),
    };
    let n: usize = digits
        .trim()
        .parse()
        .map_err(|_| format!("bad size {s:?}"))?;
    Ok(n * mult)
}

impl std::fmt::Display for SizeMix {
    /// `4096` or `4096:70,102400:30`: what parses back to the same mix.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let [(size, _)] = self.0.as_slice() {
            return write!(f, "{size}");
        }
        let parts: Vec<String> = self.0.iter().map(|(s, w)| format!("{s}:{w}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl SizeMix {
    /// The size of message `index`: the same index always gets the same
    /// size, and over many messages the weights hold.
    pub fn pick(&self, index: u64) -> usize {
        let total: u64 = self.0.iter().map(|&(_, w)| u64::from(w)).sum();
        let mut r = splitmix64(index) % total;
        for &(size, w) in &self.0 {
            if r < u64::from(w) {
                return size;
            }
            r -= u64::from(w);
        }
        self.0[0].0
    }

    /// The weighted mean size, for reports.
    pub fn mean(&self) -> f64 {
        let total: u64 = self.0.iter().map(|&(_, w)| u64::from(w)).sum();
        self.0
            .iter()
            .map(|&(s, w)| s as f64 * f64::from(w))
            .sum::<f64>()
            / total as f64
    }
}

/// A well-mixing hash of the index (Steele et al., SplitMix64).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The Subject marker of message `index` of run `run_id`.
pub fn marker(run_id: &str, index: u64) -> String {
    format!("loadtest {run_id} #{index}")
}

/// Finds the message index in a header block sent by this run (`None` for
/// other mail in the mailbox).
pub fn find_marker(headers: &[u8], run_id: &str) -> Option<u64> {
    let needle = format!("loadtest {run_id} #");
    let text = String::from_utf8_lossy(headers);
    let start = text.find(&needle)? + needle.len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The message as it goes on the wire after DATA: CRLF lines, no line
/// starting with a dot (so no dot-stuffing is needed), ending with
/// `CRLF.CRLF`, about `size` bytes long (never shorter than its headers).
pub fn build(run_id: &str, index: u64, from: &str, to: &str, size: usize) -> Vec<u8> {
    let mut head = String::with_capacity(512);
    let _ = write!(
        head,
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: {}\r\nMessage-ID: <{run_id}.{index}@loadtest.invalid>\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        marker(run_id, index)
    );
    let mut out = head.into_bytes();
    out.reserve(size.saturating_sub(out.len()) + 80);
    // Lines of 76 characters plus CRLF, varied so compression does not make
    // the payload unrealistically cheap, until the size is reached.
    let alphabet = b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789";
    let mut seed = splitmix64(index ^ 0x5eed);
    while out.len() + 78 <= size {
        for _ in 0..76 {
            seed = splitmix64(seed);
            out.push(alphabet[(seed % alphabet.len() as u64) as usize]);
        }
        out.extend_from_slice(b"\r\n");
    }
    if out.ends_with(b"\r\n\r\n") {
        out.extend_from_slice(b"x\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_mixes_parse() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("100K"), Ok(102_400));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert!(parse_size("k").is_err());
        assert!(parse_size("4x").is_err());
        let mix: SizeMix = "4k:70,100k:30".parse().unwrap();
        assert_eq!(mix, SizeMix(vec![(4096, 70), (102_400, 30)]));
        assert_eq!(mix.to_string(), "4096:70,102400:30");
        assert_eq!("4k".parse::<SizeMix>().unwrap().to_string(), "4096");
        assert!("".parse::<SizeMix>().is_err());
        assert!("4k:0".parse::<SizeMix>().is_err());
        assert!("4k:x".parse::<SizeMix>().is_err());
    }

    #[test]
    fn mix_is_deterministic_and_weighted() {
        let mix: SizeMix = "1k:75,2k:25".parse().unwrap();
        assert_eq!(mix.pick(17), mix.pick(17));
        let big = (0..10_000).filter(|&i| mix.pick(i) == 2048).count();
        assert!((2000..3000).contains(&big), "{big}");
        assert_eq!(mix.mean(), 1024.0 * 0.75 + 2048.0 * 0.25);
    }

    #[test]
    fn message_has_marker_size_and_terminator() {
        for size in [0, 100, 4096, 102_400] {
            let m = build("r1", 42, "a@x.test", "b@y.test", size);
            assert!(m.ends_with(b"\r\n.\r\n"));
            assert!(
                m.len() + 80 >= size && m.len() <= size.max(300) + 8,
                "{size} {}",
                m.len()
            );
            let text = String::from_utf8(m.clone()).unwrap();
            assert!(
                !text.contains("\r\n.")
                    || text.ends_with("\r\n.\r\n") && text.matches("\r\n.").count() == 1
            );
            assert!(!text.contains('\n') || !text.replace("\r\n", "").contains('\n'));
            assert_eq!(find_marker(&m, "r1"), Some(42));
            assert_eq!(find_marker(&m, "r2"), None);
        }
    }

    #[test]
    fn marker_parse_is_strict_about_run_id() {
        let h = b"Subject: loadtest abc #7\r\nX: y\r\n";
        assert_eq!(find_marker(h, "abc"), Some(7));
        assert_eq!(find_marker(h, "ab"), None);
        assert_eq!(find_marker(b"Subject: loadtest abc #\r\n", "abc"), None);
    }
}
