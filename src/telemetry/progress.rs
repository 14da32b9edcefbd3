//! The one progress bar a long command (backfill, sync) draws on a terminal's stderr, and the
//! log writer that lifts it around each log line so neither garbles the other. Owns only the
//! bar's registration; what a bar shows belongs to its command. It must never draw when stderr
//! is not a terminal (logs and pipes get log lines only).

use indicatif::{ProgressBar, ProgressDrawTarget};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

/// The bar drawn now, if any.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A new bar on stderr, replacing the one drawn before, when stderr is a terminal; `None`
/// otherwise (the caller logs instead).
pub fn terminal_bar() -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(mut current) = BAR.lock() {
        *current = Some(bar.clone());
    }
    Some(bar)
}

/// Log output for [`crate::telemetry::init_logging_to`]: stderr, with the bar (while one is
/// drawn) lifted out of the way of each line.
pub struct BarWriter;

impl Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let drawn = BAR
            .lock()
            .ok()
            .and_then(|b| b.clone())
            .filter(|b| !b.is_hidden() && !b.is_finished());
        match drawn {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf)),
            None => std::io::stderr().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
