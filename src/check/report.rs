//! The check's report: one line per step as it finishes (for people), or one JSON object at
//! the end (`--json`, for scripts), and the verdict with the likely cause and fix.
//!
//! Everything the server says (replies, certificate fields) reaches the terminal only through
//! `clean`: a hostile server must not be able to send escape sequences to it.

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::args::Target;
use super::diagnose::Diagnosis;

/// Text from the server, made safe to print: control characters become `?`, and it is cut
/// at `max` characters.
pub(crate) fn clean(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).map(|c| if c.is_control() { '?' } else { c }).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out.trim().to_string()
}

/// What a step that worked found out.
#[derive(Debug, Default)]
pub(crate) struct Done {
    /// One line for people.
    pub(crate) summary: String,
    /// Facts for scripts.
    pub(crate) details: Map<String, Value>,
    /// Further lines for people, below the summary (a certificate, a banner's other lines).
    pub(crate) lines: Vec<String>,
    /// Things that work but are worth knowing (`--insecure`, a feature missing).
    pub(crate) notes: Vec<String>,
}

impl Done {
    pub(crate) fn new(summary: impl Into<String>) -> Done {
        Done { summary: summary.into(), ..Done::default() }
    }

    pub(crate) fn detail(mut self, key: &str, value: impl Into<Value>) -> Done {
        self.details.insert(key.to_string(), value.into());
        self
    }

    pub(crate) fn line(mut self, line: impl Into<String>) -> Done {
        self.lines.push(line.into());
        self
    }

    pub(crate) fn note(mut self, note: impl Into<String>) -> Done {
        self.notes.push(note.into());
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Failed,
    Skipped,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "FAIL",
            Status::Skipped => "skip",
        }
    }
}

struct Step {
    id: &'static str,
    status: Status,
    elapsed: Duration,
    done: Done,
}

struct Failure {
    step: &'static str,
    diagnosis: Diagnosis,
}

pub(crate) struct Report {
    json: bool,
    started: Instant,
    steps: Vec<Step>,
    failure: Option<Failure>,
    target: Value,
}

/// Width of the step names column.
const NAME: usize = 16;
/// Where text below a step's line starts.
const INDENT: usize = 2 + 4 + 2 + 9 + 2 + NAME + 1;
/// Lines of the verdict are wrapped at this width.
const WIDTH: usize = 100;

impl Report {
    /// Starts a report; for people, prints what is being checked at once.
    pub(crate) fn start(target: &Target, json: bool) -> Report {
        let target_json = json!({
            "host": target.host,
            "port": target.port,
            "implicit": target.implicit,
            "epsv": target.epsv,
            "root": target.root,
            "user": target.user,
            "password_from": target.password_source,
            "ca_file": target.tls.ca_file.as_ref().map(|p| p.display().to_string()),
            "insecure": target.tls.insecure,
            "tls_max": target.tls_max,
            "timeout_secs": target.timeout.as_secs(),
        });
        let report = Report { json, started: Instant::now(), steps: Vec::new(), failure: None, target: target_json };
        if !json {
            let trust = match (&target.tls.ca_file, target.tls.insecure) {
                (_, true) => "certificate NOT verified (--insecure)".to_string(),
                (Some(f), false) => format!("certificates checked against {}", f.display()),
                (None, false) => "certificates checked against the system's CAs".to_string(),
            };
            report.say(&format!(
                "mastfs check of {}:{}: {}, {} data connections, TLS up to {}, timeout {} s",
                target.host,
                target.port,
                target.mode(),
                target.passive(),
                target.tls_max,
                target.timeout.as_secs()
            ));
            report.say(&format!(
                "  user {} (password: {}), root {}, {trust}",
                target.user, target.password_source, target.root
            ));
            report.say("");
        }
        report
    }

    /// Records a step that worked.
    pub(crate) fn ok(&mut self, id: &'static str, elapsed: Duration, done: Done) {
        self.push(Step { id, status: Status::Ok, elapsed, done });
    }

    /// Records a step that was not needed (why is its summary).
    pub(crate) fn skipped(&mut self, id: &'static str, why: &str) {
        self.push(Step { id, status: Status::Skipped, elapsed: Duration::ZERO, done: Done::new(why) });
    }

    /// Records the step that failed, and why; the check ends with it.
    pub(crate) fn failed(&mut self, id: &'static str, elapsed: Duration, diagnosis: Diagnosis, found: Done) {
        let mut done = found;
        done.summary = diagnosis.error.clone();
        self.push(Step { id, status: Status::Failed, elapsed, done });
        self.failure = Some(Failure { step: id, diagnosis });
    }

    pub(crate) fn succeeded(&self) -> bool {
        self.failure.is_none() && !self.steps.is_empty()
    }

    fn push(&mut self, step: Step) {
        if !self.json {
            self.print_step(&step);
        }
        self.steps.push(step);
    }

    fn say(&self, line: &str) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn print_step(&self, step: &Step) {
        let time = if step.status == Status::Skipped { String::new() } else { duration_text(step.elapsed) };
        let mut text = format!("  {:<4}  {time:>9}  {:<NAME$} {}", step.status.word(), step.id, step.done.summary)
            .trim_end()
            .to_string();
        let pad = " ".repeat(INDENT);
        for line in &step.done.lines {
            text.push_str(&format!("\n{pad}{line}"));
        }
        for note in &step.done.notes {
            text.push_str(&format!("\n{pad}note: {note}"));
        }
        self.say(&text);
    }

    /// Prints the verdict (people) or the whole report (`--json`).
    pub(crate) fn finish(&self) {
        let total = self.started.elapsed();
        if self.json {
            self.say(&self.to_json(total).to_string());
            return;
        }
        self.say("");
        let Some(failure) = &self.failure else {
            let ran = self.steps.iter().filter(|s| s.status == Status::Ok).count();
            self.say(&format!("OK: every step worked ({ran} steps in {}).", duration_text(total)));
            return;
        };
        let d = &failure.diagnosis;
        self.say(&format!("FAILED at step \"{}\" after {} ({}).", failure.step, duration_text(total), d.problem));
        self.say(&wrap("cause: ", &d.cause));
        for (i, fix) in d.fix.iter().enumerate() {
            self.say(&wrap(if i == 0 { "fix:   " } else { "       " }, fix));
        }
    }

    fn to_json(&self, total: Duration) -> Value {
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|s| {
                json!({
                    "step": s.id,
                    "status": match s.status { Status::Ok => "ok", Status::Failed => "failed", Status::Skipped => "skipped" },
                    "ms": millis(s.elapsed),
                    "summary": s.done.summary,
                    "details": s.done.details,
                    "notes": s.done.notes,
                })
            })
            .collect();
        let failure = self.failure.as_ref().map(|f| {
            json!({
                "step": f.step,
                "problem": f.diagnosis.problem,
                "error": f.diagnosis.error,
                "cause": f.diagnosis.cause,
                "fix": f.diagnosis.fix,
            })
        });
        json!({
            "ok": self.succeeded(),
            "target": self.target,
            "steps": steps,
            "failure": failure,
            "total_ms": millis(total),
        })
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// `0.4 ms`, `12.3 ms`, `2.00 s`.
pub(crate) fn duration_text(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 { format!("{ms:.1} ms") } else { format!("{:.2} s", d.as_secs_f64()) }
}

/// `head` then `text`, wrapped at `WIDTH` with the following lines under the text.
fn wrap(head: &str, text: &str) -> String {
    let pad = " ".repeat(head.chars().count());
    let mut lines = vec![head.to_string()];
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let Some(line) = lines.last_mut() else { break };
        let fresh = line.chars().count() == pad.chars().count();
        if !fresh && line.chars().count() + 1 + word.chars().count() > WIDTH {
            lines.push(format!("{pad}{word}"));
        } else {
            if !fresh {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_text_cannot_reach_the_terminal_as_control_characters() {
        assert_eq!(clean("220 \x1b[2Jhello\r\n", 100), "220 ?[2Jhello??");
        assert_eq!(clean("abcdef", 3), "abc…");
    }

    #[test]
    fn durations_read_in_the_unit_that_fits() {
        assert_eq!(duration_text(Duration::from_micros(400)), "0.4 ms");
        assert_eq!(duration_text(Duration::from_millis(2500)), "2.50 s");
    }

    #[test]
    fn long_verdict_lines_wrap_under_their_text() {
        let text = wrap("cause: ", &"word ".repeat(40));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len() > 1, "{text}");
        assert!(lines.iter().all(|l| l.chars().count() <= WIDTH), "{text}");
        assert!(lines[1].starts_with("       word"), "{text}");
    }
}
