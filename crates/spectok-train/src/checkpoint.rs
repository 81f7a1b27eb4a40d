//! Checkpoint directories, written atomically, and their pruning.
//!
//! Layout of a run directory:
//!
//! ```text
//! RUN/
//!   config.json                 the resolved training config
//!   metrics.jsonl               one JSON record per log/eval event
//!   reconstructions.json        example reconstructions of the last eval
//!   checkpoints/
//!     step-000001000/           one per checkpoint; the last `keep_last` kept
//!       model.safetensors       weights        (spectok-model's layout,
//!       config.json             model config    loadable by Tokenizer::load)
//!       optimizer.safetensors   AdamW moments and step counter
//!       state.json              step, loader position, best loss, seed …
//!       train_config.json       the training config of the run
//!     best/                     same content, at the best validation loss
//! ```
//!
//! A checkpoint is first written into a hidden sibling
//! `checkpoints/.tmp-<name>-<pid>-<n>`, every file is synced, and only then
//! is the directory renamed to its final name; a crash or error part-way
//! leaves at most a `.tmp-*` directory, never a partial `step-*` or `best`,
//! and stale `.tmp-*` directories are removed the next time the run
//! directory is opened. Replacing `best` renames the old one aside first
//! and removes it after the new one is in place.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Subdirectory of the run directory holding the checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Name of the best-validation checkpoint.
pub const BEST: &str = "best";
/// The optimiser state file of a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The training state file of a checkpoint.
pub const STATE_FILE: &str = "state.json";
/// The training config stored in each checkpoint.
pub const TRAIN_CONFIG_FILE: &str = "train_config.json";

const TMP_PREFIX: &str = ".tmp-";
const OLD_PREFIX: &str = ".old-";
const STEP_PREFIX: &str = "step-";

/// Everything besides weights and optimiser moments that a resumed run
/// needs to continue exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainState {
    /// Optimiser steps completed.
    pub step: u64,
    /// The run's seed (masking randomness is derived from seed and step).
    pub seed: u64,
    /// The data loader's position, as the data crate serialises it.
    pub loader: serde_json::Value,
    /// Learning rate of the last step taken.
    pub lr: f64,
    /// Best mean validation loss so far and its step.
    pub best_val_loss: Option<f64>,
    pub best_step: Option<u64>,
    /// Spectra and real patches consumed so far.
    pub spectra_seen: u64,
    pub tokens_seen: u64,
    /// Training wall time so far, seconds.
    pub elapsed_s: f64,
    /// Dynamic loss scale of f16 mixed precision (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScale>,
}

/// Dynamic loss scaling for f16 compute: the loss is multiplied by
/// `scale` before the backward pass and the gradients divided by it. A
/// step whose gradients overflow is skipped and the scale halved; after
/// [`LossScale::GROWTH_INTERVAL`] good steps in a row it doubles.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScale {
    /// Current multiplier of the loss.
    pub scale: f64,
    /// Good steps since the last change.
    pub good_steps: u64,
}

impl LossScale {
    /// Initial scale (2¹⁶, as PyTorch's GradScaler).
    pub const INITIAL: f64 = 65536.0;
    /// Good steps before the scale doubles.
    pub const GROWTH_INTERVAL: u64 = 2000;
    /// Below this an overflowing step is an error, not a rescale.
    pub const MIN: f64 = 1.0;
    /// Largest scale used.
    pub const MAX: f64 = 16_777_216.0;

    /// A fresh scaler.
    pub fn new() -> Self {
        LossScale {
            scale: Self::INITIAL,
            good_steps: 0,
        }
    }

    /// Records a step's outcome: `overflow` halves the scale (returns
    /// `false` when it is already at [`Self::MIN`]), otherwise counts a
    /// good step and doubles the scale every
    /// [`Self::GROWTH_INTERVAL`] of them.
    pub fn update(&mut self, overflow: bool) -> bool {
        if overflow {
            if self.scale <= Self::MIN {
                return false;
            }
            self.scale = (self.scale / 2.0).max(Self::MIN);
            self.good_steps = 0;
        } else {
            self.good_steps += 1;
            if self.good_steps >= Self::GROWTH_INTERVAL {
                self.scale = (self.scale * 2.0).min(Self::MAX);
                self.good_steps = 0;
            }
        }
        true
    }
}

impl Default for LossScale {
    fn default() -> Self {
        Self::new()
    }
}

impl TrainState {
    /// Reads `dir/state.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let text = fs::read_to_string(&path).map_err(|e| Error::file(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::checkpoint(&path, e))
    }

    /// Writes `dir/state.json`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::file(&path, e))?;
        fs::write(&path, text + "\n").map_err(|e| Error::file(&path, e))
    }
}

/// Directory name of the checkpoint after `step` steps.
pub fn step_name(step: u64) -> String {
    format!("{STEP_PREFIX}{step:09}")
}

/// The step of a `step-NNNNNNNNN` directory name.
pub fn parse_step_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(STEP_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn sync_dir_tree(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::file(dir, e))? {
        let path = entry.map_err(|e| Error::file(dir, e))?.path();
        if path.is_file() {
            fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::file(&path, e))?;
        }
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    // Directories can be opened and synced on Unix; elsewhere this is a
    // best effort.
    match fs::File::open(dir) {
        Ok(f) => {
            let _ = f.sync_all();
            Ok(())
        }
        Err(e) => Err(Error::file(dir, e)),
    }
}

/// The `checkpoints/` directory of a run.
#[derive(Clone, Debug)]
pub struct Checkpoints {
    root: PathBuf,
}

impl Checkpoints {
    /// Opens (creating it if needed) `run_dir/checkpoints` and removes
    /// leftovers of interrupted writes (`.tmp-*`, `.old-*`).
    pub fn open(run_dir: &Path) -> Result<Self> {
        let root = run_dir.join(CHECKPOINTS_DIR);
        fs::create_dir_all(&root).map_err(|e| Error::file(&root, e))?;
        let cp = Checkpoints { root };
        cp.remove_stale()?;
        Ok(cp)
    }

    /// The `checkpoints/` directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn remove_stale(&self) -> Result<()> {
        for entry in fs::read_dir(&self.root).map_err(|e| Error::file(&self.root, e))? {
            let entry = entry.map_err(|e| Error::file(&self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TMP_PREFIX) || name.starts_with(OLD_PREFIX) {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(|e| Error::file(&path, e))?;
            }
        }
        Ok(())
    }

    /// Writes checkpoint `name` (e.g. [`step_name`] or [`BEST`]) by letting
    /// `fill` write its files into a fresh temporary directory, then
    /// renaming it into place (replacing an existing checkpoint of that
    /// name). If `fill` fails, the temporary directory is removed and
    /// nothing under `name` changes. Returns the final path.
    pub fn write<F>(&self, name: &str, fill: F) -> Result<PathBuf>
    where
        F: FnOnce(&Path) -> Result<()>,
    {
        let tmp = self
            .root
            .join(format!("{TMP_PREFIX}{name}-{}", unique_suffix()));
        fs::create_dir(&tmp).map_err(|e| Error::file(&tmp, e))?;
        let filled = fill(&tmp).and_then(|()| sync_dir_tree(&tmp));
        if let Err(e) = filled {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let dest = self.root.join(name);
        let old = if dest.exists() {
            let old = self
                .root
                .join(format!("{OLD_PREFIX}{name}-{}", unique_suffix()));
            fs::rename(&dest, &old).map_err(|e| Error::file(&dest, e))?;
            Some(old)
        } else {
            None
        };
        if let Err(e) = fs::rename(&tmp, &dest) {
            // Put the previous checkpoint back before reporting.
            if let Some(old) = &old {
                let _ = fs::rename(old, &dest);
            }
            let _ = fs::remove_dir_all(&tmp);
            return Err(Error::file(&dest, e));
        }
        sync_dir(&self.root)?;
        if let Some(old) = old {
            fs::remove_dir_all(&old).map_err(|e| Error::file(&old, e))?;
        }
        Ok(dest)
    }

    /// Step checkpoints present, oldest first.
    pub fn steps(&self) -> Result<Vec<(u64, PathBuf)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(|e| Error::file(&self.root, e))? {
            let entry = entry.map_err(|e| Error::file(&self.root, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(step) = parse_step_name(&name) {
                if entry.path().is_dir() {
                    out.push((step, entry.path()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The newest step checkpoint.
    pub fn latest(&self) -> Result<Option<PathBuf>> {
        Ok(self.steps()?.pop().map(|(_, p)| p))
    }

    /// The best-validation checkpoint, if one was written.
    pub fn best(&self) -> Option<PathBuf> {
        let p = self.root.join(BEST);
        p.is_dir().then_some(p)
    }

    /// Removes the oldest step checkpoints so that at most `keep` remain
    /// (`best` is never touched). Returns the removed directories.
    pub fn prune(&self, keep: usize) -> Result<Vec<PathBuf>> {
        let steps = self.steps()?;
        let excess = steps.len().saturating_sub(keep);
        let mut removed = Vec::with_capacity(excess);
        for (_, path) in steps.into_iter().take(excess) {
            fs::remove_dir_all(&path).map_err(|e| Error::file(&path, e))?;
            removed.push(path);
        }
        Ok(removed)
    }
}

/// Finds the checkpoint to resume from: `path` itself when it holds a
/// `state.json`, else the newest step checkpoint of the run directory
/// `path` (or of `path/checkpoints`).
pub fn resolve_resume(path: &Path) -> Result<PathBuf> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let run_dir = if path.file_name().is_some_and(|n| n == CHECKPOINTS_DIR) {
        path.parent().unwrap_or(path)
    } else {
        path
    };
    if !run_dir.join(CHECKPOINTS_DIR).is_dir() {
        return Err(Error::checkpoint(
            path,
            "neither a checkpoint (no state.json) nor a run directory (no checkpoints/)",
        ));
    }
    Checkpoints::open(run_dir)?
        .latest()?
        .ok_or_else(|| Error::checkpoint(path, "the run directory has no step checkpoint yet"))
}

#[cfg(test)]
mod loss_scale_tests {
    use super::LossScale;

    #[test]
    fn overflow_halves_good_steps_double_and_the_floor_is_an_error() {
        let mut ls = LossScale::new();
        assert!(ls.update(true));
        assert_eq!(ls.scale, LossScale::INITIAL / 2.0);
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            assert!(ls.update(false));
        }
        assert_eq!(ls.scale, LossScale::INITIAL / 2.0);
        assert!(ls.update(false));
        assert_eq!(ls.scale, LossScale::INITIAL);
        assert_eq!(ls.good_steps, 0);
        let mut ls = LossScale {
            scale: 2.0,
            good_steps: 5,
        };
        assert!(ls.update(true));
        assert_eq!(ls.scale, LossScale::MIN);
        assert!(!ls.update(true), "no scale left below the floor");
    }
}
