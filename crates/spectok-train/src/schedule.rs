//! Learning-rate schedule: linear warmup, then cosine decay to a floor.
//!
//! The schedule is a pure function of the step, so a resumed run needs
//! only the step count to continue it exactly.

use serde::{Deserialize, Serialize};

/// Warmup + cosine schedule settings (the `schedule` section of the
/// config); the peak learning rate is `optim.lr`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Steps of linear warmup from `peak/warmup_steps` to the peak
    /// (default 1000; 0 starts at the peak).
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of the peak, reached at the last
    /// step (default 0.1).
    pub min_lr_ratio: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            warmup_steps: 1000,
            min_lr_ratio: 0.1,
        }
    }
}

/// The learning rate of every step of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// Peak learning rate, reached at the end of warmup.
    pub peak_lr: f64,
    /// Warmup steps.
    pub warmup_steps: u64,
    /// Total steps of the run; the cosine reaches `min_lr` at the last one.
    pub total_steps: u64,
    /// Learning rate at the end of the cosine.
    pub min_lr: f64,
}

impl Schedule {
    /// The schedule of a run of `total_steps` with peak `peak_lr`.
    pub fn new(peak_lr: f64, cfg: &ScheduleConfig, total_steps: u64) -> Self {
        Schedule {
            peak_lr,
            warmup_steps: cfg.warmup_steps,
            total_steps,
            min_lr: peak_lr * cfg.min_lr_ratio,
        }
    }

    /// Learning rate of the update with 0-based index `step` (the first
    /// update is step 0).
    ///
    /// During warmup, `peak · (step + 1) / warmup_steps`; afterwards
    /// `min + (peak − min) · (1 + cos(π t)) / 2` with `t` going from 0 at
    /// the first post-warmup step to 1 at the last step of the run (and
    /// staying 1 beyond it).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self
            .total_steps
            .saturating_sub(self.warmup_steps)
            .saturating_sub(1);
        let t = if decay_steps == 0 {
            // A single post-warmup step runs at the peak.
            if step == self.warmup_steps {
                0.0
            } else {
                1.0
            }
        } else {
            ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0)
        };
        self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }
}
