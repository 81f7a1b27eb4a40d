//! The warmup + cosine schedule's shape.

use spectok_train::{Schedule, ScheduleConfig};

#[test]
fn warmup_is_linear_then_cosine_reaches_the_floor() {
    let cfg = ScheduleConfig {
        warmup_steps: 10,
        min_lr_ratio: 0.1,
    };
    let s = Schedule::new(1e-3, &cfg, 110);
    // Linear warmup: step k (0-based) runs at peak·(k+1)/10.
    for k in 0..10 {
        let want = 1e-3 * (k + 1) as f64 / 10.0;
        assert!((s.lr(k) - want).abs() < 1e-15, "step {k}: {}", s.lr(k));
    }
    assert_eq!(s.lr(9), 1e-3);
    // First post-warmup step at the peak, last step at the floor.
    assert!((s.lr(10) - 1e-3).abs() < 1e-15);
    assert!((s.lr(109) - 1e-4).abs() < 1e-15);
    // Half-way through the cosine: the mean of peak and floor.
    let mid = s.lr(10 + 99 / 2);
    assert!((mid - 5.5e-4).abs() < 1e-5, "{mid}");
    // Monotone decay after warmup, and flat beyond the end.
    for k in 10..109 {
        assert!(s.lr(k + 1) <= s.lr(k), "step {k}");
    }
    assert_eq!(s.lr(500), s.lr(109));
}

#[test]
fn no_warmup_starts_at_the_peak() {
    let cfg = ScheduleConfig {
        warmup_steps: 0,
        min_lr_ratio: 0.0,
    };
    let s = Schedule::new(2.0, &cfg, 3);
    assert_eq!(s.lr(0), 2.0);
    assert!((s.lr(1) - 1.0).abs() < 1e-12);
    assert!(s.lr(2).abs() < 1e-12);
    // A one-step run takes its step at the peak.
    assert_eq!(Schedule::new(2.0, &cfg, 1).lr(0), 2.0);
}
