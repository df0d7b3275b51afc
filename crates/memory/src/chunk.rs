//! Cutting source files into chunks: at syntactic boundaries where a line-based reading can
//! find them (top-level items: `fn`, `impl`, `struct`, `def`, `class`, `function`, … starting at
//! column 0, with the comments and attributes right above them), otherwise fixed windows of
//! lines with overlap. No parser per language: what the index needs is chunks that start where
//! a reader would start, not a syntax tree.

/// One chunk of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// First line, 1-based.
    pub start_line: usize,
    /// Last line, inclusive.
    pub end_line: usize,
    /// `item` (a syntactic unit) or `lines` (a window).
    pub kind: &'static str,
    /// The text.
    pub text: String,
}

/// Longest chunk, in lines; longer items are cut into windows.
pub const MAX_LINES: usize = 80;
/// Window size and overlap for text without recognizable items.
pub const WINDOW: usize = 60;
/// Lines shared by consecutive windows.
pub const OVERLAP: usize = 10;

const ITEM_STARTS: &[&str] = &[
    "fn ",
    "pub fn ",
    "pub(crate) fn ",
    "async fn ",
    "pub async fn ",
    "const fn ",
    "pub const fn ",
    "unsafe fn ",
    "pub unsafe fn ",
    "impl ",
    "impl<",
    "unsafe impl",
    "struct ",
    "pub struct ",
    "pub(crate) struct ",
    "enum ",
    "pub enum ",
    "pub(crate) enum ",
    "trait ",
    "pub trait ",
    "mod ",
    "pub mod ",
    "macro_rules!",
    "type ",
    "pub type ",
    "static ",
    "pub static ",
    "const ",
    "pub const ",
    "def ",
    "async def ",
    "class ",
    "function ",
    "export ",
    "async function ",
    "func ",
    "interface ",
    "public ",
    "private ",
    "protected ",
    "module ",
    "package ",
    "CREATE ",
    "#[test]",
    "#[tokio::test]",
    "@",
];

fn starts_item(line: &str) -> bool {
    !line.starts_with(char::is_whitespace) && ITEM_STARTS.iter().any(|p| line.starts_with(p))
}

/// A leading comment or attribute line that belongs to the item below it.
fn is_preamble(line: &str) -> bool {
    let t = line.trim_start();
    line.len() == t.len()
        && (t.starts_with("///")
            || t.starts_with("//")
            || t.starts_with("#[")
            || t.starts_with("# ")
            || t.starts_with("/*")
            || t.starts_with(" *")
            || t.starts_with("--")
            || (t.starts_with('@') && !t.contains(' ')))
}

fn windows(lines: &[&str], first: usize, kind: &'static str, out: &mut Vec<Chunk>) {
    let mut start = 0;
    while start < lines.len() {
        let end = (start + WINDOW).min(lines.len());
        let text = lines[start..end].join("\n");
        if !text.trim().is_empty() {
            out.push(Chunk {
                start_line: first + start,
                end_line: first + end - 1,
                kind,
                text,
            });
        }
        if end == lines.len() {
            break;
        }
        start = end - OVERLAP;
    }
}

/// Chunk a file's text.
pub fn chunk(text: &str) -> Vec<Chunk> {
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return Vec::new();
    }
    // Boundaries: item starts, moved up over their preamble.
    let mut bounds = vec![0];
    for (i, l) in lines.iter().enumerate() {
        if i > 0 && starts_item(l) {
            let mut b = i;
            while b > 0 && is_preamble(lines[b - 1]) && !starts_item(lines[b - 1]) {
                b -= 1;
            }
            if b > *bounds.last().unwrap_or(&0) {
                bounds.push(b);
            }
        }
    }
    let items = bounds.len() > 1;
    bounds.push(lines.len());
    let mut out = Vec::new();
    // Merge tiny neighbours (a `use` block, one-line consts) so chunks carry some context.
    let mut i = 0;
    while i + 1 < bounds.len() {
        let start = bounds[i];
        let mut end = bounds[i + 1];
        while end - start < 8 && i + 2 < bounds.len() && bounds[i + 2] - start <= MAX_LINES {
            i += 1;
            end = bounds[i + 1];
        }
        let part = &lines[start..end];
        if part.len() > MAX_LINES {
            windows(
                part,
                start + 1,
                if items { "item" } else { "lines" },
                &mut out,
            );
        } else if !part.join("\n").trim().is_empty() {
            out.push(Chunk {
                start_line: start + 1,
                end_line: end,
                kind: if items { "item" } else { "lines" },
                text: part.join("\n"),
            });
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_items_become_chunks_with_their_doc_comments() {
        let src = "use std::io;\n\n/// Adds.\n#[inline]\npub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n\nstruct S {\n    x: i32,\n    y: i32,\n    z: i32,\n    w: i32,\n    v: i32,\n    u: i32,\n}\n\nimpl S {\n    fn get(&self) -> i32 {\n        self.x\n    }\n}\n";
        let c = chunk(src);
        assert!(c.iter().all(|c| c.kind == "item"), "{c:?}");
        let add = c
            .iter()
            .find(|c| c.text.contains("pub fn add"))
            .unwrap_or_else(|| panic!("{c:?}"));
        assert!(add.text.contains("/// Adds."), "{add:?}");
        let imp = c
            .iter()
            .find(|c| c.text.contains("impl S"))
            .unwrap_or_else(|| panic!("{c:?}"));
        assert_eq!(imp.end_line, src.lines().count());
        // Every line is in some chunk.
        for n in 1..=src.lines().count() {
            assert!(
                c.iter().any(|c| c.start_line <= n && n <= c.end_line),
                "line {n}"
            );
        }
    }

    #[test]
    fn plain_text_uses_overlapping_windows_and_long_items_are_cut() {
        let text: String = (1..=150).map(|i| format!("word {i}\n")).collect();
        let c = chunk(&text);
        assert_eq!(c[0].kind, "lines");
        assert_eq!((c[0].start_line, c[0].end_line), (1, 60));
        assert_eq!(c[1].start_line, 51, "overlap of {OVERLAP}");
        assert_eq!(c.last().map(|c| c.end_line), Some(150));
        let long: String = std::iter::once("fn big() {\n".to_owned())
            .chain((0..200).map(|i| format!("    let x{i} = {i};\n")))
            .chain(std::iter::once("}\nfn small() {}\n".to_owned()))
            .collect();
        let c = chunk(&long);
        assert!(
            c.iter().all(|c| c.end_line - c.start_line < MAX_LINES),
            "{:?}",
            c.iter()
                .map(|c| (c.start_line, c.end_line))
                .collect::<Vec<_>>()
        );
        assert!(chunk("").is_empty());
    }
}
