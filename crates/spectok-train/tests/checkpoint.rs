//! Checkpoint directories: atomic writes, keep-last-K pruning, `best`,
//! resume resolution.

use std::fs;
use std::path::Path;

use spectok_train::checkpoint::{parse_step_name, step_name, Checkpoints, BEST};
use spectok_train::{resolve_resume, Error};

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn fill(tag: &str) -> impl FnOnce(&Path) -> spectok_train::Result<()> + '_ {
    move |dir: &Path| {
        fs::write(dir.join("state.json"), format!("{{\"tag\":\"{tag}\"}}")).unwrap();
        fs::write(dir.join("model.safetensors"), tag.repeat(1000)).unwrap();
        Ok(())
    }
}

#[test]
fn step_names_sort_and_parse() {
    assert_eq!(step_name(42), "step-000000042");
    assert_eq!(parse_step_name("step-000000042"), Some(42));
    assert_eq!(parse_step_name("step-"), None);
    assert_eq!(parse_step_name("step-12a"), None);
    assert_eq!(parse_step_name("best"), None);
}

#[test]
fn a_failed_write_leaves_no_checkpoint_under_a_final_name() {
    let run = tempfile::tempdir().unwrap();
    let cp = Checkpoints::open(run.path()).unwrap();
    let err = cp
        .write(&step_name(10), |dir| {
            fs::write(dir.join("model.safetensors"), b"partial").unwrap();
            Err(Error::file(dir.join("optimizer.safetensors"), "disk full"))
        })
        .unwrap_err();
    assert!(err.to_string().contains("disk full"));
    assert!(names(cp.root()).is_empty(), "{:?}", names(cp.root()));
    assert!(cp.latest().unwrap().is_none());

    // A failed replacement of `best` keeps the previous one intact.
    cp.write(BEST, fill("one")).unwrap();
    let _ = cp.write(BEST, |dir| {
        fs::write(dir.join("state.json"), "{}").unwrap();
        Err(Error::file(dir, "interrupted"))
    });
    assert_eq!(names(cp.root()), ["best"]);
    let state = fs::read_to_string(cp.root().join("best/state.json")).unwrap();
    assert!(state.contains("one"));
}

#[test]
fn leftovers_of_a_crash_are_never_taken_for_checkpoints_and_are_removed() {
    let run = tempfile::tempdir().unwrap();
    let root = run.path().join("checkpoints");
    // What a process killed mid-write leaves behind.
    fs::create_dir_all(root.join(".tmp-step-000000020-999-0")).unwrap();
    fs::write(
        root.join(".tmp-step-000000020-999-0/model.safetensors"),
        b"half",
    )
    .unwrap();
    fs::create_dir_all(root.join(".old-best-999-1")).unwrap();
    let cp = Checkpoints::open(run.path()).unwrap();
    assert!(names(&root).is_empty(), "{:?}", names(&root));
    cp.write(&step_name(5), fill("five")).unwrap();
    assert_eq!(names(&root), ["step-000000005"]);
    assert_eq!(
        fs::read(root.join("step-000000005/model.safetensors"))
            .unwrap()
            .len(),
        4000
    );
}

#[test]
fn pruning_keeps_the_last_k_and_best() {
    let run = tempfile::tempdir().unwrap();
    let cp = Checkpoints::open(run.path()).unwrap();
    for step in [100, 200, 300, 400, 500] {
        cp.write(&step_name(step), fill(&step.to_string())).unwrap();
        if step == 200 {
            cp.write(BEST, fill("best at 200")).unwrap();
        }
    }
    let removed = cp.prune(2).unwrap();
    assert_eq!(removed.len(), 3);
    assert_eq!(
        names(cp.root()),
        ["best", "step-000000400", "step-000000500"]
    );
    let steps: Vec<u64> = cp.steps().unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, [400, 500]);
    assert!(fs::read_to_string(cp.best().unwrap().join("state.json"))
        .unwrap()
        .contains("best at 200"));
    assert!(cp.prune(5).unwrap().is_empty());
    // Replacing best swaps the content.
    cp.write(BEST, fill("best at 500")).unwrap();
    assert!(fs::read_to_string(cp.root().join("best/state.json"))
        .unwrap()
        .contains("best at 500"));
    assert_eq!(names(cp.root()).len(), 3);
}

#[test]
fn resume_resolves_run_directories_and_checkpoints() {
    let run = tempfile::tempdir().unwrap();
    let e = resolve_resume(run.path()).unwrap_err().to_string();
    assert!(e.contains("no checkpoints/"), "{e}");
    let cp = Checkpoints::open(run.path()).unwrap();
    assert!(resolve_resume(run.path()).is_err());
    cp.write(&step_name(7), fill("7")).unwrap();
    cp.write(&step_name(12), fill("12")).unwrap();
    let latest = run.path().join("checkpoints/step-000000012");
    assert_eq!(resolve_resume(run.path()).unwrap(), latest);
    assert_eq!(
        resolve_resume(&run.path().join("checkpoints")).unwrap(),
        latest
    );
    let seven = run.path().join("checkpoints/step-000000007");
    assert_eq!(resolve_resume(&seven).unwrap(), seven);
}
