//! Progress bars for long operations: drawn on a terminal, silent otherwise (cron, CI,
//! PostgreSQL's log), so redirected output never fills with control characters.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressStyle};
use walarchive::backup::{NoProgress, Progress};

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
        self.0.set_position(0);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn phase(&self, what: &str) {
        self.0.set_message(what.to_string());
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A bar on stderr when it is a terminal, else nothing.
pub fn bytes_bar() -> Arc<dyn Progress> {
    if !std::io::stderr().is_terminal() {
        return Arc::new(NoProgress);
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>16} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    Arc::new(Bar(bar))
}
