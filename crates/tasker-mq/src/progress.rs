//! Progress bars on stderr, shown only to a terminal so stdout stays clean for `--json`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether to draw bars: not with `--json`, not when stderr is not a terminal.
pub fn visible(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

/// A bar of `len` steps labelled `label`, or a hidden one.
pub fn bar(visible: bool, len: u64, label: &str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>16} [{bar:30}] {pos}/{len} {elapsed_precise}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_owned());
    // The clock moves even while the position does not.
    bar.enable_steady_tick(std::time::Duration::from_millis(500));
    bar
}
