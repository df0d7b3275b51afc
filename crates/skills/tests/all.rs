//! The validator against the reference: every fixture folder (tests/fixtures) has an expected
//! verdict (tests/expected.json); Warren's validator must give it, and so must the reference
//! validator (PyPI `skills-ref`, `agentskills validate`) when `$WARREN_TEST_SKILLS_REF` names
//! its command (`.ci/run` installs it; under CI=true it must be there). Also: discovery through
//! hostile folders (links, FIFOs) and the catalog.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use warren_testkit::{TempDir, skip};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> BTreeMap<String, bool> {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expected.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_fixture_gets_its_expected_verdict() {
    let expected = expected();
    let mut dirs: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(
        dirs,
        expected.keys().cloned().collect::<Vec<_>>(),
        "every fixture has a verdict"
    );
    for (dir, valid) in &expected {
        let got = warren_skills::validate(&fixtures().join(dir));
        assert_eq!(got.is_ok(), *valid, "{dir}: {got:?}");
    }
}

#[test]
fn the_reference_validator_agrees_on_every_fixture() {
    let Some(reference) = std::env::var_os("WARREN_TEST_SKILLS_REF").map(PathBuf::from) else {
        skip("WARREN_TEST_SKILLS_REF (the `agentskills` command of PyPI skills-ref) is not set");
        return;
    };
    let mut agreed = 0;
    for (dir, valid) in expected() {
        let o = std::process::Command::new(&reference)
            .arg("validate")
            .arg(fixtures().join(&dir))
            .output()
            .unwrap();
        let ours = warren_skills::validate(&fixtures().join(&dir));
        assert_eq!(
            o.status.success(),
            valid,
            "{dir}: the reference says {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(ours.is_ok(), o.status.success(), "{dir}: ours {ours:?}");
        agreed += 1;
    }
    eprintln!("skills-ref and warren agree on {agreed} fixtures");
    assert!(agreed >= 20);
}

#[test]
fn discovery_passes_over_links_and_never_opens_a_fifo() {
    let t = TempDir::new("skills-discover");
    let root = t.path().join("skills");
    std::fs::create_dir_all(root.join("good")).unwrap();
    std::fs::write(
        root.join("good/SKILL.md"),
        "---\nname: good\ndescription: Fine.\n---\n",
    )
    .unwrap();
    // A folder link to a skill elsewhere, and a SKILL.md that is a link to a host file.
    std::fs::create_dir_all(t.path().join("elsewhere/outside")).unwrap();
    std::fs::write(
        t.path().join("elsewhere/outside/SKILL.md"),
        "---\nname: outside\ndescription: Not here.\n---\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(t.path().join("elsewhere/outside"), root.join("outside")).unwrap();
    std::fs::create_dir_all(root.join("linked")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("linked/SKILL.md")).unwrap();
    // A FIFO as SKILL.md: opening it for reading would block forever.
    std::fs::create_dir_all(root.join("fifo")).unwrap();
    let c = std::ffi::CString::new(
        root.join("fifo/SKILL.md")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);

    let found = warren_skills::discover(&root).unwrap();
    let valid: Vec<&str> = found
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(valid, ["good"], "{found:?}");
    // The link to a folder is not followed; the linked and FIFO SKILL.md are refused.
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        warren_skills::discover(&t.path().join("none"))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn the_catalog_names_each_skill_where_the_cell_sees_it_and_is_empty_without_skills() {
    let s = warren_skills::validate(&fixtures().join("full")).unwrap();
    let text = warren_skills::catalog(std::slice::from_ref(&s), "/skills");
    assert!(text.contains("<name>full</name>"), "{text}");
    assert!(
        text.contains("<location>/skills/full/SKILL.md</location>"),
        "{text}"
    );
    assert!(text.contains("<description>Every optional field.</description>"));
    assert_eq!(warren_skills::catalog(&[], "/skills"), "");
    assert_eq!(s.metadata.get("author").map(String::as_str), Some("warren"));
    assert_eq!(s.allowed_tools.as_deref(), Some("Bash Read"));
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

fn write_skill(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(
        dir.join("SKILL.md"),
        format!("---\nname: {name}\ndescription: The {name} skill.\n---\nRun scripts/go.sh.\n"),
    )
    .unwrap();
    std::fs::write(dir.join("scripts/go.sh"), "#!/bin/sh\necho go\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("scripts/go.sh"),
        std::fs::Permissions::from_mode(0o4775),
    )
    .unwrap();
    dir
}

#[test]
fn named_skills_are_selected_by_precedence_and_a_missing_or_invalid_one_is_named() {
    let t = TempDir::new("skills-select");
    let (first, second) = (t.path().join("a"), t.path().join("b"));
    write_skill(&first, "alpha");
    write_skill(&second, "alpha");
    write_skill(&second, "beta");
    std::fs::create_dir_all(second.join("bad")).unwrap();
    std::fs::write(second.join("bad/SKILL.md"), "no front matter\n").unwrap();
    let roots = vec![first.clone(), second.clone(), t.path().join("missing")];
    let got = warren_skills::select(&roots, &["beta".into(), "alpha".into()]).unwrap();
    let names: Vec<(&str, &Path)> = got
        .iter()
        .map(|s| (s.name.as_str(), s.dir.parent().unwrap()))
        .collect();
    assert_eq!(
        names,
        [("beta", second.as_path()), ("alpha", first.as_path())]
    );
    let all = warren_skills::select(&roots, &["*".into()]).unwrap();
    assert_eq!(all.len(), 2, "invalid ones are passed over by *: {all:?}");
    let e = warren_skills::select(&roots, &["gamma".into()])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"gamma\" was not found") && e.contains("missing"),
        "{e}"
    );
    let e = warren_skills::select(&roots, &["bad".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"bad\" is not valid"), "{e}");
    assert!(warren_skills::select(&roots, &[]).unwrap().is_empty());
}

#[test]
fn a_snapshot_copies_files_and_links_masks_modes_and_refuses_special_files() {
    let t = TempDir::new("skills-snapshot");
    let root = t.path().join("skills");
    let dir = write_skill(&root, "alpha");
    std::os::unix::fs::symlink("/etc/shadow", dir.join("link")).unwrap();
    let skill = warren_skills::validate(&dir).unwrap();
    let dest = t.path().join("task-skills");
    warren_skills::snapshot(&skill, &dest).unwrap();
    let out = dest.join("alpha");
    assert_eq!(
        std::fs::read_to_string(out.join("scripts/go.sh")).unwrap(),
        "#!/bin/sh\necho go\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(out.join("scripts/go.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid dropped, executable kept");
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        Path::new("/etc/shadow"),
        "a link is copied as a link, never followed on the host"
    );

    // A FIFO anywhere in the folder: refused by name, never opened.
    mkfifo(&dir.join("scripts/pipe"));
    let e = warren_skills::snapshot(&skill, &t.path().join("again"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("scripts/pipe") && e.contains("FIFO"), "{e}");

    // The folder swapped for a link after discovery: not followed.
    let moved = t.path().join("moved");
    std::fs::rename(&dir, &moved).unwrap();
    std::os::unix::fs::symlink(&moved, &dir).unwrap();
    let e = warren_skills::snapshot(&skill, &t.path().join("third"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot open the folder"), "{e}");
}
