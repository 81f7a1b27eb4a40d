//! Crash safety of `spectok pretrain` and `spectok embed`, end to end on
//! a few real survey files:
//!
//! - pretraining SIGKILLed at random moments (during steps, and while a
//!   checkpoint is being written) and resumed each time ends with exactly
//!   the weights and optimiser state of an uninterrupted run, and never
//!   shows a partial checkpoint;
//! - embedding SIGKILLed at random moments never leaves a partial output
//!   under the final name, and a rerun completes with the same bytes as an
//!   uninterrupted run;
//! - a full disk, a read-only output directory and missing or damaged
//!   checkpoint files give one-line errors and leave no partial output.
//!
//! The kill times come from a seed printed by each test; set
//! `SPECTOK_CRASH_SEED` to replay one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use spectok_io::testdata::real_data_dir;

/// Longest any one spectok process may run before the test gives up.
const PROCESS_LIMIT: Duration = Duration::from_secs(180);

fn spectok() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spectok"));
    // One compute thread each: the tests run side by side on small machines.
    c.env("RAYON_NUM_THREADS", "1");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs to the end (or fails the test after [`PROCESS_LIMIT`]).
fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start spectok");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PROCESS_LIMIT) {
        Ok(out) => out.expect("wait for spectok"),
        Err(_) => {
            kill_pid(pid);
            panic!("spectok did not finish within {PROCESS_LIMIT:?}");
        }
    }
}

/// SIGKILLs the process `pid` (a child this test started).
fn kill_pid(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

/// A seeded generator of kill times (SplitMix64).
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Rng {
        let seed = std::env::var("SPECTOK_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: SPECTOK_CRASH_SEED={seed}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A duration uniformly in `[lo, hi)`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_micros().max(1) as u64;
        lo + Duration::from_micros(self.next() % span)
    }
}

/// A tiny training config over a few real files, writing to `out`.
fn write_config(dir: &Path, real: &Path, out: &Path, steps: u64, every: u64) -> PathBuf {
    let files = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .map(|n| real.join(n).display().to_string())
            .collect()
    };
    let cfg = serde_json::json!({
        "data": {
            "sources": [
                {"name": "sdss", "paths": files(&[
                    "sdss/spec-0266-51602-0013.fits",
                    "sdss/spec-0266-51602-0031.fits",
                    "sdss/spec-0266-51602-0107.fits",
                    "sdss/spec-1665-52976-0519.fits",
                ])},
                {"name": "apogee", "paths": files(&[
                    "apogee/aspcapStar-r6-l30e.2-2M00452143+1634446.fits",
                    "apogee/aspcapStar-r6-l30e.2-2M03290406+3117075.fits",
                    "apogee/aspcapStar-r6-l30e.2-2M08501918+1056436.fits",
                ])}
            ],
            "val_fraction": 0.2,
            "val_max_spectra": 2,
            "eval_batch_size": 2,
            "pool_size": 4,
            "readers_per_source": 1,
            "prefetch": 1
        },
        "model": {"patch_size": 16, "d_model": 16, "encoder_layers": 1, "decoder_layers": 1,
                  "heads": 2, "mlp_ratio": 2.0, "wavelength_freqs": 8, "offset_freqs": 2,
                  "mask_ratio": 0.25},
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_steps": 2},
        "batch": {"mode": "fixed", "spectra": 2},
        "steps": steps,
        "eval_interval": steps,
        "checkpoint_interval": every,
        "log_interval": 1,
        "keep_last": 2,
        "seed": 3,
        "device": "cpu",
        "out_dir": out.display().to_string()
    });
    let path = dir.join(format!(
        "config-{}.json",
        out.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    path
}

fn step_dir(run: &Path, step: u64) -> PathBuf {
    run.join("checkpoints").join(format!("step-{step:09}"))
}

/// Names in `run/checkpoints`.
fn checkpoint_entries(run: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether a safetensors file is whole: its header parses and the file is
/// exactly as long as the header's tensors say.
fn safetensors_whole(path: &Path) -> bool {
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    let Some(n) = b
        .get(..8)
        .map(|h| u64::from_le_bytes(h.try_into().unwrap()) as usize)
    else {
        return false;
    };
    let Some(head) = b.get(8..8 + n) else {
        return false;
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(head) else {
        return false;
    };
    let end = map
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0) as usize;
    b.len() == 8 + n + end
}

/// Every visible checkpoint (`step-*`, `best`) is complete.
fn assert_visible_checkpoints_whole(run: &Path, when: &str) {
    for name in checkpoint_entries(run) {
        if name.starts_with('.') {
            continue;
        }
        let d = run.join("checkpoints").join(&name);
        for f in [
            "model.safetensors",
            "optimizer.safetensors",
            "config.json",
            "state.json",
            "train_config.json",
        ] {
            assert!(d.join(f).is_file(), "{when}: {name}/{f} missing");
        }
        for f in ["model.safetensors", "optimizer.safetensors"] {
            assert!(
                safetensors_whole(&d.join(f)),
                "{when}: {name}/{f} is partial"
            );
        }
        let state = std::fs::read_to_string(d.join("state.json")).unwrap();
        assert!(
            serde_json::from_str::<serde_json::Value>(&state).is_ok(),
            "{when}: {name}/state.json is partial"
        );
    }
}

/// How one attempt ends.
enum Kill {
    /// After this long (if still running).
    After(Duration),
    /// As soon as a checkpoint is being written (a `.tmp-*` directory
    /// appears), or after the duration if none does.
    DuringCheckpoint(Duration),
}

/// Waits for `child` as `kill` says; returns its exit status if it ended
/// by itself and whether it was killed while a `.tmp-*` was present.
fn kill_as(child: &mut Child, kill: &Kill, run: &Path) -> (Option<ExitStatus>, bool) {
    let start = Instant::now();
    let (limit, watch) = match kill {
        Kill::After(d) => (*d, false),
        Kill::DuringCheckpoint(d) => (*d, true),
    };
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (Some(status), false);
        }
        let writing = watch
            && checkpoint_entries(run)
                .iter()
                .any(|n| n.starts_with(".tmp-"));
        if writing || start.elapsed() >= limit {
            // Child::kill sends SIGKILL on Unix.
            let _ = child.kill();
            let status = child.wait().unwrap();
            if status.success() {
                return (Some(status), false);
            }
            return (None, writing);
        }
        std::thread::sleep(Duration::from_micros(if watch { 100 } else { 2000 }));
    }
}

#[test]
fn pretrain_killed_at_random_moments_resumes_to_the_same_weights() {
    let Some(real) = real_data_dir() else { return };
    let mut rng = Rng::from_env("pretrain");
    let tmp = tempfile::tempdir().unwrap();
    const STEPS: u64 = 12;

    // The uninterrupted run.
    let straight = tmp.path().join("straight");
    let cfg = write_config(tmp.path(), &real, &straight, STEPS, 2);
    let t0 = Instant::now();
    let out = run(spectok()
        .args(["pretrain", "--no-plots", "--config"])
        .arg(&cfg));
    let full = t0.elapsed();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want_model = std::fs::read(step_dir(&straight, STEPS).join("model.safetensors")).unwrap();
    let want_optim =
        std::fs::read(step_dir(&straight, STEPS).join("optimizer.safetensors")).unwrap();

    // The same run, killed again and again.
    let crashed = tmp.path().join("crashed");
    let cfg = write_config(tmp.path(), &real, &crashed, STEPS, 2);
    let plan = [
        Kill::After(rng.between(Duration::from_millis(50), full / 3)),
        Kill::DuringCheckpoint(full),
        Kill::After(rng.between(full / 4, full)),
        Kill::DuringCheckpoint(full),
        Kill::After(rng.between(Duration::from_millis(200), full)),
    ];
    let mut kills = 0;
    let mut mid_checkpoint = 0;
    let mut finished = false;
    for (i, kill) in plan.iter().enumerate() {
        let resume = checkpoint_entries(&crashed)
            .iter()
            .any(|n| n.starts_with("step-"));
        let mut cmd = spectok();
        cmd.args(["pretrain", "--no-plots"]);
        if resume {
            cmd.arg("--resume").arg(&crashed);
        } else {
            cmd.arg("--config").arg(&cfg);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (status, during) = kill_as(&mut child, kill, &crashed);
        match status {
            Some(s) => {
                assert!(s.success(), "attempt {i} failed by itself: {s}");
                finished = true;
                break;
            }
            None => {
                kills += 1;
                let leftover = checkpoint_entries(&crashed)
                    .iter()
                    .any(|n| n.starts_with(".tmp-"));
                if during && leftover {
                    mid_checkpoint += 1;
                }
                assert_visible_checkpoints_whole(&crashed, &format!("after kill {i}"));
            }
        }
    }
    // What a kill in the middle of writing leaves behind, made by hand so
    // that the resume below always meets it: a half-written checkpoint in
    // a temporary directory.
    if !finished {
        if let Some(latest) = checkpoint_entries(&crashed)
            .into_iter()
            .rfind(|n| n.starts_with("step-"))
        {
            let src = crashed.join("checkpoints").join(&latest);
            let partial = crashed
                .join("checkpoints")
                .join(".tmp-step-000000999-4242-0");
            std::fs::create_dir_all(&partial).unwrap();
            let model = std::fs::read(src.join("model.safetensors")).unwrap();
            std::fs::write(partial.join("model.safetensors"), &model[..model.len() / 2]).unwrap();
        }
    }
    // Resume until done.
    let mut rounds = 0;
    while !finished {
        rounds += 1;
        assert!(rounds <= 3, "resuming does not finish the run");
        let mut cmd = spectok();
        cmd.args(["pretrain", "--no-plots"]);
        if checkpoint_entries(&crashed)
            .iter()
            .any(|n| n.starts_with("step-"))
        {
            cmd.arg("--resume").arg(&crashed);
        } else {
            cmd.arg("--config").arg(&cfg);
        }
        let out = run(&mut cmd);
        assert!(out.status.success(), "{}", text(&out.stderr));
        finished = true;
    }
    eprintln!(
        "pretrain: {kills} kill(s), {mid_checkpoint} while a checkpoint was being written; \
         uninterrupted run {full:?}"
    );
    assert!(
        kills >= 1,
        "the run was never killed ({full:?} uninterrupted)"
    );

    let entries = checkpoint_entries(&crashed);
    assert!(
        entries.iter().all(|n| !n.starts_with('.')),
        "leftovers of interrupted writes: {entries:?}"
    );
    assert_visible_checkpoints_whole(&crashed, "at the end");
    let got_model = std::fs::read(step_dir(&crashed, STEPS).join("model.safetensors")).unwrap();
    let got_optim = std::fs::read(step_dir(&crashed, STEPS).join("optimizer.safetensors")).unwrap();
    assert!(
        got_model == want_model,
        "weights differ from the uninterrupted run"
    );
    assert!(
        got_optim == want_optim,
        "optimiser state differs from the uninterrupted run"
    );
}

/// Trains a 2-step model into `dir/run` and returns the run directory.
fn tiny_run(dir: &Path, real: &Path) -> PathBuf {
    let run_dir = dir.join("run");
    let cfg = write_config(dir, real, &run_dir, 2, 1);
    let out = run(spectok()
        .args(["pretrain", "--no-plots", "--config"])
        .arg(&cfg));
    assert!(out.status.success(), "{}", text(&out.stderr));
    run_dir
}

/// Inputs for embedding: a few dozen real spectra.
fn embed_inputs(real: &Path) -> Vec<PathBuf> {
    vec![
        real.join("sdss"),
        real.join("apogee"),
        real.join("lamost"),
        real.join("desi/coadd-4-80613-thru20210324.fits"),
    ]
}

#[test]
fn embed_killed_at_random_moments_leaves_no_partial_output() {
    let Some(real) = real_data_dir() else { return };
    let mut rng = Rng::from_env("embed");
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tiny_run(tmp.path(), &real);
    let embed = |out: &Path| {
        let mut c = spectok();
        c.arg("embed")
            .args(embed_inputs(&real))
            .arg("--checkpoint")
            .arg(&run_dir)
            .arg("-o")
            .arg(out)
            .args(["--readers", "1", "--batch-size", "4"]);
        c
    };

    let want_path = tmp.path().join("straight.h5");
    let t0 = Instant::now();
    let out = run(&mut embed(&want_path));
    let full = t0.elapsed();
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "{}",
        text(&out.stderr)
    );
    let want = std::fs::read(&want_path).unwrap();

    let target = tmp.path().join("crashed.h5");
    let tmp_name = tmp.path().join("crashed.h5.tmp");
    let mut kills = 0;
    for i in 0..4 {
        let mut child = embed(&target)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let when = rng.between(Duration::from_millis(20), full / 2);
        let (status, _) = kill_as(&mut child, &Kill::After(when), tmp.path());
        if status.is_none() {
            kills += 1;
        }
        // Killed or not, the final name holds nothing or the whole file
        // (a kill can land after the rename).
        if target.exists() {
            assert!(
                std::fs::read(&target).unwrap() == want,
                "attempt {i} left a partial {}",
                target.display()
            );
            std::fs::remove_file(&target).unwrap();
        }
    }
    assert!(
        kills >= 1,
        "embed was never killed ({full:?} uninterrupted)"
    );
    if !target.exists() {
        let out = run(&mut embed(&target));
        assert!(
            out.status.code() == Some(0) || out.status.code() == Some(1),
            "rerun after kills: {}",
            text(&out.stderr)
        );
    }
    eprintln!("embed: {kills} kill(s); uninterrupted run {full:?}");
    assert!(
        std::fs::read(&target).unwrap() == want,
        "the rerun's output differs from the uninterrupted run's"
    );
    assert!(!tmp_name.exists(), "{} left behind", tmp_name.display());
}

// ---------------------------------------------------------------------------
// Full disk, read-only output, missing checkpoint files
// ---------------------------------------------------------------------------

/// A small tmpfs mounted for the test (root only), unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `kib` KiB at a new directory under `parent`;
    /// `None` (with a line saying the test skips) where mounting is not
    /// allowed.
    fn mount(parent: &Path, name: &str, kib: u64) -> Option<Tmpfs> {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(&dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipping: cannot mount a tmpfs (needs root)");
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn read_only(&self) -> bool {
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// A spectok failure: exit code 2, one `error:` line naming `what`, no
/// panic.
fn assert_clean_error(out: &Output, what: &[&str], case: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{case}: {err}");
    assert!(!err.contains("panicked"), "{case}: {err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{case}: no error line in {err}"));
    for w in what {
        assert!(line.contains(w), "{case}: {line:?} does not say {w:?}");
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                v.extend(files_under(&p));
            }
            v.push(p);
        }
    }
    v
}

#[test]
fn full_disk_and_read_only_outputs_fail_cleanly() {
    let Some(real) = real_data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some(small) = Tmpfs::mount(tmp.path(), "small", 64) else {
        return;
    };
    let run_dir = tiny_run(tmp.path(), &real);

    // Pretraining onto a full disk: the checkpoint does not fit.
    let out_run = small.dir.join("run");
    let cfg = write_config(tmp.path(), &real, &out_run, 2, 1);
    let out = run(spectok()
        .args(["pretrain", "--no-plots", "--config"])
        .arg(&cfg));
    assert_clean_error(&out, &["No space left"], "pretrain on a full disk");
    let entries = checkpoint_entries(&out_run);
    assert!(
        entries.is_empty(),
        "pretrain on a full disk left checkpoints: {entries:?}"
    );
    std::fs::remove_dir_all(&out_run).unwrap();

    // Embedding onto a full disk: no output, no temporary file.
    let target = small.dir.join("emb.h5");
    let filler = small.dir.join("filler");
    std::fs::write(&filler, vec![0u8; 40 << 10]).unwrap();
    let out = run(spectok()
        .arg("embed")
        .args(embed_inputs(&real))
        .arg("--checkpoint")
        .arg(&run_dir)
        .arg("-o")
        .arg(&target));
    assert_clean_error(&out, &["emb.h5"], "embed on a full disk");
    std::fs::remove_file(&filler).unwrap();
    let left = files_under(&small.dir);
    assert!(left.is_empty(), "embed on a full disk left {left:?}");

    // A disk with no byte left: creating the file itself fails part-way.
    let mut fill = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    while std::io::Write::write_all(&mut fill, &block).is_ok() {}
    drop(fill);
    let out = run(spectok()
        .arg("embed")
        .arg(real.join("sdss/spec-0266-51602-0013.fits"))
        .arg("--checkpoint")
        .arg(&run_dir)
        .arg("-o")
        .arg(&target));
    assert_clean_error(
        &out,
        &["emb.h5", "No space left"],
        "embed on a disk with no byte left",
    );
    let shard = small.dir.join("shard.h5");
    let out = run(spectok()
        .arg("convert")
        .arg(real.join("sdss/spec-0266-51602-0013.fits"))
        .arg("-o")
        .arg(&shard));
    assert_clean_error(&out, &["shard.h5"], "convert on a disk with no byte left");
    std::fs::remove_file(&filler).unwrap();
    let left = files_under(&small.dir);
    assert!(left.is_empty(), "a full disk left {left:?}");

    // A read-only output directory.
    assert!(small.read_only(), "cannot remount read-only");
    let out = run(spectok()
        .args(["pretrain", "--no-plots", "--config"])
        .arg(&cfg));
    assert_clean_error(&out, &["run", "Read-only"], "pretrain into a read-only dir");
    let out = run(spectok()
        .arg("embed")
        .arg(real.join("sdss/spec-0266-51602-0013.fits"))
        .arg("--checkpoint")
        .arg(&run_dir)
        .arg("-o")
        .arg(&target));
    assert_clean_error(&out, &["emb.h5"], "embed into a read-only dir");
    assert!(files_under(&small.dir).is_empty());
}

#[test]
fn missing_or_damaged_checkpoint_files_are_one_line_errors() {
    let Some(real) = real_data_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tiny_run(tmp.path(), &real);
    let copy_run = |name: &str| -> PathBuf {
        let dst = tmp.path().join(name);
        let out = Command::new("cp")
            .arg("-r")
            .arg(&run_dir)
            .arg(&dst)
            .status()
            .unwrap();
        assert!(out.success());
        dst
    };
    let sample = real.join("sdss/spec-0266-51602-0013.fits");

    for (case, file, damage) in [
        ("no-model", "model.safetensors", "remove"),
        ("no-optimizer", "optimizer.safetensors", "remove"),
        ("no-state", "state.json", "remove"),
        ("no-train-config", "train_config.json", "remove"),
        ("half-model", "model.safetensors", "truncate"),
        ("half-state", "state.json", "truncate"),
    ] {
        let r = copy_run(case);
        let ckpt = step_dir(&r, 2);
        let path = ckpt.join(file);
        if damage == "remove" {
            std::fs::remove_file(&path).unwrap();
        } else {
            let b = std::fs::read(&path).unwrap();
            std::fs::write(&path, &b[..b.len() / 2]).unwrap();
        }
        let before = files_under(&r);
        let out = run(spectok()
            .args(["pretrain", "--no-plots", "--resume"])
            .arg(&ckpt));
        // A missing state.json makes the directory no checkpoint at all.
        let named = if case == "no-state" {
            "step-000000002"
        } else {
            file
        };
        assert_clean_error(&out, &[named], &format!("resume {case}"));
        // (embed falls back on the run's config.json for the preparation.)
        if file == "model.safetensors" {
            let emb = tmp.path().join(format!("{case}.h5"));
            let out = run(spectok()
                .arg("embed")
                .arg(&sample)
                .arg("--checkpoint")
                .arg(&ckpt)
                .arg("-o")
                .arg(&emb));
            assert_clean_error(&out, &[file], &format!("embed {case}"));
            assert!(!emb.exists() && !tmp.path().join(format!("{case}.h5.tmp")).exists());
        }
        // Nothing new appeared in the checkpoint directories.
        let after: Vec<PathBuf> = files_under(&r)
            .into_iter()
            .filter(|p| p.starts_with(r.join("checkpoints")))
            .collect();
        for p in after {
            assert!(before.contains(&p), "resume {case} left {}", p.display());
        }
    }

    // A run directory without checkpoints.
    let r = copy_run("no-checkpoints");
    std::fs::remove_dir_all(r.join("checkpoints")).unwrap();
    let out = run(spectok()
        .args(["pretrain", "--no-plots", "--resume"])
        .arg(&r));
    assert_clean_error(&out, &["no-checkpoints"], "resume without checkpoints");
    let out = run(spectok()
        .arg("embed")
        .arg(&sample)
        .arg("--checkpoint")
        .arg(&r)
        .arg("-o")
        .arg(tmp.path().join("none.h5")));
    assert_clean_error(&out, &["no-checkpoints"], "embed without checkpoints");
    assert!(!tmp.path().join("none.h5").exists());
}
