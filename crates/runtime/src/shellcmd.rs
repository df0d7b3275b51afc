//! What a `shell` tool call runs, as far as its syntax shows: the simple commands of the
//! command line, for approval rules over shell commands (`shell:git push*`).
//!
//! The agent's `shell` tool runs `/bin/sh -c COMMAND` in the cell, so a rule matched against
//! the whole string is bypassed by any shell syntax (`true; git push`, `$(git push)`,
//! `env git push`, `sh -c 'git push'`, …). [`analyze`] parses the command with shell syntax
//! (`brush-parser`, in POSIX `sh` mode and again in bash mode, the union of both kept) into
//! the simple commands it contains — through lists, pipelines, `&&`/`||`, subshells, brace
//! groups, `if`/`for`/`while`/`case` bodies, command substitutions (`$(…)`, backticks, in
//! words, assignments, redirections and here-documents), process substitutions, the strings
//! of `sh -c`/`bash -c`, `eval` and `trap` — and normalizes each one the way a person reads
//! it: leading assignments and wrappers (`env`, `command`, `exec`, `nice`, `nohup`,
//! `timeout`, `xargs`, `builtin`, `time`, `stdbuf`, `setsid`, `busybox`, `find -exec`)
//! stripped with their options, argv\[0\] reduced to its base name (`/usr/bin/git` → `git`),
//! git's global options dropped (`git -C . push` → `git push`). A rule's glob is then matched
//! against each simple command ([`Seen::matching`]).
//!
//! It fails closed: whatever the parser cannot see through makes [`Seen::opaque`] say why,
//! and the gate then asks under *every* shell rule — unparseable input, a command name
//! expanded at run time (`$X push`, `"$(echo git)" push`, `g*t push`), a function or alias
//! definition, `.`/`source`, a shell reading a script or standard input (`sh x.sh`,
//! `… | sh`), `eval` or `sh -c` of a string known only at run time, a command substitution
//! inside a parameter or arithmetic expansion, git aliases given on the command line, shells
//! other than sh and bash, wrapper options it does not know, and inputs past its bounds
//! (64 KiB, 1000 levels of nesting, 8 levels of strings run as code, 256 words in one
//! command, 10 000 simple commands). Words expanded at run time elsewhere (`git $X`) match a
//! rule when the rule's literal prefix and the command's static prefix are compatible
//! (`git $X` asks under `git push*`). Static arguments that look like code (containing
//! whitespace, `;`, `|`, `&`, `$(` or a backtick) are parsed too, and every word of a command
//! may start the rule's match (`sudo git push`, `watch 'git push'` ask): some program may run
//! them. Both over-approximate: asking is safe, skipping approval is not.
//!
//! What syntax cannot show, and this does not claim to see: commands a program runs on its
//! own (a script written earlier and run as `./x.sh`, `python -c 'os.system(…)'`, `make`), git
//! aliases and other configuration read at run time (`git config alias.p push; git p`),
//! `PATH` or `BASH_ENV` pointing at the agent's own files, bash arithmetic evaluating a
//! variable's value (`x='a[$(cmd)]'; echo $((x))`). Approval rules over shell commands guard
//! what a command line says; what must never happen needs a capability the task does not
//! have (no network: `git push` reaches nothing).

use brush_parser::ast;
use brush_parser::word::{WordPiece, WordPieceWithSource};
use brush_parser::{Parser, ParserOptions, SourceInfo};
use globset::GlobMatcher;

/// Longest command line parsed (longer ones are opaque).
pub const MAX_BYTES: usize = 64 * 1024;
/// Deepest nesting parsed (a conservative count of openers; deeper input is opaque).
pub const MAX_NESTING: usize = 1000;
/// Strings run as code (`sh -c`, `eval`, substitutions) followed this deep.
pub const MAX_DEPTH: usize = 8;
/// Words of one simple command.
pub const MAX_WORDS: usize = 256;
/// Simple commands of one command line (each reading of one counts).
pub const MAX_COMMANDS: usize = 10_000;

/// Static words that look like code, parsed inside one another this deep.
const MAX_SOFT: usize = 2;

/// Stack of the thread that parses: the parser recurses per level of nesting (some 20-40 KiB
/// a level); the mapping is only touched as deep as a command nests.
const STACK: usize = 256 << 20;

/// One word of a simple command: its value after quote removal, or `None` when it is only
/// known at run time (an expansion, a substitution, a pathname pattern).
type Word = Option<String>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Sh,
    Bash,
}

impl Mode {
    fn options(self) -> ParserOptions {
        ParserOptions {
            // Extended globs change what `!(…)` and `@(…)` mean; without them a `!(cmd)` is a
            // negated subshell, which is what bash runs unless `extglob` is set.
            enable_extended_globbing: false,
            posix_mode: self == Mode::Sh,
            sh_mode: self == Mode::Sh,
            tilde_expansion: true,
        }
    }
}

/// One simple command as it would run.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Line {
    words: Vec<Word>,
    /// Also try the rule from every later static word on (a program may run its arguments).
    suffixes: bool,
}

/// What [`analyze`] saw in a command line.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    lines: Vec<Line>,
    opaque: Option<String>,
}

impl Seen {
    /// Why this command line may run commands that its syntax does not show (then every
    /// shell rule asks); `None` when every simple command was seen.
    pub fn opaque(&self) -> Option<&str> {
        self.opaque.as_deref()
    }

    /// The simple commands seen, normalized, as text (`$?` for words known only at run time).
    pub fn commands(&self) -> Vec<String> {
        self.lines
            .iter()
            .filter(|l| !l.suffixes)
            .map(|l| render(&l.words))
            .collect()
    }

    /// The first simple command (or a program's argument words) that `glob` matches, or
    /// might match once expanded.
    pub fn matching(&self, glob: &GlobMatcher) -> Option<String> {
        let lit = literal_prefix(glob.glob().glob());
        for l in &self.lines {
            let starts = if l.suffixes { 1..l.words.len() } else { 0..1 };
            for i in starts {
                let Some(first) = &l.words[i] else { continue };
                if l.suffixes && !compatible(basename(first), lit.split(' ').next().unwrap_or("")) {
                    continue;
                }
                let mut words = l.words[i..].to_vec();
                words[0] = Some(basename(first).to_owned());
                if may_match(&words, glob, lit) {
                    return Some(render(&words));
                }
            }
        }
        None
    }
}

/// `a` and `b` agree as far as both go (one is a prefix of the other).
fn compatible(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn render(words: &[Word]) -> String {
    words
        .iter()
        .map(|w| w.as_deref().unwrap_or("$?"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `glob` matches `words` for some run-time value of their unknown words: exactly
/// when all are known; else when the glob's literal prefix and the words' known prefix agree.
fn may_match(words: &[Word], glob: &GlobMatcher, lit: &str) -> bool {
    let Some(unknown) = words.iter().position(Option::is_none) else {
        return glob.is_match(render(words));
    };
    let mut prefix = render(&words[..unknown]);
    if unknown > 0 {
        prefix.push(' ');
    }
    compatible(&prefix, lit)
}

/// The glob's text before its first special character.
fn literal_prefix(glob: &str) -> &str {
    let end = glob.find(['*', '?', '[', '{', '\\']).unwrap_or(glob.len());
    &glob[..end]
}

fn basename(w: &str) -> &str {
    w.rsplit('/').next().unwrap_or(w)
}

/// The simple commands `command` (as `/bin/sh -c` gets it) runs, as far as syntax shows.
pub fn analyze(command: &str) -> Seen {
    let text = command.to_owned();
    // The parser recurses once per level of nesting; a thread with a large stack (bounded
    // input, MAX_NESTING) keeps a hostile command from overflowing a runtime worker's stack,
    // and a panic in the parser is caught as opaque.
    let run = std::thread::Builder::new()
        .name("warren-shell-parse".into())
        .stack_size(STACK)
        .spawn(move || {
            let mut w = Walker::default();
            w.script(&text, Mode::Sh, true);
            if w.seen.lines.len() > MAX_COMMANDS {
                w.opaque(format!("more than {MAX_COMMANDS} simple commands"));
            }
            w.seen
        });
    match run.map(|h| h.join()) {
        Ok(Ok(seen)) => seen,
        Ok(Err(_)) => Seen {
            lines: vec![],
            opaque: Some("the shell parser failed on it".into()),
        },
        Err(e) => Seen {
            lines: vec![],
            opaque: Some(format!("cannot start the shell parser: {e}")),
        },
    }
}

/// A conservative bound on how deeply `text` nests (brackets, compound keywords, backticks,
/// and inside `[[ … ]]` `!` and `&&`/`||` chains), whatever its quoting.
fn nesting(text: &str) -> usize {
    let (mut depth, mut max, mut extra) = (0usize, 0usize, 0usize);
    let b = text.as_bytes();
    for (i, c) in b.iter().enumerate() {
        match c {
            b'(' | b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b')' | b'}' | b']' => depth = depth.saturating_sub(1),
            b'`' | b'!' => extra += 1,
            b'&' | b'|' if b.get(i + 1) == Some(c) => extra += 1,
            _ => {}
        }
    }
    // `!`, `&&` and `||` nest only inside bash's `[[ … ]]` (elsewhere they are lists).
    if !text.contains("[[") {
        extra = b.iter().filter(|&&c| c == b'`').count();
    }
    for w in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        match w {
            "if" | "while" | "until" | "for" | "case" | "select" | "function" => {
                depth += 1;
                max = max.max(depth);
            }
            "fi" | "done" | "esac" => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max + extra
}

#[derive(Default)]
struct Walker {
    seen: Seen,
    /// The lines in `seen` (each kept once).
    known: std::collections::HashSet<Line>,
    /// Strings run as code, nested.
    depth: usize,
    /// Inside a static word parsed only in case some program runs it: nothing found there
    /// makes the line opaque.
    soft: usize,
    mode: Option<Mode>,
}

impl Walker {
    fn opaque(&mut self, why: impl Into<String>) {
        if self.soft == 0 && self.seen.opaque.is_none() {
            self.seen.opaque = Some(why.into());
        }
    }

    fn mode(&self) -> Mode {
        self.mode.unwrap_or(Mode::Sh)
    }

    /// Parse and walk `text` as a script for `mode`'s shell (`strict`: what cannot be parsed
    /// is opaque; otherwise, a static word that may or may not be code, failures are ignored).
    fn script(&mut self, text: &str, mode: Mode, strict: bool) {
        if !strict {
            self.soft += 1;
        }
        self.script_in(text, mode);
        if !strict {
            self.soft -= 1;
        }
    }

    fn script_in(&mut self, text: &str, mode: Mode) {
        if self.depth >= MAX_DEPTH {
            return self.opaque(format!("strings run as code nest deeper than {MAX_DEPTH}"));
        }
        if text.len() > MAX_BYTES {
            return self.opaque(format!("longer than {MAX_BYTES} bytes"));
        }
        if nesting(text) > MAX_NESTING {
            return self.opaque(format!("nested deeper than {MAX_NESTING}"));
        }
        if self.seen.lines.len() > MAX_COMMANDS {
            return self.opaque(format!("more than {MAX_COMMANDS} simple commands"));
        }
        self.depth += 1;
        let outer = self.mode.replace(mode);
        // The shell that runs it decides; the other mode's reading is added when it parses
        // (it only ever adds commands), so a bash /bin/sh is covered as well as dash.
        match parse(text, mode) {
            Ok(p) => {
                self.program(&p);
                let other = if mode == Mode::Sh {
                    Mode::Bash
                } else {
                    Mode::Sh
                };
                if self.soft == 0
                    && let Ok(p) = parse(text, other)
                {
                    self.mode = Some(other);
                    self.program(&p);
                }
            }
            Err(e) => self.opaque(format!("not parseable as a shell command ({e})")),
        }
        self.mode = outer;
        self.depth -= 1;
    }

    fn program(&mut self, p: &ast::Program) {
        for c in &p.complete_commands {
            self.list(c);
        }
    }

    fn list(&mut self, l: &ast::CompoundList) {
        for item in &l.0 {
            let a = &item.0;
            self.pipeline(&a.first);
            for x in &a.additional {
                match x {
                    ast::AndOr::And(p) | ast::AndOr::Or(p) => self.pipeline(p),
                }
            }
        }
    }

    fn pipeline(&mut self, p: &ast::Pipeline) {
        for c in &p.seq {
            self.command(c);
        }
    }

    fn command(&mut self, c: &ast::Command) {
        match c {
            ast::Command::Simple(s) => self.simple(s),
            ast::Command::Compound(cc, redirects) => {
                self.compound(cc);
                for r in redirects.iter().flat_map(|r| &r.0) {
                    self.redirect(r);
                }
            }
            ast::Command::Function(f) => {
                // Its body is walked (so its commands match), and the definition is opaque:
                // a function may shadow any command name used later.
                self.compound(&f.body.0);
                self.opaque(format!("it defines a function ({})", f.fname.value));
            }
            ast::Command::ExtendedTest(t) => self.test(&t.expr),
        }
    }

    fn test(&mut self, e: &ast::ExtendedTestExpr) {
        use ast::ExtendedTestExpr as T;
        match e {
            T::And(a, b) | T::Or(a, b) => {
                self.test(a);
                self.test(b);
            }
            T::Not(a) | T::Parenthesized(a) => self.test(a),
            T::UnaryTest(_, w) => {
                self.word(w);
            }
            T::BinaryTest(_, a, b) => {
                self.word(a);
                self.word(b);
            }
        }
    }

    fn compound(&mut self, c: &ast::CompoundCommand) {
        use ast::CompoundCommand as C;
        match c {
            C::Arithmetic(a) => self.arithmetic(&a.expr.value),
            C::ArithmeticForClause(f) => {
                for e in [&f.initializer, &f.condition, &f.updater]
                    .into_iter()
                    .flatten()
                {
                    self.arithmetic(&e.value);
                }
                self.list(&f.body.list);
            }
            C::BraceGroup(b) => self.list(&b.list),
            C::Subshell(s) => self.list(&s.list),
            C::ForClause(f) => {
                for w in f.values.iter().flatten() {
                    self.word(w);
                }
                self.list(&f.body.list);
            }
            C::CaseClause(c) => {
                self.word(&c.value);
                for item in &c.cases {
                    for p in &item.patterns {
                        self.word(p);
                    }
                    if let Some(l) = &item.cmd {
                        self.list(l);
                    }
                }
            }
            C::IfClause(i) => {
                self.list(&i.condition);
                self.list(&i.then);
                for e in i.elses.iter().flatten() {
                    if let Some(c) = &e.condition {
                        self.list(c);
                    }
                    self.list(&e.body);
                }
            }
            C::WhileClause(w) | C::UntilClause(w) => {
                self.list(&w.0);
                self.list(&w.1.list);
            }
        }
    }

    fn arithmetic(&mut self, text: &str) {
        if text.contains("$(") || text.contains('`') {
            self.opaque("a command substitution inside an arithmetic expression");
        }
    }

    fn redirect(&mut self, r: &ast::IoRedirect) {
        use ast::IoFileRedirectTarget as T;
        match r {
            ast::IoRedirect::File(_, _, target) => match target {
                T::Filename(w) | T::Duplicate(w) => {
                    self.word(w);
                }
                T::Fd(_) => {}
                T::ProcessSubstitution(_, s) => self.list(&s.list),
            },
            ast::IoRedirect::HereDocument(_, h) => {
                if h.requires_expansion {
                    self.here_document(&h.doc.value);
                }
            }
            ast::IoRedirect::HereString(_, w) | ast::IoRedirect::OutputAndError(w, _) => {
                self.word(w);
            }
        }
    }

    /// An unquoted here-document's body undergoes parameter, command and arithmetic
    /// expansion: read as a double-quoted word (its quotes are literal; backslash quotes only
    /// `$`, `` ` ``, `\` and newline, as in double quotes minus `"`).
    fn here_document(&mut self, body: &str) {
        if !body.contains('$') && !body.contains('`') {
            return;
        }
        let mut q = String::with_capacity(body.len() + 8);
        q.push('"');
        let mut chars = body.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.peek() {
                    Some('$' | '`' | '\\' | '\n') => {
                        q.push('\\');
                        q.extend(chars.next());
                    }
                    _ => q.push_str("\\\\"),
                },
                '"' => q.push_str("\\\""),
                c => q.push(c),
            }
        }
        q.push('"');
        self.word_text(&q);
    }

    fn assignment(&mut self, a: &ast::Assignment) {
        if let ast::AssignmentName::ArrayElementName(_, index) = &a.name {
            self.arithmetic(index);
        }
        match &a.value {
            ast::AssignmentValue::Scalar(w) => {
                self.word(w);
            }
            ast::AssignmentValue::Array(items) => {
                for (k, v) in items {
                    if let Some(k) = k {
                        self.word(k);
                    }
                    self.word(v);
                }
            }
        }
    }

    fn simple(&mut self, s: &ast::SimpleCommand) {
        use ast::CommandPrefixOrSuffixItem as I;
        let mut words: Vec<Word> = Vec::new();
        for item in s.prefix.iter().flat_map(|p| &p.0) {
            match item {
                I::AssignmentWord(a, _) => self.assignment(a),
                other => self.item(other, &mut words),
            }
        }
        if let Some(name) = &s.word_or_name {
            let w = self.word(name);
            words.push(w);
        }
        for item in s.suffix.iter().flat_map(|p| &p.0) {
            self.item(item, &mut words);
        }
        self.argv(words);
    }

    fn item(&mut self, item: &ast::CommandPrefixOrSuffixItem, words: &mut Vec<Word>) {
        use ast::CommandPrefixOrSuffixItem as I;
        match item {
            I::IoRedirect(r) => self.redirect(r),
            // An assignment after the command name is an argument (`export A=$(…)`).
            I::Word(w) | I::AssignmentWord(_, w) => {
                let w = self.word(w);
                words.push(w);
            }
            I::ProcessSubstitution(_, sub) => {
                self.list(&sub.list);
                words.push(None);
            }
        }
    }

    /// A simple command's words, as the shell would run them.
    fn argv(&mut self, words: Vec<Word>) {
        if words.is_empty() {
            return;
        }
        if words.len() > MAX_WORDS {
            return self.opaque(format!("a command with more than {MAX_WORDS} words"));
        }
        // A program may run any of its arguments as a command (`sudo`, `watch`, `find
        // -exec`): every static word may start the rule's match.
        self.line(Line {
            words: words.clone(),
            suffixes: true,
        });
        // Shells given a string at any position (`sudo bash -c "$X"`).
        for i in 1..words.len() {
            if let Some(w) = &words[i]
                && shell_mode(basename(w)).is_some()
                && words
                    .get(i + 1)
                    .and_then(|o| o.as_deref())
                    .is_some_and(|o| o.starts_with('-') && !o.starts_with("--") && o.contains('c'))
            {
                self.normalized(words[i..].to_vec());
            }
        }
        self.normalized(words);
    }

    fn normalized(&mut self, mut words: Vec<Word>) {
        loop {
            let Some(first) = words.first() else { return };
            let Some(first) = first.clone() else {
                return self.opaque("its command name is only known at run time");
            };
            let name = basename(&first).to_owned();
            words[0] = Some(name.clone());
            if let Some(rest) = wrapper(&name, &words) {
                match rest {
                    Ok(i) if name == "xargs" => {
                        // The input supplies more arguments; no command means `echo`.
                        let mut cmd = words.split_off(i);
                        if cmd.is_empty() {
                            cmd.push(Some("echo".into()));
                        }
                        cmd.push(None);
                        words = cmd;
                    }
                    Ok(i) => {
                        words.drain(..i);
                    }
                    Err(e) => return self.opaque(format!("{name}: {e}")),
                }
                continue;
            }
            match name.as_str() {
                "eval" => match words[1..].iter().cloned().collect::<Option<Vec<String>>>() {
                    Some(args) => self.script(&args.join(" "), self.mode(), true),
                    None => self.opaque("eval of a string only known at run time"),
                },
                "." | "source" => self.opaque(format!("{name} runs a script file")),
                "alias" if words.len() > 1 => self.opaque("it defines an alias"),
                "trap" => self.trap(&words),
                "find" => self.find_exec(&words),
                "git" => return self.git(words),
                n => {
                    if let Some(mode) = shell_mode(n) {
                        self.shell(&words, mode);
                    } else if is_other_shell(n) {
                        self.opaque(format!("{n} runs code Warren does not parse"));
                    }
                }
            }
            return self.push(words);
        }
    }
    fn push(&mut self, words: Vec<Word>) {
        self.line(Line {
            words,
            suffixes: false,
        });
    }

    fn line(&mut self, l: Line) {
        if self.known.insert(l.clone()) {
            self.seen.lines.push(l);
        }
    }

    /// `sh [options] -c STRING [name [args…]]`; without `-c` a shell reads a script file or
    /// standard input, which no syntax shows.
    fn shell(&mut self, words: &[Word], mode: Mode) {
        let mut c = false;
        let mut i = 1;
        while let Some(w) = words.get(i) {
            let Some(w) = w else {
                return self.opaque("a shell with options only known at run time");
            };
            if w == "--" || w == "-" {
                i += 1;
                break;
            }
            if let Some(long) = w.strip_prefix("--") {
                i += if matches!(long, "rcfile" | "init-file") {
                    2
                } else {
                    1
                };
                continue;
            }
            if w.len() > 1 && (w.starts_with('-') || w.starts_with('+')) {
                c |= w[1..].contains('c');
                // `-o NAME` and bash's `-O NAME` take the next word.
                i += 1 + usize::from(w[1..].contains(['o', 'O']));
                continue;
            }
            break;
        }
        if !c {
            return self.opaque("a shell reading a script file or standard input");
        }
        match words.get(i) {
            Some(Some(s)) => {
                let s = s.clone();
                self.script(&s, mode, true);
            }
            Some(None) => self.opaque("a shell running a string only known at run time"),
            None => self.opaque("a shell -c without a command"),
        }
    }

    /// `trap [-lp] [ACTION SIGNAL…]`: the action runs later, as code.
    fn trap(&mut self, words: &[Word]) {
        let mut args = &words[1..];
        while let Some(Some(w)) = args.first()
            && (w == "--" || w == "-p" || w == "-l")
        {
            args = &args[1..];
        }
        if args.len() < 2 {
            return;
        }
        match &args[0] {
            Some(a) if a.is_empty() || a == "-" => {}
            Some(a) => {
                let a = a.clone();
                self.script(&a, self.mode(), true);
            }
            None => self.opaque("trap of an action only known at run time"),
        }
    }

    /// `find … -exec CMD… ;` (and `-execdir`, `-ok`, `-okdir`).
    fn find_exec(&mut self, words: &[Word]) {
        let mut i = 1;
        while i < words.len() {
            if let Some(w) = &words[i]
                && matches!(w.as_str(), "-exec" | "-execdir" | "-ok" | "-okdir")
            {
                let start = i + 1;
                let mut end = start;
                while end < words.len() && !matches!(words[end].as_deref(), Some(";") | Some("+")) {
                    end += 1;
                }
                let cmd: Vec<Word> = words[start..end]
                    .iter()
                    .map(|w| w.clone().filter(|w| !w.contains("{}")))
                    .collect();
                self.normalized(cmd);
                i = end;
            }
            i += 1;
        }
    }

    /// `git [global options] SUBCOMMAND …` → `git SUBCOMMAND …`.
    fn git(&mut self, words: Vec<Word>) {
        let mut i = 1;
        while let Some(Some(w)) = words.get(i) {
            let w = w.as_str();
            if !w.starts_with('-') {
                break;
            }
            let (name, inline) = match w.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (w, None),
            };
            let takes = match name {
                "-C" | "-c" | "--git-dir" | "--work-tree" | "--namespace" | "--super-prefix"
                | "--config-env" | "--attr-source" => true,
                "-p"
                | "-P"
                | "--paginate"
                | "--no-pager"
                | "--bare"
                | "--no-replace-objects"
                | "--literal-pathspecs"
                | "--glob-pathspecs"
                | "--noglob-pathspecs"
                | "--icase-pathspecs"
                | "--no-optional-locks"
                | "--no-lazy-fetch"
                | "--no-advice"
                | "--exec-path"
                | "--html-path"
                | "--man-path"
                | "--info-path"
                | "--list-cmds"
                | "--version"
                | "--help"
                | "-v"
                | "-h" => false,
                _ => return self.opaque(format!("git option {name} is not one Warren knows")),
            };
            let value: Option<Word> = if takes && inline.is_none() {
                i += 1;
                words.get(i).cloned()
            } else {
                inline.map(|v| Some(v.to_owned()))
            };
            if matches!(name, "-c" | "--config-env") {
                match value.flatten() {
                    Some(v) if v.to_ascii_lowercase().starts_with("alias.") => {
                        return self.opaque("a git alias defined on the command line");
                    }
                    Some(_) => {}
                    None => return self.opaque("git configuration only known at run time"),
                }
            }
            i += 1;
        }
        let mut out = vec![Some("git".to_owned())];
        out.extend(words.into_iter().skip(i));
        self.push(out);
    }

    /// A word's value (quote removal), `None` when only known at run time; command
    /// substitutions inside it are walked.
    fn word(&mut self, w: &ast::Word) -> Word {
        self.word_text(&w.value)
    }

    fn word_text(&mut self, text: &str) -> Word {
        let pieces = match brush_parser::word::parse(text, &self.mode().options()) {
            Ok(p) => p,
            Err(e) => {
                self.opaque(format!("a word that does not parse ({e})"));
                return None;
            }
        };
        let mut value = Some(String::new());
        self.pieces(text, &pieces, false, &mut value);
        // A static word that reads like code may be run by some program (`su -c`, `watch`,
        // `ssh host …`, bash arithmetic on `a[$(…)]`): look inside, softly.
        if let Some(v) = value.as_deref().filter(|v| looks_like_code(v))
            && self.soft < MAX_SOFT
        {
            let v = v.to_owned();
            self.script(&v, self.mode(), false);
        }
        value
    }

    fn pieces(
        &mut self,
        src: &str,
        pieces: &[WordPieceWithSource],
        quoted: bool,
        value: &mut Word,
    ) {
        for p in pieces {
            let raw = src.get(p.start_index..p.end_index).unwrap_or("");
            match &p.piece {
                WordPiece::Text(t) => {
                    // Unquoted pattern characters are pathname expansion; braces are bash's
                    // brace expansion.
                    // (A `[` without a later `]` is literal, like the `[` command.)
                    let bracket = t.find('[').is_some_and(|k| {
                        src.get(p.start_index + k + 1..)
                            .is_some_and(|rest| rest.contains(']'))
                    });
                    if !quoted
                        && (t.contains(['*', '?'])
                            || bracket
                            || (t.contains('{') && (t.contains(',') || t.contains(".."))))
                    {
                        *value = None;
                    } else {
                        push(value, t);
                    }
                }
                WordPiece::SingleQuotedText(t) => push(value, t),
                WordPiece::DoubleQuotedSequence(inner) => self.pieces(src, inner, true, value),
                WordPiece::GettextDoubleQuotedSequence(inner) => {
                    self.pieces(src, inner, true, value);
                    *value = None;
                }
                WordPiece::AnsiCQuotedText(_) | WordPiece::TildePrefix(_) => *value = None,
                WordPiece::ParameterExpansion(_) => {
                    if raw.contains("$(") || raw.contains('`') {
                        self.opaque("a command substitution inside a parameter expansion");
                    }
                    *value = None;
                }
                WordPiece::CommandSubstitution(s) => {
                    let s = s.clone();
                    self.script(&s, self.mode(), true);
                    *value = None;
                }
                WordPiece::BackquotedCommandSubstitution(_) => {
                    let inner = raw
                        .strip_prefix('`')
                        .and_then(|r| r.strip_suffix('`'))
                        .unwrap_or(raw);
                    let s = unbackquote(inner, quoted);
                    self.script(&s, self.mode(), true);
                    *value = None;
                }
                WordPiece::EscapeSequence(e) => {
                    let c = e.strip_prefix('\\').unwrap_or(e);
                    if c == "\n" {
                        // A line continuation: nothing.
                    } else if !quoted || matches!(c, "$" | "`" | "\"" | "\\") {
                        push(value, c);
                    } else {
                        push(value, e);
                    }
                }
                WordPiece::ArithmeticExpression(a) => {
                    self.arithmetic(&a.value);
                    *value = None;
                }
            }
        }
    }
}

fn looks_like_code(v: &str) -> bool {
    v.contains(|c: char| c.is_whitespace() || ";|&`".contains(c)) || v.contains("$(")
}

fn push(value: &mut Word, s: &str) {
    if let Some(v) = value {
        v.push_str(s);
    }
}

/// The text of a backquoted substitution as the shell runs it: backslash quotes `$`,
/// `` ` `` and `\` (and `"` inside double quotes).
fn unbackquote(s: &str, quoted: bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&n) = chars.peek()
            && (matches!(n, '$' | '`' | '\\') || (quoted && n == '"'))
        {
            out.push(n);
            chars.next();
        } else {
            out.push(c);
        }
    }
    out
}

fn parse(text: &str, mode: Mode) -> Result<ast::Program, brush_parser::ParseError> {
    let mut p = Parser::new(
        std::io::BufReader::new(text.as_bytes()),
        &mode.options(),
        &SourceInfo::default(),
    );
    p.parse_program()
}

/// Why a wrapper's words cannot be seen through (then every shell rule asks).
#[derive(Debug, thiserror::Error)]
enum WrapperProblem {
    /// An option the wrapper's table does not list: it might take the command's place.
    #[error("option {0} is not one Warren knows")]
    UnknownOption(String),
    /// `env -S`: a string split into a command line.
    #[error("-S splits a string into a command line")]
    SplitString,
}

fn shell_mode(name: &str) -> Option<Mode> {
    match name {
        "sh" | "dash" | "ash" | "posh" => Some(Mode::Sh),
        "bash" | "rbash" => Some(Mode::Bash),
        _ => None,
    }
}

fn is_other_shell(name: &str) -> bool {
    matches!(
        name,
        "zsh" | "ksh" | "ksh93" | "mksh" | "pdksh" | "yash" | "fish" | "csh" | "tcsh" | "rc"
    )
}

/// A wrapper's options (GNU getopt style).
#[derive(Default)]
struct Opts {
    /// Short options without an argument.
    flags: &'static str,
    /// Short options with an argument (attached, or the next word).
    with_arg: &'static str,
    /// Short options whose optional argument can only be attached (`xargs -i{}`).
    attached: &'static str,
    /// Long options with an argument (`--name=V` or `--name V`).
    long_with_arg: &'static [&'static str],
    /// Long options without one (or with an optional `=V`).
    long_flags: &'static [&'static str],
}

impl Opts {
    /// Where the operands start, from `words[i]` on. Options it does not know are an error
    /// (the gate then asks); a word known only at run time ends the options.
    fn skip(&self, words: &[Word], mut i: usize) -> Result<usize, WrapperProblem> {
        while let Some(Some(w)) = words.get(i) {
            if w == "--" {
                return Ok(i + 1);
            }
            if let Some(long) = w.strip_prefix("--") {
                let (name, inline) = match long.split_once('=') {
                    Some((n, _)) => (n, true),
                    None => (long, false),
                };
                if self.long_with_arg.contains(&name) {
                    i += if inline { 1 } else { 2 };
                } else if self.long_flags.contains(&name) {
                    i += 1;
                } else {
                    return Err(WrapperProblem::UnknownOption(format!("--{name}")));
                }
                continue;
            }
            let Some(cluster) = w.strip_prefix('-').filter(|c| !c.is_empty()) else {
                break;
            };
            let mut next = i + 1;
            for (k, c) in cluster.char_indices() {
                if self.with_arg.contains(c) {
                    if k + c.len_utf8() == cluster.len() {
                        next += 1;
                    }
                    break;
                }
                if self.attached.contains(c) {
                    break;
                }
                if !self.flags.contains(c) {
                    return Err(WrapperProblem::UnknownOption(format!("-{c}")));
                }
            }
            i = next;
        }
        Ok(i.min(words.len()))
    }
}

/// Where the command starts in a wrapper's words (`words[0]` is the wrapper); `None` for a
/// name that is no wrapper.
fn wrapper(name: &str, words: &[Word]) -> Option<Result<usize, WrapperProblem>> {
    let o = match name {
        "nohup" | "builtin" | "busybox" => return Some(Ok(1)),
        "env" => return Some(strip_env(words)),
        "nice" => return Some(strip_nice(words)),
        "command" => Opts {
            flags: "pvV",
            ..Opts::default()
        },
        "exec" => Opts {
            flags: "cl",
            with_arg: "a",
            ..Opts::default()
        },
        "timeout" => {
            let o = Opts {
                flags: "vfp",
                with_arg: "sk",
                long_with_arg: &["signal", "kill-after"],
                long_flags: &["verbose", "foreground", "preserve-status"],
                ..Opts::default()
            };
            // Then the duration.
            return Some(o.skip(words, 1).map(|i| (i + 1).min(words.len())));
        }
        "time" => Opts {
            flags: "pvaq",
            with_arg: "fo",
            long_with_arg: &["format", "output"],
            long_flags: &["append", "portability", "verbose", "quiet"],
            ..Opts::default()
        },
        "stdbuf" => Opts {
            with_arg: "ioe",
            long_with_arg: &["input", "output", "error"],
            ..Opts::default()
        },
        "setsid" => Opts {
            flags: "cfw",
            long_flags: &["ctty", "fork", "wait"],
            ..Opts::default()
        },
        "xargs" => Opts {
            flags: "0oprtx",
            with_arg: "adEILnPs",
            attached: "eil",
            long_with_arg: &[
                "arg-file",
                "delimiter",
                "max-args",
                "max-procs",
                "max-chars",
                "process-slot-var",
            ],
            long_flags: &[
                "null",
                "open-tty",
                "interactive",
                "no-run-if-empty",
                "verbose",
                "exit",
                "show-limits",
                "eof",
                "replace",
                "max-lines",
            ],
        },
        _ => return None,
    };
    Some(o.skip(words, 1))
}

/// `env [-i0v] [-u NAME] [-C DIR] [-] [NAME=VALUE…] COMMAND…`; `-S` (a string split into a
/// command line) is refused.
fn strip_env(words: &[Word]) -> Result<usize, WrapperProblem> {
    for w in words[1..].iter().map_while(|w| w.as_deref()) {
        if !w.starts_with('-') || w == "--" {
            break;
        }
        if w.starts_with("--split-string") || (!w.starts_with("--") && w.contains('S')) {
            return Err(WrapperProblem::SplitString);
        }
    }
    let o = Opts {
        flags: "i0v",
        with_arg: "uC",
        long_with_arg: &["unset", "chdir"],
        long_flags: &[
            "ignore-environment",
            "null",
            "debug",
            "list-signal-handling",
            "block-signal",
            "default-signal",
            "ignore-signal",
        ],
        ..Opts::default()
    };
    let mut i = o.skip(words, 1)?;
    if words.get(i).and_then(|w| w.as_deref()) == Some("-") {
        i += 1;
    }
    while let Some(Some(w)) = words.get(i) {
        let assignment = w.split_once('=').is_some_and(|(n, _)| {
            !n.is_empty()
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !n.starts_with(|c: char| c.is_ascii_digit())
        });
        if !assignment {
            break;
        }
        i += 1;
    }
    Ok(i)
}

/// `nice [-n N | -N | --adjustment=N] COMMAND…`.
fn strip_nice(words: &[Word]) -> Result<usize, WrapperProblem> {
    let mut i = 1;
    while let Some(Some(w)) = words.get(i) {
        if w == "--" {
            return Ok(i + 1);
        }
        let number = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        if w == "-n" || w == "--adjustment" {
            i += 2;
        } else if (w.starts_with("-n") && w.len() > 2)
            || w.starts_with("--adjustment=")
            || w.strip_prefix('-')
                .is_some_and(|n| number(n.trim_start_matches(['+', '-'])))
        {
            i += 1;
        } else if w.starts_with('-') {
            return Err(WrapperProblem::UnknownOption(w.clone()));
        } else {
            break;
        }
    }
    Ok(i.min(words.len()))
}

/// Why a call of the `shell` tool running `command` needs approval under a rule with `glob`:
/// the whole string matches, a simple command in it matches (or might, once expanded), or the
/// command runs something its syntax does not show. `seen` is [`analyze`] of `command`.
pub fn rule_matches(glob: &GlobMatcher, command: &str, seen: &Seen) -> Option<String> {
    if glob.is_match(command) {
        return Some(format!("it matches {:?}", glob.glob().glob()));
    }
    if let Some(why) = seen.opaque() {
        return Some(format!(
            "Warren cannot see every command it runs ({why}), so it may match {:?}",
            glob.glob().glob()
        ));
    }
    seen.matching(glob)
        .map(|c| format!("it runs {c:?}, which matches {:?}", glob.glob().glob()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use globset::Glob;

    fn asks(rule: &str, command: &str) -> Option<String> {
        let g = Glob::new(rule).unwrap().compile_matcher();
        rule_matches(&g, command, &analyze(command))
    }

    /// Each of these ran `git push` without approval under `shell:git push*` when the rule
    /// was matched against the whole command string.
    #[test]
    fn shell_syntax_does_not_bypass_an_approval_rule() {
        let bypasses = [
            "true; git push origin main",
            "true && git push",
            "false || git push",
            "git status & git push",
            "echo $(git push)",
            "echo `git push`",
            "echo \"$(git push)\"",
            "echo \"`git push`\"",
            "echo `echo \\`git push\\``",
            "ls | git push",
            "true\ngit push",
            "env git push",
            "env -i A=1 git push origin",
            "env -u HOME -- git push",
            "command git push",
            "command -p git push",
            "exec git push",
            "nice git push",
            "nice -n 5 git push",
            "nice -10 git push",
            "nohup git push &",
            "timeout 5 git push",
            "timeout -s KILL -k 1 5s git push",
            "builtin git push",
            "time git push",
            "stdbuf -oL git push",
            "setsid -f git push",
            "echo origin | xargs git push",
            "xargs -n1 -I{} git push {} < remotes",
            "echo push | xargs git",
            "/usr/bin/git push",
            "../../usr/bin/git push",
            "sh -c 'git push'",
            "bash -c 'git push'",
            "dash -ec 'cd x && git push'",
            "bash --norc -x -c 'true; git push'",
            "sh -c \"sh -c 'git push'\"",
            "busybox sh -c 'git push'",
            "env A=1 sh -c \"git push\"",
            "eval git push",
            "eval 'git push'",
            "eval gi\\\\t push",
            "git -C . push",
            "git -c user.name=x --no-pager push",
            "git --git-dir=.git --work-tree . push",
            "A=1 git push",
            "A=1 B=$(true) git push origin",
            "git push > /dev/null 2>&1",
            ">log git push",
            "2>&1 git push",
            "( git push )",
            "(git push)",
            "((git push))",
            "{ git push; }",
            "! git push",
            "cat <<EOF\n$(git push)\nEOF",
            "cat <<EOF\nit's `git push`\nEOF",
            "cat <<-EOF\n\t${x}$(git push)\n\tEOF",
            "if true; then git push; fi",
            "if false; then :; elif true; then git push; else :; fi",
            "for r in a b; do git push $r; done",
            "while false; do :; done; git push",
            "until git push; do :; done",
            "case x in x) git push;; esac",
            "case $(git push) in *) ;; esac",
            "g\\it push",
            "'git' push",
            "gi''t \"push\"",
            "\"git\" 'push'",
            "git pu\\\nsh",
            "git pu?h",
            "git $SUB origin",
            "git \"$SUB\"",
            "sudo git push",
            "sudo -u me git push origin",
            "find . -maxdepth 0 -exec git push \\;",
            "find . -execdir git push {} +",
            "trap 'git push' EXIT",
            "echo x >$(git push)",
            "echo x >`git push`",
            "cat <(git push)",
            "x=$(git push)",
            "export X=$(git push)",
            "[ -n \"$(git push)\" ]",
            "[[ $(git push) ]]",
            "su -c 'git push'",
            "watch 'git push'",
            "ssh host 'cd x; git push'",
            "let 'x[$(git push)]'",
            "echo $((1 + $(git push)))",
            "echo ${x:-$(git push)}",
            "echo a; \\\n git push",
            "git push#",
            "x#; git push",
        ];
        for c in bypasses {
            assert!(asks("git push*", c).is_some(), "{c:?} ran without approval");
        }
    }

    /// What the parser cannot see through asks under any shell rule.
    #[test]
    fn what_syntax_cannot_show_asks_under_every_rule() {
        let opaque = [
            "$X push",
            "$GIT push origin",
            "${GIT:-git} push",
            "\"$(echo git)\" push",
            "`echo git` push",
            "g*t push",
            "/usr/bin/gi? push",
            "f() { git push; }; f",
            "function f { git push; }; f",
            "alias p='git push'\np origin",
            ". ./push.sh",
            "source push.sh",
            "sh push.sh",
            "bash < push.sh",
            "echo 'git push' | sh",
            "cat <<EOF | bash\ngit push\nEOF",
            "eval \"$CMD\"",
            "sh -c \"$CMD\"",
            "sudo bash -c \"$CMD\"",
            "zsh -c 'git push'",
            "git -c alias.p=push p",
            "git -c \"$CFG\" p",
            "git --frobnicate push",
            "env -S 'git push'",
            "env --split-string='git push'",
            "nice --frob git push",
            "trap \"$A\" EXIT",
            "echo ${x:-`git push`}",
            "echo $(( $(cat n) + 1 ))",
            "echo 'unterminated",
            "if true; then",
            "echo <(",
        ];
        for c in opaque {
            let why = analyze(c);
            assert!(why.opaque().is_some(), "{c:?} was seen through: {why:?}");
            assert!(asks("npm publish*", c).is_some(), "{c:?}");
        }
    }

    #[test]
    fn commands_that_do_not_run_the_rule_do_not_ask() {
        let fine = [
            "git status",
            "git log --oneline | head -5",
            "cargo test && git diff",
            "echo pushing",
            "git commit -m 'prepare the push'",
            "git pull --rebase",
            "ls *.rs",
            "cd src && cargo build 2>&1 | tail",
            "for f in *.rs; do wc -l \"$f\"; done",
            "echo $HOME",
            "cat <<'EOF'\n$(git push)\nEOF",
            "cat <<EOF\nplain text, no expansion\nEOF",
            "python3 -c 'print(1)'",
            "A=1 B=2 make test",
            "env RUST_LOG=debug cargo run",
            "xargs -0 rm -f",
            "timeout 60 cargo test",
            "x=$(git rev-parse HEAD); echo $x",
            "i=$((i + 1))",
            "find . -name '*.rs' -exec wc -l {} +",
            "sh -c 'cargo build'",
            "git -C sub status",
            "[ -f Cargo.toml ] && cargo test",
            "test -d target || mkdir target",
        ];
        for c in fine {
            assert_eq!(asks("git push*", c), None, "{c:?}");
        }
        // What was seen, normalized.
        assert_eq!(
            analyze("A=1 env -i B=2 nice -n 3 /usr/bin/git -C x --no-pager push origin")
                .commands()
                .last()
                .map(String::as_str),
            Some("git push origin")
        );
        assert!(
            analyze("true; (cd x && git push) | cat")
                .commands()
                .contains(&"git push".to_owned())
        );
        // Other rules, other tools of a command line.
        assert!(asks("rm -rf*", "cd /tmp && rm -rf build").is_some());
        assert!(asks("rm -rf*", "cd /tmp && rm -f build").is_none());
        assert!(asks("curl *", "echo a | curl -d @- https://x.example").is_some());
    }

    #[test]
    fn hostile_inputs_are_bounded_not_fatal() {
        let deep = |open: &str, mid: &str, close: &str, n: usize| {
            format!("{}{mid}{}", open.repeat(n), close.repeat(n))
        };
        for c in [
            deep("(", "git push", ")", 5000),
            deep("{ ", "git push;", " }", 5000),
            deep("$(", "git push", ")", 5000),
            deep("if true; then ", "git push", "; fi", 2000),
            format!("[[ {}a ]]", "! ".repeat(5000)),
            format!("[[ a{} ]]", " && a".repeat(5000)),
            format!("echo {}", "a".repeat(MAX_BYTES + 1)),
            format!("echo {}", "x ".repeat(MAX_WORDS + 1)),
            deep("sh -c \"", "git push", "\"", 20),
        ] {
            let t = std::time::Instant::now();
            let s = analyze(&c);
            assert!(s.opaque().is_some(), "{}…", &c[..40]);
            assert!(t.elapsed() < std::time::Duration::from_secs(20));
        }
        // Just inside the bounds it still parses (and finds the command).
        let c = deep("(", "git push", ")", 200);
        assert!(asks("git push*", &c).is_some());
        assert_eq!(analyze(&c).opaque(), None);
        // Long, ordinary command lines are quick.
        let many = "cargo test -p x && ".repeat(2000) + "true";
        let t = std::time::Instant::now();
        assert_eq!(asks("git push*", &many), None);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
    }
}
