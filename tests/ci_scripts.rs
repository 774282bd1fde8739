//! The shell scripts CI runs (`scripts/`, `.ci/run`) never feed a pipe into a reader that
//! exits early. Under `set -o pipefail`, `producer | grep -q` (or `| head`) fails whenever
//! the reader's early exit hands the still-writing producer a SIGPIPE: the check's verdict
//! then depends on timing, which is how a clean-clone CI run once failed in build-deb.

use std::path::{Path, PathBuf};

/// The readers that may stop before their input ends.
const EARLY_EXIT_READERS: &[&str] = &["grep -q", "grep --quiet", "grep -m", "grep -l", "head"];

/// The early-exiting readers that `line` pipes into, ignoring comments.
fn early_exit_pipes(line: &str) -> Vec<&'static str> {
    let code = match line.trim_start().starts_with('#') {
        true => return Vec::new(),
        false => line.split(" #").next().unwrap_or(line),
    };
    code.split('|')
        .skip(1)
        .filter_map(|stage| {
            let stage = stage.trim_start();
            EARLY_EXIT_READERS.iter().copied().find(|reader| {
                // `grep -qx`, `grep -m1` and `head -1` all count; `grep -v` does not.
                let (command, flag) = reader.split_once(' ').unwrap_or((reader, ""));
                let mut words = stage.split_whitespace();
                words.next() == Some(command)
                    && (flag.is_empty()
                        || words.next().is_some_and(|word| word == flag || (flag.len() == 2 && word.starts_with(flag))))
            })
        })
        .collect()
}

/// Every script CI runs.
fn ci_scripts() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(root.join("scripts"))
        .expect("scripts/ is part of the repository")
        .map(|entry| entry.expect("scripts/ is readable").path())
        .filter(|path| path.is_file())
        .collect();
    scripts.push(root.join(".ci/run"));
    scripts.sort();
    scripts
}

#[test]
fn no_ci_script_pipes_into_an_early_exiting_reader() {
    let mut offenders = Vec::new();
    for script in ci_scripts() {
        let text = std::fs::read_to_string(&script).expect("scripts are text");
        for (number, line) in text.lines().enumerate() {
            if !early_exit_pipes(line).is_empty() {
                offenders.push(format!("{}:{}: {}", script.display(), number + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "capture the output first (var=$(producer); grep -q ... <<<\"$var\"), or use \
         find -print -quit / sed q:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn the_pipe_check_catches_the_racy_forms_and_passes_the_safe_ones() {
    let racy = [
        "dpkg-deb --ctrl-tarfile \"$deb\" | tar -t | grep -q postinst || exit 1",
        "rustup target list --installed | grep -qx \"$target\" || add",
        "file=$(apt-get download --print-uris x | awk '{print $2}' | head -1)",
        "find . -name x |head -n1",
        "ls | grep -m1 foo",
    ];
    for line in racy {
        assert!(!early_exit_pipes(line).is_empty(), "missed: {line}");
    }
    let safe = [
        "grep -q postinst <<<\"$control\" || exit 1",
        "head -c 10 /dev/zero | tr '\\0' '\\377' > out",
        "tail -f log | grep -v '^guest| ' || true",
        "# dpkg-deb | grep -q postinst, in a comment",
        "sed -n 's/x/y/p' | sort",
    ];
    for line in safe {
        assert!(early_exit_pipes(line).is_empty(), "flagged: {line}");
    }
}
