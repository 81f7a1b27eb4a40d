//! Embedding and reconstructing survey files with a trained tokenizer.
//!
//! # From a run directory to a model ([`EmbedModel::load`])
//!
//! `RUN_DIR` may be a run directory (the `best` checkpoint is used when
//! there is one, else the newest `step-*`) or a checkpoint directory
//! itself (anything holding `model.safetensors` and `config.json`). The
//! data preparation (mask rules, transform, weight clip, gap rule) is the
//! run's own, so inputs are prepared exactly as in training: it is read
//! from the checkpoint's `train_config.json`, else from the run's
//! `config.json`, else (a bare model directory) the defaults with the
//! model's patch size are used and [`EmbedModel::prepare_source`] is
//! `None`. The model is identified by the SHA-256 of its
//! `model.safetensors`, which every output records. Nothing in the run
//! directory is written or removed.
//!
//! # The embedding pipeline ([`embed`])
//!
//! - **Planning**: the inputs are planned by the io crate (files,
//!   directories, globs, GALAH CCD groups, DESI redrock pairing, MMU HDF5
//!   and spectok shards, all auto-detected). Inputs that cannot be read
//!   become failures of stage `input`.
//! - **Sharding** (`--shard i/n`, [`ShardPart`]): the units' spectra are
//!   numbered in plan order from their header counts
//!   ([`spectok_io::count_unit`]; a unit that cannot be counted counts as
//!   one). Position `p` of `N` belongs to part `⌊p·n/N⌋`, so the parts are
//!   contiguous, disjoint, cover everything and differ in size by at most
//!   one spectrum (as counted from the headers); a spectrum beyond its unit's count (a header that
//!   undercounts) belongs with its unit's last position, and a unit that
//!   cannot be opened is reported by the part owning its first position.
//!   Joining the parts in part order ([`spectok_io::embeddings::merge`])
//!   gives exactly the rows a single run writes.
//! - **Reading**: `readers` background threads open the units (reader `r`
//!   reads the part's units `r, r+R, …`), read and prepare each spectrum
//!   with the run's [`PrepareConfig`], and pass them down bounded queues of
//!   `queue` spectra; the main thread takes units in order, so the result
//!   does not depend on thread timing.
//! - **Batching**: spectra are pooled (`pool_size`), sorted by patch count
//!   (length bucketing) and cut into batches of `batch_size` spectra, or
//!   of at most `max_tokens` patch slots; each batch is encoded once.
//! - **Writing**: the results of a pool are put back in input order before
//!   they are written, so the output's rows follow the inputs whatever
//!   the batch size; failures (unreadable files or spectra, rejected
//!   spectra, non-finite results) are written to the file's `failed`
//!   group with their reason, reported to the observer and counted in the
//!   [`EmbedSummary`] — never dropped.
//!
//! A spectrum's embedding does not depend on the batch it is in (padding
//! and other spectra are masked out of attention), so batch size and
//! input order change it by float rounding only.
//!
//! Memory is bounded by the pool, the reader queues and one batch: the
//! model runs on detached weights, so no autograd graph keeps a forward
//! pass's activations alive, and `max_tokens` bounds a batch's attention
//! matrices whatever the spectra's lengths.
//!
//! # Reconstruction ([`reconstruct`])
//!
//! Each spectrum is encoded and decoded onto its own grid (the training
//! case: the patches it was cut into) or onto a [`NativeGrid`]: a survey's
//! standard grid ([`NativeGrid::survey`]) or the grid of a file's first
//! spectrum ([`NativeGrid::from_file`]). Target arms are cut into patches
//! separately, so no patch straddles an arm boundary. The reconstruction is
//! returned to the input's flux units (inverse transform, times the
//! spectrum's scale).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::Instant;

use candle_core::{DType, Device};
use sha2::{Digest, Sha256};
use spectok_data::{
    plan_batches, prepare, try_collate, BatchSize, PrepareConfig, PreparedSpectrum, PAD_PIXEL,
};
use spectok_io::embeddings::{
    EmbeddingRecord, EmbeddingsMeta, EmbeddingsWriter, Failure, FailureStage, ReconstructionRecord,
    ReconstructionWriter, RunInfo, ShardPart, Tokens,
};
use spectok_io::{
    count_unit, plan_inputs, read_unit, Format, InputUnit, Medium, Segment, Spectrum,
};
use spectok_model::{Tokenizer, WavelengthGrid, WEIGHTS_FILE};

use crate::checkpoint::{parse_step_name, BEST, CHECKPOINTS_DIR, TRAIN_CONFIG_FILE};
use crate::error::{Error, Result};
use crate::trainer::RUN_CONFIG_FILE;

/// Failures kept in memory for [`EmbedSummary::failures`]; the output file
/// holds all of them.
pub const SUMMARY_FAILURES: usize = 1000;

/// Plans with at most this many units are counted from their headers (for
/// the progress total) even when the run is not sharded.
pub const COUNT_LIMIT: usize = 4096;

fn io_err(e: spectok_io::Error) -> Error {
    Error::Data(spectok_data::Error::Io(e))
}

// ---------------------------------------------------------------------------
// The model and its run
// ---------------------------------------------------------------------------

/// A trained tokenizer ready to embed, with the preparation of its run and
/// its identity.
pub struct EmbedModel {
    /// The model, in inference mode.
    pub model: Tokenizer,
    /// The checkpoint directory the weights were loaded from.
    pub checkpoint: PathBuf,
    /// SHA-256 (lower-case hex) of the checkpoint's `model.safetensors`.
    pub sha256: String,
    /// How spectra are prepared (the run's own settings).
    pub prepare: PrepareConfig,
    /// The file `prepare` was read from; `None` when defaults were used.
    pub prepare_source: Option<PathBuf>,
}

/// The checkpoint directory `path` designates: `path` itself when it holds
/// the weights, else the `best` checkpoint of the run directory `path`
/// (or of `path/checkpoints`), else its newest step checkpoint. Reads
/// only; never creates or removes anything.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf> {
    if path.join(WEIGHTS_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let root = if path.file_name().is_some_and(|n| n == CHECKPOINTS_DIR) {
        path.to_path_buf()
    } else {
        path.join(CHECKPOINTS_DIR)
    };
    if !root.is_dir() {
        return Err(Error::checkpoint(
            path,
            format!(
                "neither a checkpoint (no {WEIGHTS_FILE}) nor a run directory (no {CHECKPOINTS_DIR}/)"
            ),
        ));
    }
    let best = root.join(BEST);
    if best.join(WEIGHTS_FILE).is_file() {
        return Ok(best);
    }
    let mut steps = Vec::new();
    for entry in std::fs::read_dir(&root).map_err(|e| Error::file(&root, e))? {
        let entry = entry.map_err(|e| Error::file(&root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = parse_step_name(&name) {
            if entry.path().join(WEIGHTS_FILE).is_file() {
                steps.push((step, entry.path()));
            }
        }
    }
    steps.sort();
    steps
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| Error::checkpoint(path, "the run directory has no checkpoint yet"))
}

/// SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::file(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::file(path, e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The `data.prepare` section of a training config file, if it has one.
fn prepare_from(path: &Path, patch_size: usize) -> Result<Option<PrepareConfig>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::file(path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(path, format!("not JSON: {e}")))?;
    let Some(section) = value.pointer("/data/prepare") else {
        return Ok(None);
    };
    let mut cfg: PrepareConfig = serde_json::from_value(section.clone())
        .map_err(|e| Error::checkpoint(path, format!("data.prepare: {e}")))?;
    if section.get("patch_size").is_none() {
        cfg.patch_size = patch_size;
    }
    if cfg.patch_size != patch_size {
        return Err(Error::checkpoint(
            path,
            format!(
                "data.prepare.patch_size {} differs from the model's {patch_size}",
                cfg.patch_size
            ),
        ));
    }
    cfg.validate()
        .map_err(|e| Error::checkpoint(path, format!("data.prepare: {e}")))?;
    Ok(Some(cfg))
}

impl EmbedModel {
    /// Loads the model `path` designates ([`resolve_checkpoint`]) onto
    /// `device` in `dtype` (default: f32 on CPU, bf16 on GPU) with its
    /// run's preparation config.
    pub fn load(path: &Path, device: &Device, dtype: Option<DType>) -> Result<EmbedModel> {
        let dir = resolve_checkpoint(path)?;
        let dtype = dtype.unwrap_or_else(|| spectok_model::default_dtype(device));
        let model = Tokenizer::load_frozen(&dir, device, dtype)?;
        let sha256 = sha256_file(&dir.join(WEIGHTS_FILE))?;
        let p = model.config().patch_size;
        let mut candidates = vec![dir.join(TRAIN_CONFIG_FILE)];
        // RUN/checkpoints/NAME → RUN/config.json
        if let Some(run) = dir.parent().and_then(|c| c.parent()) {
            candidates.push(run.join(RUN_CONFIG_FILE));
        }
        let mut prepare = None;
        for c in candidates {
            if let Some(cfg) = prepare_from(&c, p)? {
                prepare = Some((cfg, c));
                break;
            }
        }
        let (prepare, prepare_source) = match prepare {
            Some((cfg, src)) => (cfg, Some(src)),
            None => (
                PrepareConfig {
                    patch_size: p,
                    ..PrepareConfig::default()
                },
                None,
            ),
        };
        Ok(EmbedModel {
            model,
            checkpoint: dir,
            sha256,
            prepare,
            prepare_source,
        })
    }

    /// The embedding width D.
    pub fn dim(&self) -> usize {
        self.model.config().d_model
    }

    /// What outputs record about the model and the inputs.
    pub fn run_info(&self, inputs: &[String]) -> RunInfo {
        RunInfo {
            checkpoint: self.checkpoint.display().to_string(),
            checkpoint_sha256: self.sha256.clone(),
            model_config: self.model.config().to_json(),
            prepare_config: serde_json::to_string_pretty(&self.prepare).unwrap_or_default(),
            inputs: inputs.to_vec(),
            spectok_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

// ---------------------------------------------------------------------------
// Options, events, summary
// ---------------------------------------------------------------------------

/// Settings of [`embed`] (and, where they apply, of [`reconstruct`]).
#[derive(Clone, Debug, PartialEq)]
pub struct EmbedOptions {
    /// Read every input as this format instead of detecting it.
    pub format: Option<Format>,
    /// Spectra per batch (default 64).
    pub batch_size: usize,
    /// When set, batches also hold at most this many patch slots
    /// (`spectra × longest`), so long spectra come in smaller batches and
    /// attention memory stays bounded (default 8192; `None`: no limit).
    pub max_tokens: Option<usize>,
    /// Spectra pooled for length bucketing (default 1024).
    pub pool_size: usize,
    /// Background reading threads (default 2).
    pub readers: usize,
    /// Prepared spectra each reader may hold ready (default 64).
    pub queue: usize,
    /// Store each spectrum's token sequence (embed only).
    pub tokens: bool,
    /// Which part of the inputs to process (default: all).
    pub part: ShardPart,
    /// Replace an existing output file.
    pub overwrite: bool,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions {
            format: None,
            batch_size: 64,
            max_tokens: Some(8192),
            pool_size: 1024,
            readers: 2,
            queue: 64,
            tokens: false,
            part: ShardPart::WHOLE,
            overwrite: false,
        }
    }
}

impl EmbedOptions {
    fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("batch_size", self.batch_size),
            ("pool_size", self.pool_size),
            ("readers", self.readers),
            ("queue", self.queue),
        ] {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        if self.max_tokens == Some(0) {
            return Err(Error::config("max_tokens", "must be at least 1"));
        }
        if self.part.count == 0 || self.part.index >= self.part.count {
            return Err(Error::config(
                "shard",
                format!(
                    "part {} of {} does not exist",
                    self.part.index, self.part.count
                ),
            ));
        }
        Ok(())
    }

    fn batch(&self) -> BatchSize {
        match self.max_tokens {
            Some(max_tokens) => BatchSize::Tokens {
                max_tokens,
                max_spectra: self.batch_size,
            },
            None => BatchSize::Fixed {
                spectra: self.batch_size,
            },
        }
    }
}

/// What a run is about to do.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbedStart {
    /// The part of the inputs processed.
    pub part: ShardPart,
    /// Input units (files, CCD groups) planned in all.
    pub planned_units: usize,
    /// Units this part reads.
    pub units: usize,
    /// Spectra expected in this part (from headers), when counted.
    pub expected: Option<u64>,
    /// Inputs that cannot be read (reported by part 0 only).
    pub input_problems: usize,
}

/// Progress after a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbedProgress {
    /// Spectra embedded (or reconstructed) so far.
    pub done: u64,
    /// Spectra and inputs failed so far.
    pub failed: u64,
    /// Spectra expected, when counted.
    pub expected: Option<u64>,
    /// Seconds since the start.
    pub elapsed_s: f64,
    /// `done / elapsed_s`.
    pub spectra_per_s: f64,
}

/// Callbacks of a run; every method has an empty default.
pub trait EmbedObserver {
    /// Inputs are planned and reading starts.
    fn on_start(&mut self, _ev: &EmbedStart) {}
    /// A batch was processed.
    fn on_progress(&mut self, _ev: &EmbedProgress) {}
    /// A spectrum or input could not be processed.
    fn on_failure(&mut self, _f: &Failure) {}
}

/// An observer that ignores everything.
impl EmbedObserver for () {}

/// What a run did.
#[derive(Clone, Debug, PartialEq)]
pub struct EmbedSummary {
    /// The file written.
    pub output: PathBuf,
    /// The part processed.
    pub part: ShardPart,
    /// Units this part read.
    pub units: usize,
    /// Spectra written.
    pub done: usize,
    /// Tokens written (embed with tokens).
    pub tokens: usize,
    /// Failures in all (all of them are in the output file).
    pub failed: usize,
    /// Failures by stage.
    pub failed_by_stage: BTreeMap<FailureStage, usize>,
    /// The first [`SUMMARY_FAILURES`] failures.
    pub failures: Vec<Failure>,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// `done / elapsed_s`.
    pub spectra_per_s: f64,
}

// ---------------------------------------------------------------------------
// Planning and sharding
// ---------------------------------------------------------------------------

/// Which items of which units a part owns (see the module docs).
struct Ownership {
    part: ShardPart,
    /// Per planned unit: first position and number of positions (≥ 1).
    spans: Vec<(u64, u64)>,
    total: u64,
}

impl Ownership {
    fn new(units: &[InputUnit], part: ShardPart, count: bool) -> (Ownership, Option<u64>) {
        let mut spans = Vec::with_capacity(units.len());
        let mut total = 0u64;
        let mut counted = true;
        for u in units {
            let n = if count || !part.is_whole() {
                count_unit(u).unwrap_or(0) as u64
            } else {
                counted = false;
                1
            };
            spans.push((total, n.max(1)));
            total += n.max(1);
        }
        let own = Ownership { part, spans, total };
        let expected = (counted && (count || !part.is_whole())).then(|| {
            let n = part.count as u128;
            let t = total as u128;
            let lo = (part.index as u128 * t).div_ceil(n);
            let hi = ((part.index as u128 + 1) * t).div_ceil(n);
            (hi - lo) as u64
        });
        (own, expected)
    }

    fn owner(&self, pos: u64) -> usize {
        if self.total == 0 {
            return 0;
        }
        let p = pos.min(self.total - 1) as u128;
        ((p * self.part.count as u128) / self.total as u128) as usize
    }

    /// Whether item `k` of unit `u` (or the unit itself, for `k = 0`) is
    /// this part's.
    fn owns(&self, u: usize, k: usize) -> bool {
        if self.part.is_whole() {
            return true;
        }
        let Some(&(start, len)) = self.spans.get(u) else {
            return false;
        };
        self.owner(start + (k as u64).min(len - 1)) == self.part.index
    }

    /// Whether any item of unit `u` is this part's.
    fn touches(&self, u: usize) -> bool {
        if self.part.is_whole() {
            return true;
        }
        let Some(&(start, len)) = self.spans.get(u) else {
            return false;
        };
        let (a, b) = (self.owner(start), self.owner(start + len - 1));
        a <= self.part.index && self.part.index <= b
    }
}

// ---------------------------------------------------------------------------
// Background reading
// ---------------------------------------------------------------------------

/// Position of an item: (unit number in the plan, index in its stream).
type Seq = (usize, usize);

/// A prepared spectrum with, for reconstruction, the spectrum as read.
struct Ready {
    seq: Seq,
    prep: PreparedSpectrum,
    raw: Option<Spectrum>,
}

enum Msg {
    Ready(Box<Ready>),
    Failed(Seq, Failure),
    EndUnit,
}

struct ReaderJob<'a> {
    units: Vec<(usize, &'a InputUnit)>,
    own: &'a Ownership,
    prepare: &'a PrepareConfig,
    keep_raw: bool,
    tx: SyncSender<Msg>,
}

/// Reads, filters and prepares the job's units in order; stops when the
/// receiver is gone.
fn read_job(job: ReaderJob<'_>) {
    for &(u, unit) in &job.units {
        let alive = read_one_unit(u, unit, &job);
        if !alive || job.tx.send(Msg::EndUnit).is_err() {
            return;
        }
    }
}

fn read_one_unit(u: usize, unit: &InputUnit, job: &ReaderJob<'_>) -> bool {
    let stream = match read_unit(unit) {
        Ok(s) => s,
        Err(e) => {
            if job.own.owns(u, 0) {
                let f = Failure::from_error(FailureStage::Open, &e);
                return job.tx.send(Msg::Failed((u, 0), f)).is_ok();
            }
            return true;
        }
    };
    for (k, item) in stream.enumerate() {
        if !job.own.owns(u, k) {
            continue;
        }
        let msg = match item {
            Err(e) => Msg::Failed((u, k), Failure::from_error(FailureStage::Read, &e)),
            Ok(s) => match prepare(&s, job.prepare) {
                Ok(prep) => Msg::Ready(Box::new(Ready {
                    seq: (u, k),
                    prep,
                    raw: job.keep_raw.then_some(s),
                })),
                Err(e) => {
                    let reason = match e.reject_reason() {
                        Some(r) => format!("rejected: {r}"),
                        None => e.to_string(),
                    };
                    Msg::Failed(
                        (u, k),
                        Failure::of_spectrum(FailureStage::Prepare, &s.id, &s.source, reason),
                    )
                }
            },
        };
        if job.tx.send(msg).is_err() {
            return false;
        }
    }
    true
}

/// A pool of prepared spectra and the failures met among them, in input
/// order.
#[derive(Default)]
struct Pool {
    ready: Vec<Ready>,
    failed: Vec<(Seq, Failure)>,
}

/// What the pipeline's consumer does: it owns the output file and the
/// observer, and turns each pool into records.
trait PoolSink {
    /// The run's observer.
    fn observer(&mut self) -> &mut dyn EmbedObserver;
    /// Writes a failure to the output file.
    fn write_failure(&mut self, f: &Failure) -> Result<()>;
    /// Processes a pool and writes its results in input order.
    fn process(&mut self, pool: Pool, counters: &mut Counters) -> Result<()>;
}

/// Running counts shared by the sinks.
struct Counters {
    start: Instant,
    done: u64,
    failed: u64,
    expected: Option<u64>,
    failures: Vec<Failure>,
    by_stage: BTreeMap<FailureStage, usize>,
    tokens: usize,
}

impl Counters {
    fn progress(&self) -> EmbedProgress {
        let elapsed_s = self.start.elapsed().as_secs_f64();
        EmbedProgress {
            done: self.done,
            failed: self.failed,
            expected: self.expected,
            elapsed_s,
            spectra_per_s: self.done as f64 / elapsed_s.max(1e-9),
        }
    }

    fn fail(&mut self, f: &Failure, observer: &mut dyn EmbedObserver) {
        self.failed += 1;
        *self.by_stage.entry(f.stage).or_default() += 1;
        if self.failures.len() < SUMMARY_FAILURES {
            self.failures.push(f.clone());
        }
        observer.on_failure(f);
    }
}

/// Plans the inputs, reads this part's units on background threads and
/// hands pools of prepared spectra (in input order) to `sink`. Input
/// problems are written first (by part 0 only). Returns the number of
/// units read.
fn run_pipeline(
    inputs: &[String],
    opts: &EmbedOptions,
    prepare_cfg: &PrepareConfig,
    keep_raw: bool,
    counters: &mut Counters,
    sink: &mut dyn PoolSink,
) -> Result<usize> {
    let plan = plan_inputs(inputs, opts.format);
    let report_inputs = opts.part.index == 0;
    let (own, expected) = Ownership::new(&plan.units, opts.part, plan.units.len() <= COUNT_LIMIT);
    counters.expected = expected;
    let mine: Vec<(usize, &InputUnit)> = plan
        .units
        .iter()
        .enumerate()
        .filter(|(u, _)| own.touches(*u))
        .collect();
    sink.observer().on_start(&EmbedStart {
        part: opts.part,
        planned_units: plan.units.len(),
        units: mine.len(),
        expected,
        input_problems: if report_inputs {
            plan.problems.len()
        } else {
            0
        },
    });
    if report_inputs {
        for e in &plan.problems {
            let f = Failure::from_error(FailureStage::Input, e);
            counters.fail(&f, sink.observer());
            sink.write_failure(&f)?;
        }
    }
    if mine.is_empty() {
        return Ok(0);
    }
    let n_readers = opts.readers.min(mine.len()).max(1);
    let n_units = mine.len();
    std::thread::scope(|scope| -> Result<usize> {
        let mut rxs: Vec<Receiver<Msg>> = Vec::with_capacity(n_readers);
        let mut handles = Vec::with_capacity(n_readers);
        for r in 0..n_readers {
            let (tx, rx) = sync_channel(opts.queue);
            rxs.push(rx);
            let job = ReaderJob {
                units: mine.iter().skip(r).step_by(n_readers).copied().collect(),
                own: &own,
                prepare: prepare_cfg,
                keep_raw,
                tx,
            };
            handles.push(scope.spawn(move || read_job(job)));
        }
        let consumed = (|| -> Result<usize> {
            let mut pool = Pool::default();
            for j in 0..n_units {
                let rx = &rxs[j % n_readers];
                // A closed queue before the unit's end means its reader
                // panicked; that is reported below.
                while let Ok(msg) = rx.recv() {
                    match msg {
                        Msg::EndUnit => break,
                        Msg::Ready(r) => pool.ready.push(*r),
                        Msg::Failed(seq, f) => pool.failed.push((seq, f)),
                    }
                    if pool.ready.len() >= opts.pool_size {
                        sink.process(std::mem::take(&mut pool), counters)?;
                    }
                }
            }
            if !pool.ready.is_empty() || !pool.failed.is_empty() {
                sink.process(pool, counters)?;
            }
            Ok(n_units)
        })();
        // Readers blocked on a full queue stop once the queues are gone.
        drop(rxs);
        for h in handles {
            if h.join().is_err() {
                return Err(Error::Data(spectok_data::Error::Source {
                    name: "reader".into(),
                    reason: "a reading thread panicked; the output is not written".into(),
                }));
            }
        }
        consumed
    })
}

/// Cuts a pool into length-bucketed batches: index lists into `ready`.
fn bucket(ready: &[Ready], size: BatchSize) -> Vec<Vec<usize>> {
    let lengths: Vec<usize> = ready.iter().map(|r| r.prep.n_patches()).collect();
    let order: Vec<usize> = (0..ready.len()).collect();
    plan_batches(&lengths, &order, size, true)
}

// ---------------------------------------------------------------------------
// Embedding
// ---------------------------------------------------------------------------

struct EmbedSink<'a, 'o> {
    model: &'a EmbedModel,
    size: BatchSize,
    tokens: bool,
    writer: EmbeddingsWriter,
    observer: &'o mut dyn EmbedObserver,
}

enum Embedded {
    Done(Box<EmbeddingRecord>),
    Failed(Failure),
}

impl EmbedSink<'_, '_> {
    /// Encodes one batch of prepared spectra.
    fn encode(&self, items: Vec<Ready>) -> Result<Vec<(Seq, Embedded)>> {
        let seqs: Vec<Seq> = items.iter().map(|r| r.seq).collect();
        let preps: Vec<PreparedSpectrum> = items.into_iter().map(|r| r.prep).collect();
        let batch = try_collate(&preps, 0)?;
        let enc = self.model.model.encode(&batch, false)?;
        let d = self.model.dim();
        let pooled = enc.pooled.to_dtype(DType::F32)?.to_vec2::<f32>()?;
        let tok = if self.tokens {
            Some((
                enc.tokens.to_dtype(DType::F32)?.to_vec3::<f32>()?,
                enc.token_mask.to_vec2::<u8>()?,
                enc.scale_token.to_dtype(DType::F32)?.to_vec2::<f32>()?,
                match &enc.token_ids {
                    Some(ids) => Some(ids.to_vec2::<u32>()?),
                    None => None,
                },
            ))
        } else {
            None
        };
        let t_max = batch.max_patches;
        let mut out = Vec::with_capacity(preps.len());
        for (b, (prep, seq)) in preps.into_iter().zip(seqs).enumerate() {
            let embedding = pooled.get(b).cloned().unwrap_or_default();
            let mut finite = embedding.len() == d && embedding.iter().all(|v| v.is_finite());
            let tokens = match &tok {
                None => None,
                Some((values, mask, scale, ids)) => {
                    let mut t = Tokens {
                        scale_token: scale.get(b).cloned().unwrap_or_default(),
                        values: Vec::new(),
                        center: Vec::new(),
                        ids: ids.as_ref().map(|_| Vec::new()),
                    };
                    let (rows, m) = (values.get(b), mask.get(b));
                    for i in 0..prep.n_patches().min(t_max) {
                        if m.and_then(|m| m.get(i)).copied() != Some(1) {
                            continue;
                        }
                        let v = rows
                            .and_then(|r| r.get(i))
                            .map(Vec::as_slice)
                            .unwrap_or(&[]);
                        t.values.extend_from_slice(v);
                        t.center
                            .push(prep.patch_center.get(i).copied().unwrap_or(f64::NAN));
                        if let (Some(out), Some(ids)) = (t.ids.as_mut(), ids) {
                            out.push(ids.get(b).and_then(|r| r.get(i)).copied().unwrap_or(0));
                        }
                    }
                    finite &= t.values.len() == t.center.len() * d
                        && t.scale_token.len() == d
                        && t.values.iter().chain(&t.scale_token).all(|v| v.is_finite());
                    Some(t)
                }
            };
            let outcome = if finite {
                Embedded::Done(Box::new(EmbeddingRecord {
                    patches: prep.n_patches() as u32,
                    valid_patches: prep.n_valid_patches() as u32,
                    object_id: prep.id,
                    survey: prep.survey,
                    source: prep.source,
                    labels: prep.labels,
                    scale: prep.scale,
                    embedding,
                    tokens,
                }))
            } else {
                Embedded::Failed(Failure::of_spectrum(
                    FailureStage::Encode,
                    &prep.id,
                    &prep.source,
                    "the model gave a non-finite embedding or token (NaN or infinity)",
                ))
            };
            out.push((seq, outcome));
        }
        Ok(out)
    }
}

impl PoolSink for EmbedSink<'_, '_> {
    fn observer(&mut self) -> &mut dyn EmbedObserver {
        self.observer
    }

    fn write_failure(&mut self, f: &Failure) -> Result<()> {
        self.writer.fail(f).map_err(io_err)
    }

    fn process(&mut self, pool: Pool, c: &mut Counters) -> Result<()> {
        let plan = bucket(&pool.ready, self.size);
        let mut slots: Vec<Option<Ready>> = pool.ready.into_iter().map(Some).collect();
        let mut results: Vec<(Seq, Embedded)> = pool
            .failed
            .into_iter()
            .map(|(s, f)| (s, Embedded::Failed(f)))
            .collect();
        for idx in plan {
            let items: Vec<Ready> = idx
                .iter()
                .filter_map(|&i| slots.get_mut(i)?.take())
                .collect();
            for (seq, o) in self.encode(items)? {
                match &o {
                    Embedded::Done(r) => {
                        c.done += 1;
                        c.tokens += r.tokens.as_ref().map_or(0, |t| t.len());
                    }
                    Embedded::Failed(f) => c.fail(f, self.observer),
                }
                results.push((seq, o));
            }
            self.observer.on_progress(&c.progress());
        }
        results.sort_by_key(|(s, _)| *s);
        for (_, o) in results {
            match o {
                Embedded::Done(r) => self.writer.write(&r).map_err(io_err)?,
                Embedded::Failed(f) => {
                    // Read and prepare failures were not counted yet.
                    if f.stage != FailureStage::Encode {
                        c.fail(&f, self.observer);
                    }
                    self.writer.fail(&f).map_err(io_err)?;
                }
            }
        }
        self.observer.on_progress(&c.progress());
        Ok(())
    }
}

/// Embeds `inputs` with `m` into the embeddings file `output` (layout in
/// [`spectok_io::embeddings`]); see the module docs for the pipeline. The
/// file appears only when complete; an existing `output` is an error
/// unless `opts.overwrite`.
pub fn embed(
    m: &EmbedModel,
    inputs: &[String],
    output: &Path,
    opts: &EmbedOptions,
    observer: &mut dyn EmbedObserver,
) -> Result<EmbedSummary> {
    opts.validate()?;
    let meta = EmbeddingsMeta {
        run: m.run_info(inputs),
        dim: m.dim(),
        tokens: opts.tokens,
        token_ids: opts.tokens && m.model.fsq().is_some(),
        part: opts.part,
    };
    let writer = EmbeddingsWriter::create(output, &meta, opts.overwrite).map_err(io_err)?;
    let mut counters = new_counters();
    let mut sink = EmbedSink {
        model: m,
        size: opts.batch(),
        tokens: opts.tokens,
        writer,
        observer,
    };
    let units = run_pipeline(inputs, opts, &m.prepare, false, &mut counters, &mut sink)?;
    sink.writer.finish().map_err(io_err)?;
    Ok(finish_summary(counters, output, opts.part, units))
}

fn new_counters() -> Counters {
    Counters {
        start: Instant::now(),
        done: 0,
        failed: 0,
        expected: None,
        failures: Vec::new(),
        by_stage: BTreeMap::new(),
        tokens: 0,
    }
}

fn finish_summary(c: Counters, output: &Path, part: ShardPart, units: usize) -> EmbedSummary {
    let elapsed_s = c.start.elapsed().as_secs_f64();
    EmbedSummary {
        output: output.to_path_buf(),
        part,
        units,
        done: c.done as usize,
        tokens: c.tokens,
        failed: c.failed as usize,
        failed_by_stage: c.by_stage,
        failures: c.failures,
        elapsed_s,
        spectra_per_s: c.done as f64 / elapsed_s.max(1e-9),
    }
}

// ---------------------------------------------------------------------------
// Reconstruction
// ---------------------------------------------------------------------------

/// A wavelength grid to decode onto: one or more arms, each strictly
/// increasing, never mixed.
#[derive(Clone, Debug, PartialEq)]
pub struct NativeGrid {
    /// Survey name or file the grid comes from.
    pub name: String,
    /// Whether the wavelengths are in vacuum or air.
    pub medium: Medium,
    /// Arm/chip/CCD name and its wavelengths, Å.
    pub arms: Vec<(String, Vec<f64>)>,
}

/// Names accepted by [`NativeGrid::survey`].
pub const GRID_SURVEYS: [&str; 5] = ["sdss", "desi", "apogee", "galah", "lamost"];

/// `10^(k·step)` for k from `lo` to `hi` inclusive.
fn log_grid(lo: i64, hi: i64, step: f64) -> Vec<f64> {
    (lo..=hi).map(|k| 10f64.powf(k as f64 * step)).collect()
}

/// `start + step·i` for the `n` pixels from `start` to `end`.
fn linear_grid(start: f64, end: f64, step: f64) -> Vec<f64> {
    let n = ((end - start) / step).round() as usize + 1;
    (0..n).map(|i| start + step * i as f64).collect()
}

impl NativeGrid {
    /// A survey's standard grid:
    ///
    /// - `sdss`: log-linear, 1e-4 dex, 3600–10400 Å (the grid points
    ///   nearest each end: 3599.97–10399.2 Å, 4608 pixels), vacuum;
    /// - `desi`: linear 0.8 Å arms B 3600–5800 (2751 px), R 5760–7620
    ///   (2326 px), Z 7520–9824 Å (2881 px), vacuum;
    /// - `apogee`: the apStar grid `10^(4.179 + 6e-6·i)` restricted to the
    ///   three detectors (pixels 246–3273 `chip_c`, 3585–6079 `chip_b`,
    ///   6344–8334 `chip_a`, where aspcapStar spectra carry data; 7514
    ///   pixels), vacuum;
    /// - `galah`: the four HERMES CCDs, 4096 linear pixels each with the
    ///   start and step of the DR3 files (e.g. `210115000101001{1-4}.fits`:
    ///   4714.06 + 0.04595·i, 5648.73 + 0.05469·i, 6476.26 + 0.06316·i,
    ///   7584.11 + 0.07358·i Å), air;
    /// - `lamost` (or `lamostlrs`): log-linear, 1e-4 dex, 3700–9100 Å
    ///   (3699.98–9099.1 Å, 3909 pixels), vacuum.
    pub fn survey(name: &str) -> Option<NativeGrid> {
        let lower = name.trim().to_ascii_lowercase();
        let (name, medium, arms): (&str, Medium, Vec<(&str, Vec<f64>)>) = match lower.as_str() {
            "sdss" | "boss" => {
                let lo = (3600f64.log10() * 1e4).round() as i64;
                let hi = (10400f64.log10() * 1e4).round() as i64;
                (
                    "sdss",
                    Medium::Vacuum,
                    vec![("all", log_grid(lo, hi, 1e-4))],
                )
            }
            "desi" => (
                "desi",
                Medium::Vacuum,
                vec![
                    ("b", linear_grid(3600.0, 5800.0, 0.8)),
                    ("r", linear_grid(5760.0, 7620.0, 0.8)),
                    ("z", linear_grid(7520.0, 9824.0, 0.8)),
                ],
            ),
            "apogee" => {
                let full = |a: usize, b: usize| -> Vec<f64> {
                    (a..b)
                        .map(|i| 10f64.powf(4.179 + 6e-6 * i as f64))
                        .collect()
                };
                (
                    "apogee",
                    Medium::Vacuum,
                    vec![
                        ("chip_c", full(246, 3274)),
                        ("chip_b", full(3585, 6080)),
                        ("chip_a", full(6344, 8335)),
                    ],
                )
            }
            "galah" => {
                let ccd = |crval: f64, cdelt: f64| -> Vec<f64> {
                    (0..4096).map(|i| crval + cdelt * i as f64).collect()
                };
                (
                    "galah",
                    Medium::Air,
                    vec![
                        ("ccd1", ccd(4714.06147168741, 0.0459477822647381)),
                        ("ccd2", ccd(5648.72979285381, 0.054694006247085)),
                        ("ccd3", ccd(6476.2554264676, 0.0631602709388041)),
                        ("ccd4", ccd(7584.11378585031, 0.0735770697255711)),
                    ],
                )
            }
            "lamost" | "lamostlrs" => {
                let lo = (3700f64.log10() * 1e4).round() as i64;
                let hi = (9100f64.log10() * 1e4).round() as i64;
                (
                    "lamost",
                    Medium::Vacuum,
                    vec![("all", log_grid(lo, hi, 1e-4))],
                )
            }
            _ => return None,
        };
        Some(NativeGrid {
            name: name.to_string(),
            medium,
            arms: arms.into_iter().map(|(n, w)| (n.to_string(), w)).collect(),
        })
    }

    /// The grid of the first readable spectrum of `path` (its segments
    /// become the arms).
    pub fn from_file(path: &Path, format: Option<Format>) -> Result<NativeGrid> {
        let input = path.display().to_string();
        let plan = plan_inputs(std::slice::from_ref(&input), format);
        let mut first_problem = plan.problems.into_iter().next();
        for unit in &plan.units {
            let stream = match read_unit(unit) {
                Ok(s) => s,
                Err(e) => {
                    first_problem.get_or_insert(e);
                    continue;
                }
            };
            for item in stream {
                match item {
                    Ok(s) => return Ok(NativeGrid::of_spectrum(&s, &input)),
                    Err(e) => {
                        first_problem.get_or_insert(e);
                    }
                }
            }
        }
        Err(match first_problem {
            Some(e) => io_err(e),
            None => Error::file(path, "holds no spectrum to take a grid from"),
        })
    }

    /// The grid of a spectrum: its segments' wavelengths.
    pub fn of_spectrum(s: &Spectrum, name: &str) -> NativeGrid {
        NativeGrid {
            name: name.to_string(),
            medium: s.medium,
            arms: s
                .segments
                .iter()
                .map(|g| {
                    (
                        g.name.clone(),
                        s.wavelength.get(g.start..g.end).unwrap_or(&[]).to_vec(),
                    )
                })
                .collect(),
        }
    }

    /// Number of pixels over all arms.
    pub fn len(&self) -> usize {
        self.arms.iter().map(|(_, w)| w.len()).sum()
    }

    /// Whether the grid has no pixel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The grid's segments over the concatenated arms.
    pub fn segments(&self) -> Vec<Segment> {
        let mut start = 0;
        self.arms
            .iter()
            .map(|(n, w)| {
                let s = Segment {
                    name: n.clone(),
                    start,
                    end: start + w.len(),
                };
                start += w.len();
                s
            })
            .collect()
    }

    /// The concatenated wavelengths.
    pub fn wavelength(&self) -> Vec<f64> {
        self.arms
            .iter()
            .flat_map(|(_, w)| w.iter().copied())
            .collect()
    }

    /// Cuts each arm into patches of `p` pixels (a short tail repeats its
    /// last wavelength): the patch wavelengths and, per output pixel, its
    /// slot in them.
    fn patches(&self, p: usize) -> (Vec<f64>, Vec<usize>) {
        let mut wl = Vec::new();
        let mut slot = Vec::with_capacity(self.len());
        for (_, w) in &self.arms {
            for chunk in w.chunks(p) {
                let base = wl.len();
                slot.extend(base..base + chunk.len());
                wl.extend_from_slice(chunk);
                if let Some(&last) = chunk.last() {
                    wl.resize(base + p, last);
                }
            }
        }
        (wl, slot)
    }
}

/// Where [`reconstruct`] decodes to.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    /// Each spectrum's own grid.
    Own,
    /// One grid for every spectrum.
    Grid(NativeGrid),
}

impl Target {
    /// The name recorded in the output (`own`, or the grid's name).
    pub fn name(&self) -> &str {
        match self {
            Target::Own => "own",
            Target::Grid(g) => &g.name,
        }
    }
}

type Reconstructed = std::result::Result<ReconstructionRecord, Failure>;

struct ReconSink<'a, 'o> {
    model: &'a EmbedModel,
    size: BatchSize,
    target: &'a Target,
    writer: ReconstructionWriter,
    observer: &'o mut dyn EmbedObserver,
}

impl ReconSink<'_, '_> {
    fn decode(&self, items: Vec<Ready>) -> Result<Vec<(Seq, Reconstructed)>> {
        let mut preps = Vec::with_capacity(items.len());
        let mut rest = Vec::with_capacity(items.len());
        for r in items {
            preps.push(r.prep);
            rest.push((r.seq, r.raw));
        }
        let batch = try_collate(&preps, 0)?;
        let tok = &self.model.model;
        let enc = tok.encode(&batch, false)?;
        let p = batch.patch_size;
        let grid_slots = match self.target {
            Target::Own => None,
            Target::Grid(g) => Some(g.patches(p)),
        };
        let grid = match &grid_slots {
            None => WavelengthGrid::from_batch(&batch),
            Some((wl, _)) => {
                let t = wl.len() / p;
                let mut all = Vec::with_capacity(wl.len() * preps.len());
                for _ in 0..preps.len() {
                    all.extend_from_slice(wl);
                }
                WavelengthGrid::new(preps.len(), t, p, all)?
            }
        };
        let row = grid.n_patches * p;
        let recon = tok
            .decode(&enc, &grid, false)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let transform = self.model.prepare.transform;
        let mut out = Vec::with_capacity(rest.len());
        for (b, ((seq, raw), prep)) in rest.into_iter().zip(&preps).enumerate() {
            let Some(raw) = raw else {
                continue;
            };
            let base = b * row;
            let physical = |v: f32| (transform.invert(v as f64) * prep.scale) as f32;
            let (wavelength, flux, segments) = match (&grid_slots, self.target) {
                (Some((_, slots)), Target::Grid(g)) => (
                    g.wavelength(),
                    slots
                        .iter()
                        .map(|&s| recon.get(base + s).copied().map_or(f32::NAN, physical))
                        .collect::<Vec<f32>>(),
                    g.segments(),
                ),
                _ => {
                    let mut flux = vec![f32::NAN; raw.len()];
                    for (slot, &pix) in prep.pixel_index.iter().enumerate() {
                        if pix == PAD_PIXEL {
                            continue;
                        }
                        if let (Some(o), Some(v)) =
                            (flux.get_mut(pix as usize), recon.get(base + slot))
                        {
                            *o = physical(*v);
                        }
                    }
                    (raw.wavelength.clone(), flux, raw.segments.clone())
                }
            };
            let result = if flux.iter().all(|v| v.is_finite()) {
                Ok(ReconstructionRecord {
                    object_id: raw.id.clone(),
                    survey: raw.survey,
                    source: raw.source.clone(),
                    scale: prep.scale,
                    input_valid: self.model.prepare.mask.valid_pixels(&raw),
                    input_wavelength: raw.wavelength,
                    input_flux: raw.flux,
                    input_ivar: raw.ivar,
                    output_wavelength: wavelength,
                    output_flux: flux,
                    output_segments: segments,
                })
            } else {
                Err(Failure::of_spectrum(
                    FailureStage::Encode,
                    &raw.id,
                    &raw.source,
                    "the model gave a non-finite reconstruction (NaN or infinity)",
                ))
            };
            out.push((seq, result));
        }
        Ok(out)
    }
}

impl PoolSink for ReconSink<'_, '_> {
    fn observer(&mut self) -> &mut dyn EmbedObserver {
        self.observer
    }

    fn write_failure(&mut self, f: &Failure) -> Result<()> {
        self.writer.fail(f).map_err(io_err)
    }

    fn process(&mut self, pool: Pool, c: &mut Counters) -> Result<()> {
        let plan = bucket(&pool.ready, self.size);
        let mut slots: Vec<Option<Ready>> = pool.ready.into_iter().map(Some).collect();
        let mut results: Vec<(Seq, Reconstructed)> =
            pool.failed.into_iter().map(|(s, f)| (s, Err(f))).collect();
        for idx in plan {
            let items: Vec<Ready> = idx
                .iter()
                .filter_map(|&i| slots.get_mut(i)?.take())
                .collect();
            for (seq, r) in self.decode(items)? {
                match &r {
                    Ok(_) => c.done += 1,
                    Err(f) => c.fail(f, self.observer),
                }
                results.push((seq, r));
            }
            self.observer.on_progress(&c.progress());
        }
        results.sort_by_key(|(s, _)| *s);
        for (_, r) in results {
            match r {
                Ok(rec) => self.writer.write(&rec).map_err(io_err)?,
                Err(f) => {
                    if f.stage != FailureStage::Encode {
                        c.fail(&f, self.observer);
                    }
                    self.writer.fail(&f).map_err(io_err)?;
                }
            }
        }
        Ok(())
    }
}

/// Reconstructs every spectrum of `inputs` onto `target` and writes the
/// reconstruction file `output` (layout in [`spectok_io::embeddings`]).
/// `opts.tokens` is not used.
pub fn reconstruct(
    m: &EmbedModel,
    inputs: &[String],
    target: &Target,
    output: &Path,
    opts: &EmbedOptions,
    observer: &mut dyn EmbedObserver,
) -> Result<EmbedSummary> {
    opts.validate()?;
    if let Target::Grid(g) = target {
        if g.is_empty() {
            return Err(Error::config(
                "onto",
                format!("grid {} has no pixel", g.name),
            ));
        }
        for (name, w) in &g.arms {
            if w.windows(2).any(|p| p[1] <= p[0] || p[1].is_nan())
                || w.iter().any(|x| !(x.is_finite() && *x > 0.0))
            {
                return Err(Error::config(
                    "onto",
                    format!(
                        "arm {name} of grid {} is not finite, positive and increasing",
                        g.name
                    ),
                ));
            }
        }
    }
    let writer =
        ReconstructionWriter::create(output, &m.run_info(inputs), target.name(), opts.overwrite)
            .map_err(io_err)?;
    let mut counters = new_counters();
    let mut sink = ReconSink {
        model: m,
        size: opts.batch(),
        target,
        writer,
        observer,
    };
    let units = run_pipeline(inputs, opts, &m.prepare, true, &mut counters, &mut sink)?;
    sink.writer.finish().map_err(io_err)?;
    Ok(finish_summary(counters, output, opts.part, units))
}
