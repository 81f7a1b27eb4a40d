//! AdamW against hand-computed updates, clipping, and state round trips.

use candle_core::{DType, Device, Tensor, Var};
use spectok_train::{AdamW, OptimConfig};

fn var(values: &[f32], shape: &[usize]) -> Var {
    Var::from_tensor(&Tensor::from_slice(values, shape, &Device::Cpu).unwrap()).unwrap()
}

fn values(v: &Var) -> Vec<f32> {
    v.as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Gradients of `Σ w·cw + Σ b·cb` are `cw` and `cb`.
fn grads(w: &Var, cw: &[f32], b: &Var, cb: &[f32]) -> candle_core::backprop::GradStore {
    let dev = Device::Cpu;
    let cw = Tensor::from_slice(cw, w.shape(), &dev).unwrap();
    let cb = Tensor::from_slice(cb, b.shape(), &dev).unwrap();
    let loss = ((w.as_tensor() * cw).unwrap().sum_all().unwrap()
        + (b.as_tensor() * cb).unwrap().sum_all().unwrap())
    .unwrap();
    loss.backward().unwrap()
}

fn cfg(weight_decay: f64, grad_clip: f64) -> OptimConfig {
    OptimConfig {
        lr: 0.1,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay,
        grad_clip,
    }
}

fn close(a: &[f32], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((*x as f64 - y).abs() < 1e-6, "{a:?} vs {b:?}");
    }
}

#[test]
fn first_step_matches_hand_computation() {
    let w = var(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let b = var(&[0.5, -0.5], &[2]);
    let mut opt = AdamW::new(
        vec![("w".into(), w.clone()), ("b".into(), b.clone())],
        cfg(0.1, 0.0),
    )
    .unwrap();
    assert_eq!(opt.decayed(), ["w"]);
    let g = grads(&w, &[0.1, -0.2, 0.3, 0.0], &b, &[2.0, -4.0]);
    let stats = opt.step(&g, 0.1).unwrap();
    assert!(stats.applied);
    assert_eq!(stats.clip_scale, 1.0);
    let norm = (0.01f64 + 0.04 + 0.09 + 4.0 + 16.0).sqrt();
    assert!((stats.grad_norm - norm).abs() < 1e-5);
    // Step 1: m̂ = g, v̂ = g², so the Adam direction is g/(|g|+ε) ≈ sign(g)
    // (0 where g = 0). The weight matrix first decays by 1 − lr·λ = 0.99;
    // the bias does not decay.
    let s = |g: f64| g / (g.abs() + 1e-8);
    close(
        &values(&w),
        &[
            1.0 * 0.99 - 0.1 * s(0.1),
            2.0 * 0.99 - 0.1 * s(-0.2),
            3.0 * 0.99 - 0.1 * s(0.3),
            4.0 * 0.99,
        ],
    );
    close(&values(&b), &[0.5 - 0.1 * s(2.0), -0.5 - 0.1 * s(-4.0)]);
    assert_eq!(opt.steps_taken(), 1);
}

/// Reference AdamW in f64 for one scalar parameter.
struct Ref {
    theta: f64,
    m: f64,
    v: f64,
    t: i32,
}

impl Ref {
    fn step(&mut self, g: f64, lr: f64, wd: f64) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        self.t += 1;
        self.theta *= 1.0 - lr * wd;
        self.m = b1 * self.m + (1.0 - b1) * g;
        self.v = b2 * self.v + (1.0 - b2) * g * g;
        let mh = self.m / (1.0 - b1.powi(self.t));
        let vh = self.v / (1.0 - b2.powi(self.t));
        self.theta -= lr * mh / (vh.sqrt() + eps);
    }
}

#[test]
fn several_steps_follow_the_reference_and_clipping_scales_globally() {
    let w = var(&[1.0, -1.0], &[1, 2]);
    let b = var(&[0.25], &[1]);
    // Clip at 1: the first gradient (norm 5) is scaled by 1/5.
    let mut opt = AdamW::new(
        vec![("w".into(), w.clone()), ("b".into(), b.clone())],
        cfg(0.05, 1.0),
    )
    .unwrap();
    let mut rw = [
        Ref {
            theta: 1.0,
            m: 0.0,
            v: 0.0,
            t: 0,
        },
        Ref {
            theta: -1.0,
            m: 0.0,
            v: 0.0,
            t: 0,
        },
    ];
    let mut rb = Ref {
        theta: 0.25,
        m: 0.0,
        v: 0.0,
        t: 0,
    };
    let gs: [[f32; 3]; 3] = [[3.0, 0.0, 4.0], [0.1, 0.2, -0.2], [-0.5, 0.3, 0.0]];
    let lrs = [0.1, 0.05, 0.02];
    for (g, lr) in gs.iter().zip(lrs) {
        let n = (g.iter().map(|x| (*x as f64).powi(2)).sum::<f64>()).sqrt();
        let scale = if n > 1.0 { 1.0 / n } else { 1.0 };
        let store = grads(&w, &g[..2], &b, &g[2..]);
        let stats = opt.step(&store, lr).unwrap();
        assert!((stats.grad_norm - n).abs() < 1e-5);
        assert!((stats.clip_scale - scale).abs() < 1e-9);
        rw[0].step(g[0] as f64 * scale, lr, 0.05);
        rw[1].step(g[1] as f64 * scale, lr, 0.05);
        rb.step(g[2] as f64 * scale, lr, 0.0);
        close(&values(&w), &[rw[0].theta, rw[1].theta]);
        close(&values(&b), &[rb.theta]);
    }
}

#[test]
fn non_finite_gradients_change_nothing() {
    let w = var(&[1.0, 2.0], &[1, 2]);
    let b = var(&[0.0], &[1]);
    let mut opt = AdamW::new(
        vec![("w".into(), w.clone()), ("b".into(), b.clone())],
        cfg(0.1, 1.0),
    )
    .unwrap();
    let g = grads(&w, &[f32::NAN, 1.0], &b, &[1.0]);
    let stats = opt.step(&g, 0.1).unwrap();
    assert!(!stats.applied);
    assert!(stats.grad_norm.is_nan());
    assert_eq!(values(&w), [1.0, 2.0]);
    assert_eq!(values(&b), [0.0]);
    assert_eq!(opt.steps_taken(), 0);
}

#[test]
fn saved_state_continues_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("opt.safetensors");
    let make = || {
        let w = var(&[0.3, -0.7, 1.1, 0.2], &[2, 2]);
        let b = var(&[0.1, 0.2], &[2]);
        let opt = AdamW::new(
            vec![("w".into(), w.clone()), ("b".into(), b.clone())],
            cfg(0.01, 0.5),
        )
        .unwrap();
        (w, b, opt)
    };
    let gs: Vec<[f32; 6]> = (0..6)
        .map(|i| {
            let x = i as f32;
            [0.1 * x, -0.3, 0.2 + x, 0.05, -x, 0.7]
        })
        .collect();
    // Straight through.
    let (w1, b1, mut o1) = make();
    for g in &gs {
        o1.step(&grads(&w1, &g[..4], &b1, &g[4..]), 0.01).unwrap();
    }
    // Three steps, save, new optimiser over restored weights, load, three more.
    let (w2, b2, mut o2) = make();
    for g in &gs[..3] {
        o2.step(&grads(&w2, &g[..4], &b2, &g[4..]), 0.01).unwrap();
    }
    o2.save(&path).unwrap();
    let w3 = var(&values(&w2), &[2, 2]);
    let b3 = var(&values(&b2), &[2]);
    let mut o3 = AdamW::new(
        vec![("b".into(), b3.clone()), ("w".into(), w3.clone())],
        cfg(0.01, 0.5),
    )
    .unwrap();
    o3.load(&path).unwrap();
    assert_eq!(o3.steps_taken(), 3);
    for g in &gs[3..] {
        o3.step(&grads(&w3, &g[..4], &b3, &g[4..]), 0.01).unwrap();
    }
    let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
    assert_eq!(bits(values(&w1)), bits(values(&w3)));
    assert_eq!(bits(values(&b1)), bits(values(&b3)));

    // A state for other parameters is refused, naming the tensor.
    let other = var(&[0.0; 3], &[3]);
    let mut o4 = AdamW::new(vec![("w".into(), other)], cfg(0.0, 0.0)).unwrap();
    let e = o4.load(&path).unwrap_err().to_string();
    assert!(e.contains("m.w") && e.contains("shape"), "{e}");
    let dt = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    let mut o5 = AdamW::new(
        vec![("c".into(), Var::from_tensor(&dt).unwrap())],
        cfg(0.0, 0.0),
    )
    .unwrap();
    let e = o5.load(&path).unwrap_err().to_string();
    assert!(e.contains("m.c") && e.contains("missing"), "{e}");
}

/// The in-place CPU update equals the tensor-operation path over several
/// steps, with weight decay, clipping and a loss scale.
#[test]
fn in_place_update_equals_the_tensor_path() {
    let dev = Device::Cpu;
    let run = |fused: bool| -> Vec<Vec<f32>> {
        spectok_model::fused::set_enabled(fused);
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (64, 48), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 48, &dev).unwrap()).unwrap();
        // Same start for both runs.
        w.set(
            &Tensor::arange(0f32, 64.0 * 48.0, &dev)
                .unwrap()
                .reshape((64, 48))
                .unwrap()
                .affine(1e-3, -1.0)
                .unwrap(),
        )
        .unwrap();
        b.set(
            &Tensor::arange(0f32, 48.0, &dev)
                .unwrap()
                .affine(0.1, -2.0)
                .unwrap(),
        )
        .unwrap();
        let mut opt = AdamW::new(
            vec![("w".into(), w.clone()), ("b".into(), b.clone())],
            cfg(0.05, 0.5),
        )
        .unwrap();
        for step in 0..5 {
            let cw: Vec<f32> = (0..64 * 48)
                .map(|i| ((i * 7 + step * 13) % 17) as f32 - 8.0)
                .collect();
            let cb: Vec<f32> = (0..48)
                .map(|i| ((i * 5 + step) % 11) as f32 * 0.3)
                .collect();
            let g = grads(&w, &cw, &b, &cb);
            let stats = opt.step_scaled(&g, 0.01, 0.5).unwrap();
            assert!(stats.applied && stats.clip_scale < 1.0);
        }
        let state = opt.state_tensors().unwrap();
        spectok_model::fused::set_enabled(true);
        vec![
            values(&w),
            values(&b),
            state["m.w"].flatten_all().unwrap().to_vec1().unwrap(),
            state["v.b"].flatten_all().unwrap().to_vec1().unwrap(),
        ]
    };
    let (fused, tensors) = (run(true), run(false));
    for (a, b) in fused.iter().zip(&tensors) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
}
