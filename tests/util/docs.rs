//! The fenced shell blocks of a Markdown file in this repository, taken
//! by their text so that a test runs each exactly as a reader pastes it,
//! and knows which ones nothing ran.

use std::path::Path;

/// One fenced block: its language and its text (without the fences).
pub struct Block {
    /// The word after the opening fence (`sh`, `json`, ...), or empty.
    pub lang: String,
    /// The lines between the fences, as written, each ending in `\n`.
    pub text: String,
    /// Whether a step has run, or accounted for, the block.
    pub taken: bool,
}

/// A Markdown file's fenced blocks, in order.
pub struct Doc {
    /// The file, relative to the repository (for messages).
    pub name: String,
    /// Its blocks.
    pub blocks: Vec<Block>,
}

impl Doc {
    /// `rel` (relative to the repository root), indented fences included
    /// (a block in a list item is still a block).
    pub fn load(rel: &str) -> Doc {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let mut blocks = Vec::new();
        let mut open: Option<(usize, Block)> = None;
        for line in text.lines() {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            match open.take() {
                None => {
                    if let Some(lang) = trimmed.strip_prefix("```") {
                        let block = Block {
                            lang: lang.trim().to_string(),
                            text: String::new(),
                            taken: false,
                        };
                        open = Some((indent, block));
                    }
                }
                Some((fence, block)) if trimmed == "```" => {
                    let _ = fence;
                    blocks.push(block);
                }
                Some((fence, mut block)) => {
                    // A block in a list item is indented as its fence is.
                    let cut = line.len().min(fence);
                    let body = if line[..cut].trim().is_empty() {
                        &line[cut..]
                    } else {
                        line
                    };
                    block.text.push_str(body);
                    block.text.push('\n');
                    open = Some((fence, block));
                }
            }
        }
        assert!(open.is_none(), "{rel}: a fenced block is never closed");
        Doc {
            name: rel.to_string(),
            blocks,
        }
    }

    /// The `sh` block whose text starts with `start` (after leading
    /// comment lines), marked as run. Exactly one block may match.
    pub fn take(&mut self, start: &str) -> String {
        let matches: Vec<usize> = (0..self.blocks.len())
            .filter(|&i| {
                let b = &self.blocks[i];
                b.lang == "sh" && strip_comments(&b.text).starts_with(start)
            })
            .collect();
        assert!(
            matches.len() == 1,
            "{}: {} sh blocks start with {start:?}, not one",
            self.name,
            matches.len()
        );
        let block = &mut self.blocks[matches[0]];
        block.taken = true;
        block.text.clone()
    }

    /// Fails naming every `sh` block that no step took.
    pub fn assert_all_taken(&self) {
        let left: Vec<&str> = self
            .blocks
            .iter()
            .filter(|b| b.lang == "sh" && !b.taken)
            .map(|b| b.text.as_str())
            .collect();
        assert!(
            left.is_empty(),
            "{}: sh blocks that no step runs or lists: {left:#?}",
            self.name
        );
    }
}

/// `text` without its leading comment and blank lines.
fn strip_comments(text: &str) -> &str {
    let mut rest = text;
    while let Some(line) = rest.lines().next() {
        let t = line.trim();
        if !(t.is_empty() || t.starts_with('#')) {
            break;
        }
        rest = &rest[(line.len() + 1).min(rest.len())..];
    }
    rest
}
