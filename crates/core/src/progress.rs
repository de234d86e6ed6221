//! Progress of long work (training, decoding) on stderr: a bar when stderr is a terminal, else a
//! plain line every 30 seconds or every 10% of the work, whichever comes first, so that a CI log, a
//! Slurm job's output or a `nohup` file shows a 40-minute run moving. Every plain line starts with
//! `progress: ` (the tests' snapshots leave such lines out: their times differ run to run).
//!
//! Main type: [`Progress`].

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// At most this long between two plain lines.
const EVERY: Duration = Duration::from_secs(30);

/// One piece of long work: `set` it as it goes, `finish` it at the end.
pub struct Progress {
    what: String,
    total: u64,
    /// Where this process started (a resumed run starts past 0): rates and ETAs count from here.
    start: u64,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Instant,
    /// The last tenth of the work a plain line was printed for.
    last_tenth: u64,
}

impl Progress {
    /// `total` units of `what` (a word for the line: "train", "decode"), `start` of them done.
    pub fn new(what: &str, total: u64, start: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_position(start);
            if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
                "{what} {{bar:30}} {{pos}}/{{len}}  {{msg}}  ETA {{eta}}"
            )) {
                bar.set_style(style);
            }
            bar
        });
        let now = Instant::now();
        Progress {
            what: what.to_string(),
            total,
            start,
            bar,
            started: now,
            last_line: now,
            last_tenth: tenth(start, total),
        }
    }

    /// `done` units are done; `message` (loss, tokens/s) goes on the bar or the line.
    pub fn set(&mut self, done: u64, message: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            bar.set_message(message());
            bar.set_position(done);
            return;
        }
        let now = Instant::now();
        if !self.due(done, now) {
            return;
        }
        self.last_line = now;
        self.last_tenth = tenth(done, self.total);
        eprintln!("{}", self.line(done, &message(), now));
    }

    /// Whether a plain line is due: 30 s since the last one, a new tenth of the work, or the end.
    fn due(&self, done: u64, now: Instant) -> bool {
        now.duration_since(self.last_line) >= EVERY
            || tenth(done, self.total) > self.last_tenth
            || done == self.total
    }

    fn line(&self, done: u64, message: &str, now: Instant) -> String {
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let rate = (done.saturating_sub(self.start)) as f64 / elapsed.max(1e-9);
        let eta = if rate > 0.0 {
            format!("{:.0} s", self.total.saturating_sub(done) as f64 / rate)
        } else {
            "?".to_string()
        };
        let message = if message.is_empty() {
            String::new()
        } else {
            format!("  {message}")
        };
        format!(
            "progress: {} {done}/{}{message}  elapsed {elapsed:.0} s  ETA {eta}",
            self.what, self.total
        )
    }

    /// Clears the bar (a plain line for the end was printed by `set`).
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

fn tenth(done: u64, total: u64) -> u64 {
    (done * 10).checked_div(total).unwrap_or(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            what: "train".into(),
            total,
            start: 0,
            bar: None,
            started: now,
            last_line: now,
            last_tenth: 0,
        }
    }

    #[test]
    fn a_line_comes_every_tenth_of_the_work_and_at_the_end() {
        let mut p = plain(100);
        let now = Instant::now();
        let mut lines = 0;
        for done in 1..=100 {
            if p.due(done, now) {
                p.last_tenth = tenth(done, p.total);
                lines += 1;
            }
        }
        assert_eq!(lines, 10, "one line per tenth, the last at 100/100");
    }

    #[test]
    fn a_line_comes_after_thirty_seconds_even_without_a_new_tenth() {
        let p = plain(1000);
        assert!(!p.due(1, p.last_line));
        assert!(p.due(1, p.last_line + EVERY));
    }

    #[test]
    fn the_line_names_the_work_the_step_and_an_eta() {
        let p = plain(10);
        let line = p.line(5, "loss 1.2345", p.started + Duration::from_secs(10));
        assert_eq!(
            line,
            "progress: train 5/10  loss 1.2345  elapsed 10 s  ETA 10 s"
        );
    }
}
