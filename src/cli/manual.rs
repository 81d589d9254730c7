//! What the command line says about itself: `man`, the manual page of the
//! whole tree or of one command, and `completions`, a shell's completion
//! script, both rendered from the clap tree so that they never drift from
//! `--help`.
//!
//! Owns their arguments and the manual's section. The tree itself is
//! `cli`'s and its rooms'.

use clap::Args;

use super::stdio::write_stdout;

/// The manual section of `guestsock man`: system administration.
const MAN_SECTION: &str = "8";

/// `guestsock completions SHELL`'s argument.
#[derive(Debug, PartialEq, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `guestsock man [COMMAND...]`'s arguments.
#[derive(Debug, PartialEq, Args)]
pub struct ManArgs {
    /// A command's own page (`guestsock man config set`).
    #[arg(
        value_name = "COMMAND",
        help = "A command's own page, like `serve` or `config set`"
    )]
    pub command: Vec<String>,
}

/// `guestsock man [COMMAND...]`: the manual page of the whole command line,
/// or of one command, in roff on standard output.
pub(super) fn man(mut root: clap::Command, path: &[String]) -> Result<(), String> {
    // Building names each command's page (`guestsock-config-set`).
    root.build();
    let mut page = &root;
    // `man config set` and `man "config set"` (as a person quotes a
    // command's name) are the same page.
    let path: Vec<&str> = path.iter().flat_map(|p| p.split_whitespace()).collect();
    for name in &path {
        page = page
            .find_subcommand(name)
            .ok_or_else(|| format!("man: no command {:?}; see guestsock --help", path.join(" ")))?;
    }
    let mut roff = Vec::new();
    clap_mangen::Man::new(page.clone())
        .section(MAN_SECTION)
        .source(format!("guestsock {}", env!("CARGO_PKG_VERSION")))
        .render(&mut roff)
        .map_err(|e| format!("cannot render the manual page: {e}"))?;
    write_stdout(&roff, "the manual page")
}

/// `guestsock completions SHELL`: the completion script on standard output.
pub(super) fn completions(
    mut root: clap::Command,
    shell: clap_complete::Shell,
) -> Result<(), String> {
    // Into memory first: clap_complete panics on a failed write.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut root, "guestsock", &mut script);
    write_stdout(&script, "the completion script")
}
