//! The rate limit of logs a tenant's process writes straight into a file
//! (a machine's stdout, a build's cargo): one rule for both.
//!
//! The writer holds the file open with `O_APPEND`, so nothing can slow it
//! down without a relay in its way; instead, once a second, a keeper cuts
//! what the file grew by past the rate since the last look
//! ([`cut_to_rate`]): the first `rate` bytes of that growth are kept (up to
//! their last line end), the rest is dropped and a note line says how
//! much. The writer's next write lands after the note.
//!
//! A follower of the file (`hangar logs -f`, a deploy's build log) may
//! already have read past the cut: when it finds the file shorter than
//! its position it goes on from the last note ([`resume_point`]), so it
//! never shows the kept part twice.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Every note starts so, on a line of its own.
pub const NOTE_PREFIX: &str = "[hangar] ";
/// What makes a `[hangar] ` line a rate note.
const NOTE_MARK: &str = " bytes of output dropped: over the log rate limit of ";

/// How far back from a cut the keeper looks for a line end, and a
/// follower for the last note.
pub const SEARCH: u64 = 64 * 1024;

/// The note appended where `dropped` bytes were cut at `rate` bytes a second.
pub fn note(dropped: u64, rate: u64) -> String {
    format!("{NOTE_PREFIX}{dropped}{NOTE_MARK}{} KiB/s\n", rate / 1024)
}

/// Whether `line` (without its newline) is a rate note.
pub fn is_note(line: &str) -> bool {
    line.strip_prefix(NOTE_PREFIX)
        .and_then(|rest| rest.split_once(NOTE_MARK))
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// If the file at `path` grew past `before + rate` bytes, cuts it back to
/// the last line end within that (or exactly there, if the growth has no
/// line end) and appends a [`note`]. Returns the bytes dropped, or `None`
/// if it was within its rate. A file shorter than `before` (cut since, or
/// replaced) counts as grown from zero.
pub fn cut_to_rate(path: &Path, before: u64, rate: u64) -> io::Result<Option<u64>> {
    let mut f = fs::OpenOptions::new().read(true).append(true).open(path)?;
    let len = f.metadata()?.len();
    let before = if len < before { 0 } else { before };
    if len - before <= rate {
        return Ok(None);
    }
    let limit = before + rate;
    let from = limit.saturating_sub(SEARCH).max(before);
    f.seek(SeekFrom::Start(from))?;
    let mut window = Vec::with_capacity((limit - from) as usize);
    (&mut f).take(limit - from).read_to_end(&mut window)?;
    let cut = match window.iter().rposition(|&b| b == b'\n') {
        Some(i) => from + i as u64 + 1,
        None => limit,
    };
    // What the writer adds between the stat and here goes too: it is over
    // the rate as well.
    let now = f.metadata()?.len();
    f.set_len(cut)?;
    let dropped = now.saturating_sub(cut);
    f.write_all(note(dropped, rate).as_bytes())?;
    Ok(Some(dropped))
}

/// Where a follower goes on after finding the file shorter than what it
/// read: the offset of the last note line in `tail` (the file's last bytes,
/// from offset `tail_start`), or `None` when there is none (the file was
/// cut whole, so it is read again from its start).
pub fn resume_point(tail: &[u8], tail_start: u64) -> Option<u64> {
    let mut end = tail.len();
    while end > 0 {
        let start = tail[..end.saturating_sub(1)]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line = &tail[start..end];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        // The first line of the window may be cut short: it counts only
        // if the window is the file's start.
        if (start > 0 || tail_start == 0) && std::str::from_utf8(line).is_ok_and(is_note) {
            return Some(tail_start + start as u64);
        }
        end = start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_past_its_rate_keeps_that_many_bytes_of_whole_lines_and_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("m.log");
        fs::write(&log, "earlier\n").unwrap();
        let mut w = fs::OpenOptions::new().append(true).open(&log).unwrap();
        // 10,000 lines of 10 bytes in one second, for a rate of 1,000.
        for i in 0..10_000 {
            w.write_all(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        assert_eq!(cut_to_rate(&log, 8, 1000).unwrap(), Some(99_000));
        let text = fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 102);
        assert_eq!(
            (lines[0], lines[1], lines[100]),
            ("earlier", "line 0000", "line 0099")
        );
        assert!(is_note(lines[101]), "{}", lines[101]);
        // The writer goes on after the note.
        w.write_all(b"after\n").unwrap();
        assert!(
            fs::read_to_string(&log)
                .unwrap()
                .ends_with("KiB/s\nafter\n")
        );
        // Within its rate: untouched.
        let len = fs::metadata(&log).unwrap().len();
        w.write_all(b"more\n").unwrap();
        assert_eq!(cut_to_rate(&log, len, 1000).unwrap(), None);
        assert!(fs::read_to_string(&log).unwrap().ends_with("after\nmore\n"));
    }

    #[test]
    fn a_follower_goes_on_from_the_last_note() {
        let text = format!("a\nb\n{}c\n", note(42, 2048));
        let at = resume_point(text.as_bytes(), 100).unwrap();
        assert_eq!(at, 104, "after `a\\nb\\n`");
        // A line that only looks like one, or a file cut whole: none.
        assert!(!is_note(
            "[hangar] many bytes of output dropped: over the log rate limit of 1 KiB/s"
        ));
        assert_eq!(resume_point(b"x\ny\n", 0), None);
        // The window's first line may be a partial one.
        let note = note(1, 1024);
        assert_eq!(resume_point(note.as_bytes(), 0), Some(0));
        assert_eq!(resume_point(&note.as_bytes()[3..], 3), None);
    }
}
