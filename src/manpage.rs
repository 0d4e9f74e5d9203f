//! `mastfs completions SHELL` and `mastfs man`: both generated at run time from the command
//! definition in `cli.rs`, so they describe exactly the binary that prints them.
//!
//! A subcommand rather than a build step: a build script would have to compile `cli.rs` a
//! second time and would leave the pages in Cargo's `OUT_DIR`, which is no install location;
//! `mastfs man --dir DIR` lets an installer or a packager write them where they belong.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap_mangen::Man;
use clap_mangen::roff::{Roff, roman};

use crate::cli::{ManArgs, command};

pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = command();
    clap_complete::generate(shell, &mut cmd, "mastfs", &mut std::io::stdout());
    ExitCode::SUCCESS
}

pub fn man(args: ManArgs) -> ExitCode {
    let result = match (&args.dir, &args.command) {
        (Some(dir), _) => write_all(dir),
        (None, name) => print_page(name.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("mastfs: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The root command and one command per page, built so that pages get their full names
/// (`mastfs-mount`) and synopses (`mastfs mount ...`).
fn pages() -> Vec<clap::Command> {
    let mut root = command().disable_help_subcommand(true);
    root.build();
    let mut pages = vec![root.clone()];
    for sub in root.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages.push(sub.clone());
        // `mastfs cache du` and friends get pages of their own (mastfs-cache-du.1): their
        // options appear nowhere else.
        pages.extend(sub.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help").cloned());
    }
    pages
}

/// `mount`, or `cache-du` for `mastfs cache du` (the page's name without `mastfs-`).
fn page_name(page: &clap::Command) -> &str {
    let full = page.get_display_name().unwrap_or(page.get_name());
    full.strip_prefix("mastfs-").unwrap_or(full)
}

fn print_page(name: Option<&str>) -> Result<(), String> {
    let pages = pages();
    let page = match name {
        None => pages.first(),
        Some(n) => pages.iter().skip(1).find(|p| page_name(p) == n || p.get_all_aliases().any(|a| a == n)),
    };
    let Some(page) = page else {
        let names: Vec<&str> = pages.iter().skip(1).map(page_name).collect();
        return Err(format!("no page for {:?}; the commands are {}", name.unwrap_or(""), names.join(", ")));
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&render(page)).and_then(|()| out.flush()).map_err(|e| format!("cannot write the page: {e}"))
}

fn write_all(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for page in pages() {
        let file = dir.join(format!("{}.1", page.get_display_name().unwrap_or(page.get_name())));
        std::fs::write(&file, render(&page)).map_err(|e| format!("{}: {e}", file.display()))?;
        println!("{}", file.display());
    }
    Ok(())
}

/// One page: clap_mangen's standard sections, then the command's closing help text as
/// sections of their own (EXAMPLES, FILES, ...) in no-fill mode, so that the aligned
/// examples of `--help` keep their shape.
fn render(cmd: &clap::Command) -> Vec<u8> {
    let man = Man::new(cmd.clone()).source(format!("mastfs {}", env!("CARGO_PKG_VERSION"))).manual("mastfs manual");
    // Writing into a Vec cannot fail.
    let mut out = Vec::new();
    let _ = man.render_title(&mut out);
    let _ = man.render_name_section(&mut out);
    let _ = man.render_synopsis_section(&mut out);
    let _ = man.render_description_section(&mut out);
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        let _ = man.render_options_section(&mut out);
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        let _ = man.render_subcommands_section(&mut out);
    }
    if let Some(text) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        let mut roff = Roff::new();
        for (heading, body) in help_sections(&text.to_string()) {
            roff.control("SH", [heading.to_uppercase().as_str()]);
            roff.control("nf", []);
            for line in body {
                roff.text([roman(line)]);
            }
            roff.control("fi", []);
        }
        let _ = roff.to_writer(&mut out);
    }
    if cmd.get_version().is_some() {
        let _ = man.render_version_section(&mut out);
    }
    without_repeated_preamble(&out)
}

/// Each section rendered on its own starts with the same two-line string definition; the
/// page needs it once.
fn without_repeated_preamble(page: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(page);
    let mut seen = std::collections::HashSet::new();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let preamble = line.starts_with(".ie \\n(.g .ds Aq") || line.starts_with(".el .ds Aq");
        if !preamble || seen.insert(line.to_string()) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.into_bytes()
}

/// Splits closing help text into `Heading:` blocks and their (de-indented) lines.
fn help_sections(text: &str) -> Vec<(String, Vec<String>)> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let is_heading = !line.starts_with(' ') && line.ends_with(':');
        match sections.last_mut() {
            Some((_, body)) if !is_heading => body.push(line.strip_prefix("  ").unwrap_or(line).to_string()),
            _ => sections.push((line.trim_end_matches(':').to_string(), Vec::new())),
        }
    }
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(name: &str) -> String {
        let pages = pages();
        let p = pages.iter().find(|p| page_name(p) == name).unwrap_or_else(|| panic!("no page {name}"));
        String::from_utf8(render(p)).expect("UTF-8 page")
    }

    #[test]
    fn the_overview_page_lists_every_command() {
        let text = page("mastfs");
        assert!(text.contains(".TH mastfs 1 "), "{text}");
        for sub in ["mastfs\\-mount(1)", "mastfs\\-stats(1)", "mastfs\\-umount(1)", "mastfs\\-completions(1)"] {
            assert!(text.contains(sub), "{sub} missing from:\n{text}");
        }
        assert!(text.contains(".SH EXAMPLES"), "{text}");
    }

    #[test]
    fn the_mount_page_has_every_flag_and_the_o_options() {
        let text = page("mount");
        assert!(text.contains(".TH mastfs-mount 1 "), "{text}");
        let mount = pages().into_iter().find(|p| p.get_name() == "mount").expect("mount page");
        for long in mount.get_arguments().filter_map(|a| a.get_long()) {
            let escaped = long.replace('-', "\\-");
            assert!(text.contains(&format!("\\-\\-{escaped}")), "--{long} missing from the page");
        }
        assert!(text.contains(".SH \"MOUNT OPTIONS\""), "no -o section");
        assert!(text.contains("x\\-systemd"), "the -o section lost its content");
    }

    #[test]
    fn each_cache_command_has_a_page_with_every_option() {
        assert!(page("cache").contains("mastfs\\-cache\\-du(1)"), "{}", page("cache"));
        for name in ["du", "clear", "verify"] {
            let text = page(&format!("cache-{name}"));
            assert!(text.contains(&format!(".TH mastfs-cache-{name} 1 ")), "{text}");
            assert!(text.contains("\\-\\-cache\\-dir"), "{text}");
        }
        assert!(page("cache-clear").contains("\\-\\-host"));
        assert!(page("cache-verify").contains(".SH \"EXIT STATUS\""), "{}", page("cache-verify"));
    }

    #[test]
    fn closing_help_text_splits_into_sections() {
        let s = help_sections("Examples:\n  a b\n  c\n\nFiles:\n  ~/.netrc\n");
        assert_eq!(
            s,
            [
                ("Examples".to_string(), vec!["a b".to_string(), "c".to_string(), String::new()]),
                ("Files".to_string(), vec!["~/.netrc".to_string()])
            ]
        );
    }
}
