//! Server memory from /proc: RSS (`VmRSS` in /proc/PID/status) and PSS
//! (`Pss` in /proc/PID/smaps_rollup, which shares shared pages out fairly
//! between processes — the number to compare a one-process server with a
//! process-per-connection one like Dovecot), of given PIDs and, optionally,
//! all their descendants at the moment of measuring.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq)]
pub struct Memory {
    pub processes: usize,
    pub rss_kb: u64,
    pub pss_kb: u64,
}

/// `VmRSS:    1234 kB` (status) or `Pss:  1234 kB` (smaps_rollup) → 1234.
pub fn field_kb(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_ascii_whitespace().next()?.parse().ok()
    })
}

/// The parent PID from /proc/PID/stat: the fourth field, after the command
/// name in parentheses (which may itself contain spaces and parentheses).
pub fn stat_ppid(stat: &str) -> Option<u32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// `pids` and, with `children`, every process below them now.
pub fn processes(pids: &[u32], children: bool) -> BTreeSet<u32> {
    let mut set: BTreeSet<u32> = pids.iter().copied().collect();
    if !children {
        return set;
    }
    let mut parent_of = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .as_deref()
                .and_then(stat_ppid)
            {
                parent_of.insert(pid, ppid);
            }
        }
    }
    loop {
        let before = set.len();
        for (&pid, ppid) in &parent_of {
            if set.contains(ppid) {
                set.insert(pid);
            }
        }
        if set.len() == before {
            return set;
        }
    }
}

pub fn measure(pids: &[u32], children: bool) -> Memory {
    let mut m = Memory::default();
    for pid in processes(pids, children) {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        m.processes += 1;
        let rss = field_kb(&status, "VmRSS").unwrap_or(0);
        m.rss_kb += rss;
        m.pss_kb += std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .ok()
            .and_then(|s| field_kb(&s, "Pss"))
            .unwrap_or(rss);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let status = "Name:\tmailfleet\nVmPeak:\t  9999 kB\nVmRSS:\t   51234 kB\nThreads: 4\n";
        assert_eq!(field_kb(status, "VmRSS"), Some(51234));
        assert_eq!(field_kb(status, "VmSwap"), None);
        assert_eq!(field_kb("Pss:                2048 kB\n", "Pss"), Some(2048));
        assert_eq!(stat_ppid("123 (imap (x) y) S 77 123 123 0"), Some(77));
        assert_eq!(stat_ppid("garbage"), None);
    }

    #[test]
    fn measures_this_process() {
        let me = std::process::id();
        let m = measure(&[me], true);
        assert!(m.processes >= 1 && m.rss_kb > 0 && m.pss_kb > 0, "{m:?}");
        assert_eq!(measure(&[u32::MAX], false), Memory::default());
    }
}
