//! Seeded initialisation, and saving/loading a model as a directory holding
//! `model.safetensors` (the weights, named like the module tree) and
//! `config.json` (the [`Config`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// File name of the weights inside a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the config inside a checkpoint directory.
pub const CONFIG_FILE: &str = "config.json";

/// A [`VarMap`] backend whose new variables are drawn from a ChaCha8
/// stream seeded by `(seed, variable name)`, so initial weights do not
/// depend on creation order, thread or device (candle cannot seed its CPU
/// generator).
struct SeededInit {
    varmap: VarMap,
    seed: u64,
}

/// FNV-1a hash of a name, stable across runs and platforms.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn normal(rng: &mut ChaCha8Rng, mean: f64, std: f64) -> f32 {
    // Box-Muller; 1 - u keeps the logarithm finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (mean + std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

fn init_values(init: Init, shape: &Shape, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = shape.elem_count();
    let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| -> Vec<f32> {
        (0..n)
            .map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32)
            .collect()
    };
    match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Uniform { lo, up } => uniform(rng, lo, up),
        Init::Randn { mean, stdev } => (0..n).map(|_| normal(rng, mean, stdev)).collect(),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(rng, -bound, bound)
                }
                NormalOrUniform::Normal => (0..n).map(|_| normal(rng, 0.0, std)).collect(),
            }
        }
    }
}

impl SimpleBackend for SeededInit {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        if let Some(var) = data.get(name) {
            if var.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", var.shape());
            }
            return Ok(var.as_tensor().clone());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ fnv1a(name));
        let values = init_values(h, &s, &mut rng);
        let var = Var::from_tensor(&Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?)?;
        let tensor = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("seeded initialisation needs a shape for `{name}`")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// A [`VarBuilder`] that creates missing variables in `varmap` with
/// initial values determined by `seed` and each variable's name.
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend = SeededInit {
        varmap: varmap.clone(),
        seed,
    };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}

impl Tokenizer {
    /// A freshly initialised model and the [`VarMap`] holding its trainable
    /// weights; the same `seed` gives the same weights.
    pub fn init(cfg: &Config, device: &Device, dtype: DType, seed: u64) -> Result<(Self, VarMap)> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, dtype, device);
        let model = Tokenizer::new(cfg, vb)?;
        Ok((model, varmap))
    }

    /// Writes `dir/model.safetensors` (every variable of `varmap`, in its
    /// dtype) and `dir/config.json`, creating `dir` if needed.
    pub fn save(&self, varmap: &VarMap, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::checkpoint(dir, e))?;
        let weights = dir.join(WEIGHTS_FILE);
        varmap
            .save(&weights)
            .map_err(|e| Error::checkpoint(&weights, e))?;
        let config = dir.join(CONFIG_FILE);
        std::fs::write(&config, self.config().to_json() + "\n")
            .map_err(|e| Error::checkpoint(&config, e))?;
        Ok(())
    }

    /// Loads a model saved by [`Tokenizer::save`] onto `device`, converting
    /// the weights to `dtype` (bit-exact when it is the saved dtype). Every
    /// weight the config needs must be present and no other.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<(Self, VarMap)> {
        let config = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config).map_err(|e| Error::checkpoint(&config, e))?;
        let cfg = Config::from_json(&text).map_err(|e| Error::checkpoint(&config, e))?;
        let (model, varmap) = Tokenizer::init(&cfg, device, dtype, 0)?;
        let weights = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&weights, device)
            .map_err(|e| Error::checkpoint(&weights, e))?;
        {
            let data = varmap
                .data()
                .lock()
                .map_err(|_| Error::checkpoint(&weights, "variable map lock poisoned"))?;
            let mut names: Vec<&String> = data.keys().collect();
            names.sort();
            for name in names {
                let var = &data[name];
                let t = tensors.get(name).ok_or_else(|| {
                    Error::checkpoint(&weights, format!("missing tensor `{name}`"))
                })?;
                if t.shape() != var.shape() {
                    return Err(Error::checkpoint(
                        &weights,
                        format!(
                            "tensor `{name}` has shape {:?}, the config needs {:?}",
                            t.dims(),
                            var.dims()
                        ),
                    ));
                }
                var.set(&t.to_dtype(dtype)?)
                    .map_err(|e| Error::checkpoint(&weights, format!("tensor `{name}`: {e}")))?;
            }
            let known: HashSet<&String> = data.keys().collect();
            let mut extra: Vec<&String> = tensors.keys().filter(|k| !known.contains(k)).collect();
            extra.sort();
            if let Some(name) = extra.first() {
                return Err(Error::checkpoint(
                    &weights,
                    format!("unexpected tensor `{name}` (not part of this config's model)"),
                ));
            }
        }
        Ok((model, varmap))
    }

    /// Loads a model saved by [`Tokenizer::save`] for inference: built
    /// straight on the file's tensors (converted to `dtype`), with no
    /// random initialisation first (which was ~10 % of embedding a few
    /// files). The weights are plain tensors, not variables: candle then
    /// records no operation for backpropagation, so each activation of a
    /// forward pass is freed as soon as it is used (with variables, all of
    /// them stay alive until the output is dropped — gigabytes for long
    /// spectra). Linear weights are stored as `Wᵀ` (see
    /// [`Tokenizer::for_inference`]). The same checks as
    /// [`Tokenizer::load`]: every weight present with its shape, no other
    /// tensor.
    pub fn load_frozen(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config).map_err(|e| Error::checkpoint(&config, e))?;
        let cfg = Config::from_json(&text).map_err(|e| Error::checkpoint(&config, e))?;
        let weights = dir.join(WEIGHTS_FILE);
        let tensors = candle_core::safetensors::load(&weights, device)
            .map_err(|e| Error::checkpoint(&weights, e))?;
        let checked = Arc::new(Checked {
            tensors,
            used: Mutex::new(HashSet::new()),
        });
        let backend: Box<dyn SimpleBackend> = Box::new(Shared(checked.clone()));
        let vb = VarBuilder::from_backend(backend, dtype, device.clone());
        let model = Tokenizer::new(&cfg, vb).map_err(|e| Error::checkpoint(&weights, e))?;
        let used = checked.used.lock().unwrap_or_else(|p| p.into_inner());
        let mut extra: Vec<&String> = checked
            .tensors
            .keys()
            .filter(|k| !used.contains(*k))
            .collect();
        extra.sort();
        if let Some(name) = extra.first() {
            return Err(Error::checkpoint(
                &weights,
                format!("unexpected tensor `{name}` (not part of this config's model)"),
            ));
        }
        model.for_inference()
    }
}

/// A checkpoint's tensors handed to a model as it is built: each checked
/// (present, of the shape the config needs) and recorded as used.
struct Checked {
    tensors: HashMap<String, Tensor>,
    used: Mutex<HashSet<String>>,
}

impl Checked {
    fn take(&self, name: &str, shape: Option<&Shape>, dtype: DType) -> candle_core::Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor `{name}`")))?;
        if let Some(shape) = shape {
            if t.shape() != shape {
                return Err(candle_core::Error::Msg(format!(
                    "tensor `{name}` has shape {:?}, the config needs {:?}",
                    t.dims(),
                    shape.dims()
                )));
            }
        }
        self.used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string());
        t.to_dtype(dtype)
    }
}

/// [`Checked`] shared between the builder and the loader.
struct Shared(Arc<Checked>);

impl SimpleBackend for Shared {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        _: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.take(name, Some(&s), dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        self.0.take(name, None, dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensors.contains_key(name)
    }
}
