//! The streaming loader: several weighted sources → prepared spectra on
//! background threads → length-bucketed, collated batches in a bounded
//! prefetch queue.
//!
//! # Pipeline
//!
//! - Each source gets `readers_per_source` reader threads (fewer if it
//!   has fewer units). Reader `r` reads units `r, r+R, r+2R, …` of the
//!   pass's unit order (shuffled per pass from the seed), prepares each
//!   spectrum ([`crate::prepare()`]) and sends it down its own bounded
//!   queue. Streams are opened on the reader thread (io streams are not
//!   `Send`).
//! - One loader thread merges a source's readers round-robin (a
//!   deterministic order whatever the thread timing), draws the next
//!   source by weight from a counter-based random sequence, pools
//!   `pool_size` spectra, cuts the pool into batches (shuffled, then
//!   length-sorted when bucketing, batch order shuffled) and collates
//!   them into a bounded queue of `prefetch` batches.
//!
//! Memory is bounded by the queues and the pool, never by the dataset.
//!
//! # Epochs and mixing
//!
//! Each source is an endless stream of passes over its units, the unit
//! order reshuffled every pass (with `shuffle`); reader threads live for
//! the whole run, so epoch boundaries neither stall nor waste prefetched
//! work. With `shuffle`, a source's weight is the rate at which it is
//! drawn, and an epoch ends once every source has reached the end of a
//! pass since the epoch began: with one source an epoch is exactly one
//! pass; with several, the source slowest to finish (size / weight) is
//! read about once and faster ones repeat. Without `shuffle`, sources are
//! read one after the other in unit order, each spectrum exactly once per
//! epoch (for embedding and evaluation). A source whose whole pass yields
//! no spectrum is dropped; when none is left the loader ends. Batches
//! never straddle an epoch boundary (the last pool of an epoch may give
//! smaller batches).
//!
//! # Resuming
//!
//! Everything random is a pure function of the seed and counters, so the
//! position is a few numbers: [`LoaderState`] (epoch, chunk, draw counter,
//! per-source pass and reader positions, and how many batches of the
//! current pool were already delivered). [`Loader::state`] gives the state
//! after the last batch returned; [`Loader::resume`] with the same sources
//! and config yields exactly the batches that would have followed (it
//! re-reads the current pool's spectra to rebuild it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use serde::{Deserialize, Serialize};

use crate::batch::{try_collate, Batch};
use crate::bucket::{plan_batches, BatchSize};
use crate::error::{Error, RejectReason, Result};
use crate::prepare::{prepare, PrepareConfig, PreparedSpectrum};
use crate::rng;
use crate::source::SpectrumSource;
use crate::split::SplitFilter;

/// Tags of the random streams (part of every key).
const TAG_UNITS: u64 = 0x756e_6974; // "unit"
const TAG_DRAW: u64 = 0x6472_6177; // "draw"
const TAG_POOL: u64 = 0x706f_6f6c; // "pool"
const TAG_ORDER: u64 = 0x6f72_6472; // "ordr"

/// Most problem messages kept in [`LoaderStats::problems`].
const MAX_PROBLEMS: usize = 64;

/// One weighted source of the loader.
#[derive(Clone)]
pub struct SourceSpec {
    /// Name for messages and statistics.
    pub name: String,
    /// Relative draw rate (> 0), used when shuffling.
    pub weight: f64,
    /// The units to read.
    pub source: Arc<dyn SpectrumSource>,
}

impl SourceSpec {
    /// A source with `weight`.
    pub fn new(name: impl Into<String>, weight: f64, source: Arc<dyn SpectrumSource>) -> Self {
        SourceSpec {
            name: name.into(),
            weight,
            source,
        }
    }
}

impl std::fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSpec")
            .field("name", &self.name)
            .field("weight", &self.weight)
            .field("units", &self.source.n_units())
            .finish()
    }
}

/// Settings of the [`Loader`]. Every field has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    /// Per-spectrum preparation.
    pub prepare: PrepareConfig,
    /// Spectra per batch, fixed or by token budget.
    pub batch: BatchSize,
    /// Group spectra of similar patch count (within a pool).
    pub bucketing: bool,
    /// Spectra pooled before cutting batches: the horizon of bucketing and
    /// of in-memory shuffling. Memory ≈ `pool_size × pixels × 24 bytes`.
    pub pool_size: usize,
    /// Shuffle and mix by weight (training) or read in order, each
    /// spectrum once per epoch (evaluation, embedding).
    pub shuffle: bool,
    /// Seed of every random choice.
    pub seed: u64,
    /// Stop after this many epochs (`None`: never).
    pub epochs: Option<u64>,
    /// Reader threads per source.
    pub readers_per_source: usize,
    /// Prepared spectra each reader may hold ready.
    pub reader_queue: usize,
    /// Batches held ready for the consumer.
    pub prefetch: usize,
    /// Keep one side of the train/validation split.
    pub split: Option<SplitFilter>,
    /// Round each batch's `max_patches` up to a multiple of this.
    pub pad_to_multiple: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            prepare: PrepareConfig::default(),
            batch: BatchSize::default(),
            bucketing: true,
            pool_size: 1024,
            shuffle: true,
            seed: 0,
            epochs: None,
            readers_per_source: 2,
            reader_queue: 32,
            prefetch: 4,
            split: None,
            pad_to_multiple: 1,
        }
    }
}

impl LoaderConfig {
    /// Checks that every value is in range.
    pub fn validate(&self) -> Result<()> {
        self.prepare.validate()?;
        self.batch.validate()?;
        for (field, v) in [
            ("pool_size", self.pool_size),
            ("readers_per_source", self.readers_per_source),
            ("reader_queue", self.reader_queue),
            ("prefetch", self.prefetch),
            ("pad_to_multiple", self.pad_to_multiple),
        ] {
            if v == 0 {
                return Err(Error::config(field, "must be at least 1"));
            }
        }
        if let Some(s) = &self.split {
            if !(0.0..=1.0).contains(&s.val_fraction) {
                return Err(Error::config(
                    "split.val_fraction",
                    format!("{} (must be in 0..=1)", s.val_fraction),
                ));
            }
        }
        Ok(())
    }

    /// Hash of everything that decides the batch sequence (not the queue
    /// sizes or the epoch limit), with the sources' names, weights and
    /// unit names.
    fn fingerprint(&self, sources: &[SourceSpec]) -> u64 {
        #[derive(Serialize)]
        struct Key<'a> {
            prepare: &'a PrepareConfig,
            batch: &'a BatchSize,
            bucketing: bool,
            pool_size: usize,
            shuffle: bool,
            seed: u64,
            readers_per_source: usize,
            split: &'a Option<SplitFilter>,
            pad_to_multiple: usize,
            sources: Vec<(&'a str, f64, usize, u64)>,
        }
        let key = Key {
            prepare: &self.prepare,
            batch: &self.batch,
            bucketing: self.bucketing,
            pool_size: self.pool_size,
            shuffle: self.shuffle,
            seed: self.seed,
            readers_per_source: self.readers_per_source,
            split: &self.split,
            pad_to_multiple: self.pad_to_multiple,
            sources: sources
                .iter()
                .map(|s| {
                    let n = s.source.n_units();
                    let names = (0..n).fold(0u64, |h, u| {
                        rng::mix64(h ^ rng::fnv1a64(s.source.unit_name(u).as_bytes()))
                    });
                    (s.name.as_str(), s.weight, n, names)
                })
                .collect(),
        };
        // Serialising plain data to a string cannot fail.
        let text = serde_json::to_string(&key).unwrap_or_default();
        rng::fnv1a64(text.as_bytes())
    }
}

/// Position of one reader thread inside its pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReaderPos {
    /// Index into this reader's unit list of the pass.
    pub slot: u64,
    /// Items of that unit already consumed.
    pub offset: u64,
    /// The reader has finished the pass.
    pub done: bool,
}

/// Position of one source.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePos {
    /// Pass number since the start of the run.
    pub pass: u64,
    /// Good spectra taken from the current pass.
    pub good_in_pass: u64,
    /// The end of a pass was reached in the current epoch.
    pub completed: bool,
    /// A whole pass yielded nothing: the source is out of the mix.
    pub dead: bool,
    /// Reader to take the next item from.
    pub rr: usize,
    /// Position of each reader thread.
    pub readers: Vec<ReaderPos>,
}

/// Where a loader is: enough to resume it exactly. Serialisable so that a
/// trainer can store it in its checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    /// Hash of the config and sources this state belongs to.
    pub fingerprint: u64,
    /// Epoch number (0-based).
    pub epoch: u64,
    /// Pool (chunk) number within the epoch.
    pub chunk: u64,
    /// Source draws made in the epoch before this chunk.
    pub draws: u64,
    /// Batches of this chunk already delivered.
    pub skip_batches: u64,
    /// Batches delivered since the start of the run.
    pub batches_delivered: u64,
    /// Position of each source.
    pub sources: Vec<SourcePos>,
}

impl LoaderState {
    /// The state at the start of a run.
    fn initial(fingerprint: u64, readers: &[usize]) -> Self {
        LoaderState {
            fingerprint,
            epoch: 0,
            chunk: 0,
            draws: 0,
            skip_batches: 0,
            batches_delivered: 0,
            sources: readers
                .iter()
                .map(|&n| SourcePos {
                    readers: vec![ReaderPos::default(); n],
                    ..SourcePos::default()
                })
                .collect(),
        }
    }
}

/// Counters of a loader run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LoaderStats {
    /// Batches delivered to the consumer.
    pub batches: u64,
    /// Spectra in those batches.
    pub spectra: u64,
    /// Real (valid or invalid) patches in those batches.
    pub real_patches: u64,
    /// Patch slots `B × T` in those batches.
    pub patch_slots: u64,
    /// Valid patches in those batches.
    pub valid_patches: u64,
    /// Lowest real-token fraction of a delivered batch.
    pub min_real_token_fraction: Option<f64>,
    /// Spectra rejected by preparation or the split, by reason kind.
    pub rejected: BTreeMap<String, u64>,
    /// Units that failed to open and spectra the readers failed to read.
    pub read_errors: u64,
    /// Epochs completed by the loader thread (which runs ahead of the
    /// consumer by the prefetch queue).
    pub epochs_completed: u64,
    /// The first problems met (read errors, rejections other than the
    /// split), one line each.
    pub problems: Vec<String>,
}

impl LoaderStats {
    /// Fraction of delivered patch slots holding a real patch.
    pub fn real_token_fraction(&self) -> f64 {
        if self.patch_slots == 0 {
            0.0
        } else {
            self.real_patches as f64 / self.patch_slots as f64
        }
    }

    fn problem(&mut self, msg: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(msg);
        }
    }

    fn record(&mut self, e: &Error) {
        match e.reject_reason() {
            Some(r) => {
                *self.rejected.entry(r.kind().to_string()).or_default() += 1;
                if *r != RejectReason::OtherSplit {
                    self.problem(e.to_string());
                }
            }
            None => {
                self.read_errors += 1;
                self.problem(e.to_string());
            }
        }
    }

    fn deliver(&mut self, b: &Batch) {
        self.batches += 1;
        self.spectra += b.batch_size as u64;
        self.real_patches += b.real_patches() as u64;
        self.patch_slots += b.patch_slots() as u64;
        self.valid_patches += b.valid_patches() as u64;
        let f = b.real_token_fraction();
        self.min_real_token_fraction = Some(self.min_real_token_fraction.map_or(f, |m| m.min(f)));
    }
}

/// A batch and the state after it.
struct Delivery {
    batch: Batch,
    after: LoaderState,
}

/// The streaming loader (see the module docs). Iterate it for batches.
pub struct Loader {
    rx: Option<Receiver<Delivery>>,
    state: LoaderState,
    stats: Arc<Mutex<LoaderStats>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Loader {
    /// A loader at the start of epoch 0.
    pub fn new(sources: Vec<SourceSpec>, cfg: LoaderConfig) -> Result<Loader> {
        let readers = check(&sources, &cfg)?;
        let fp = cfg.fingerprint(&sources);
        Self::start(sources, cfg, LoaderState::initial(fp, &readers))
    }

    /// A loader that continues from `state` (from [`Loader::state`] of a
    /// loader with the same sources and config).
    pub fn resume(
        sources: Vec<SourceSpec>,
        cfg: LoaderConfig,
        state: LoaderState,
    ) -> Result<Loader> {
        let readers = check(&sources, &cfg)?;
        let fp = cfg.fingerprint(&sources);
        if state.fingerprint != fp {
            return Err(Error::State {
                reason: format!(
                    "saved for another config or source list (fingerprint {:016x}, this loader {:016x})",
                    state.fingerprint, fp
                ),
            });
        }
        let shape: Vec<usize> = state.sources.iter().map(|s| s.readers.len()).collect();
        if shape != readers {
            return Err(Error::State {
                reason: format!("reader layout {shape:?} does not match {readers:?}"),
            });
        }
        Self::start(sources, cfg, state)
    }

    fn start(sources: Vec<SourceSpec>, cfg: LoaderConfig, state: LoaderState) -> Result<Loader> {
        let (tx, rx) = bounded(cfg.prefetch);
        let stats = Arc::new(Mutex::new(LoaderStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Mixer {
            sources,
            cfg,
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            out: tx,
        };
        let start = state.clone();
        let thread = std::thread::Builder::new()
            .name("spectok-loader".into())
            .spawn(move || worker.run(start))
            .map_err(|e| Error::Source {
                name: "loader".into(),
                reason: format!("cannot start the loader thread: {e}"),
            })?;
        Ok(Loader {
            rx: Some(rx),
            state,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// The next batch, or `None` when the configured epochs are done (or
    /// no source yields any spectrum).
    pub fn next_batch(&mut self) -> Option<Batch> {
        let d = self.rx.as_ref()?.recv().ok()?;
        lock(&self.stats).deliver(&d.batch);
        self.state = d.after;
        Some(d.batch)
    }

    /// The state after the last batch returned (the start state before
    /// any).
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> LoaderStats {
        lock(&self.stats).clone()
    }
}

impl Iterator for Loader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.next_batch()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver makes the loader thread's next send fail.
        self.rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(m: &Mutex<LoaderStats>) -> MutexGuard<'_, LoaderStats> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Validates config and sources; returns the reader count of each source.
fn check(sources: &[SourceSpec], cfg: &LoaderConfig) -> Result<Vec<usize>> {
    cfg.validate()?;
    if sources.is_empty() {
        return Err(Error::config("sources", "no source given"));
    }
    sources
        .iter()
        .map(|s| {
            if !(s.weight.is_finite() && s.weight > 0.0) {
                return Err(Error::Source {
                    name: s.name.clone(),
                    reason: format!("weight {} (must be finite and > 0)", s.weight),
                });
            }
            let n = s.source.n_units();
            if n == 0 {
                return Err(Error::Source {
                    name: s.name.clone(),
                    reason: "has no input unit".into(),
                });
            }
            Ok(cfg.readers_per_source.min(n))
        })
        .collect()
}

/// What a reader sends.
enum Msg {
    Item(Result<Box<PreparedSpectrum>>),
    UnitEnd,
    PassEnd,
}

/// The unit order of pass `pass` of source `s`.
fn unit_order(cfg: &LoaderConfig, n_units: usize, s: usize, pass: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n_units).collect();
    if cfg.shuffle {
        rng::shuffle(&mut order, rng::key(&[cfg.seed, TAG_UNITS, s as u64, pass]));
    }
    order
}

/// What one reader thread reads: reader `r` of `n_readers` of source `s`,
/// from `start` in pass `pass`.
struct ReaderJob {
    source: Arc<dyn SpectrumSource>,
    cfg: LoaderConfig,
    s: usize,
    r: usize,
    n_readers: usize,
    pass: u64,
    start: ReaderPos,
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
}

/// Body of a reader thread.
fn reader(job: ReaderJob) {
    let ReaderJob {
        source,
        cfg,
        s,
        r,
        n_readers,
        mut pass,
        start,
        tx,
        stop,
    } = job;
    let (mut slot, mut skip) = (start.slot as usize, start.offset);
    if start.done {
        pass += 1;
        slot = 0;
        skip = 0;
    }
    let n_units = source.n_units();
    loop {
        let order = unit_order(&cfg, n_units, s, pass);
        let mine: Vec<usize> = order.into_iter().skip(r).step_by(n_readers).collect();
        for &unit in mine.iter().skip(slot) {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match source.open_unit(unit) {
                Err(e) => {
                    if skip == 0 && tx.send(Msg::Item(Err(e))).is_err() {
                        return;
                    }
                }
                Ok(stream) => {
                    let mut stream = stream.skip(skip as usize);
                    for item in stream.by_ref() {
                        let msg = match item {
                            Err(e) => Err(Error::Io(e)),
                            Ok(sp) => match &cfg.split {
                                Some(f) if !f.keeps(&sp.id) => Err(Error::Rejected {
                                    id: sp.id,
                                    origin: Box::new(sp.source),
                                    reason: RejectReason::OtherSplit,
                                }),
                                _ => prepare(&sp, &cfg.prepare).map(Box::new),
                            },
                        };
                        if tx.send(Msg::Item(msg)).is_err() {
                            return;
                        }
                    }
                }
            }
            skip = 0;
            if tx.send(Msg::UnitEnd).is_err() {
                return;
            }
        }
        if tx.send(Msg::PassEnd).is_err() {
            return;
        }
        pass += 1;
        slot = 0;
    }
}

/// Receivers of one source's readers.
struct Merger {
    rxs: Vec<Receiver<Msg>>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

enum Pull {
    Good(Box<PreparedSpectrum>),
    PassComplete,
}

impl Merger {
    /// Next good spectrum of the source's current pass, or the end of the
    /// pass. Bad items are recorded in `stats` and skipped.
    fn pull(&mut self, pos: &mut SourcePos, name: &str, stats: &Mutex<LoaderStats>) -> Pull {
        let n = self.rxs.len();
        loop {
            let Some(r) = (0..n)
                .map(|k| (pos.rr + k) % n)
                .find(|&r| !pos.readers[r].done)
            else {
                return Pull::PassComplete;
            };
            pos.rr = r;
            match self.rxs[r].recv() {
                Ok(Msg::Item(res)) => {
                    pos.readers[r].offset += 1;
                    pos.rr = (r + 1) % n;
                    match res {
                        Ok(p) => {
                            pos.good_in_pass += 1;
                            return Pull::Good(p);
                        }
                        Err(e) => lock(stats).record(&e),
                    }
                }
                Ok(Msg::UnitEnd) => {
                    pos.readers[r].slot += 1;
                    pos.readers[r].offset = 0;
                }
                Ok(Msg::PassEnd) => {
                    pos.readers[r].done = true;
                    pos.rr = (r + 1) % n;
                }
                Err(_) => {
                    // A reader ends early only when told to stop (or if it
                    // could not start).
                    if !self.stop.load(Ordering::Relaxed) {
                        lock(stats)
                            .problem(format!("source {name}: reader {r} stopped unexpectedly"));
                    }
                    pos.readers[r].done = true;
                }
            }
        }
    }

    fn shutdown(self) {
        drop(self.rxs);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The loader thread.
struct Mixer {
    sources: Vec<SourceSpec>,
    cfg: LoaderConfig,
    stats: Arc<Mutex<LoaderStats>>,
    stop: Arc<AtomicBool>,
    out: Sender<Delivery>,
}

impl Mixer {
    fn spawn_readers(&self, st: &LoaderState) -> Vec<Merger> {
        let mut mergers = Vec::with_capacity(self.sources.len());
        for (s, (spec, pos)) in self.sources.iter().zip(&st.sources).enumerate() {
            let n = pos.readers.len();
            let mut m = Merger {
                rxs: Vec::with_capacity(n),
                threads: Vec::with_capacity(n),
                stop: Arc::clone(&self.stop),
            };
            for (r, rp) in pos.readers.iter().enumerate() {
                let (tx, rx) = bounded(self.cfg.reader_queue);
                let (source, cfg, stop) = (
                    Arc::clone(&spec.source),
                    self.cfg.clone(),
                    Arc::clone(&self.stop),
                );
                let (pass, rp) = (pos.pass, rp.clone());
                let spawned = std::thread::Builder::new()
                    .name(format!("spectok-read-{s}-{r}"))
                    .spawn(move || {
                        reader(ReaderJob {
                            source,
                            cfg,
                            s,
                            r,
                            n_readers: n,
                            pass,
                            start: rp,
                            tx,
                            stop,
                        })
                    });
                match spawned {
                    Ok(t) => m.threads.push(t),
                    Err(e) => lock(&self.stats).problem(format!(
                        "source {}: cannot start reader {r}: {e}",
                        spec.name
                    )),
                }
                // A reader that could not start leaves a disconnected
                // queue: the merger counts it as stopped.
                m.rxs.push(rx);
            }
            mergers.push(m);
        }
        mergers
    }

    /// Draws the next good spectrum of the epoch; `None` at epoch end.
    fn draw(&self, mergers: &mut [Merger], st: &mut LoaderState) -> Option<Box<PreparedSpectrum>> {
        loop {
            if self.stop.load(Ordering::Relaxed) || st.sources.iter().all(|p| p.completed || p.dead)
            {
                return None;
            }
            let s = if self.cfg.shuffle {
                let alive: Vec<usize> = (0..st.sources.len())
                    .filter(|&i| !st.sources[i].dead)
                    .collect();
                let total: f64 = alive.iter().map(|&i| self.sources[i].weight).sum();
                let u =
                    rng::unit_f64(rng::key(&[self.cfg.seed, TAG_DRAW, st.epoch, st.draws])) * total;
                st.draws += 1;
                let mut acc = 0.0;
                let mut pick = *alive.last()?;
                for &i in &alive {
                    acc += self.sources[i].weight;
                    if u < acc {
                        pick = i;
                        break;
                    }
                }
                pick
            } else {
                st.sources.iter().position(|p| !p.completed && !p.dead)?
            };
            let pos = &mut st.sources[s];
            match mergers[s].pull(pos, &self.sources[s].name, &self.stats) {
                Pull::Good(p) => return Some(p),
                Pull::PassComplete => {
                    pos.completed = true;
                    if pos.good_in_pass == 0 {
                        // Sources are deterministic: it never will.
                        pos.dead = true;
                        lock(&self.stats).problem(format!(
                            "source {}: a whole pass yielded no usable spectrum; dropped",
                            self.sources[s].name
                        ));
                    }
                    pos.pass += 1;
                    pos.good_in_pass = 0;
                    pos.rr = 0;
                    for r in pos.readers.iter_mut() {
                        *r = ReaderPos::default();
                    }
                }
            }
        }
    }

    /// Cuts a pool into batches (index lists into the pool).
    fn plan(&self, pool: &[Box<PreparedSpectrum>], epoch: u64, chunk: u64) -> Vec<Vec<usize>> {
        let lengths: Vec<usize> = pool.iter().map(|p| p.n_patches()).collect();
        let mut order: Vec<usize> = (0..pool.len()).collect();
        if self.cfg.shuffle {
            rng::shuffle(
                &mut order,
                rng::key(&[self.cfg.seed, TAG_POOL, epoch, chunk]),
            );
        }
        let mut plan = plan_batches(&lengths, &order, self.cfg.batch, self.cfg.bucketing);
        if self.cfg.shuffle {
            rng::shuffle(
                &mut plan,
                rng::key(&[self.cfg.seed, TAG_ORDER, epoch, chunk]),
            );
        }
        plan
    }

    fn run(self, mut st: LoaderState) {
        if self.cfg.epochs.is_some_and(|e| st.epoch >= e) {
            return;
        }
        let mut mergers = self.spawn_readers(&st);
        let mut delivered = st.batches_delivered;
        let mut epoch_good = 0u64;
        loop {
            let snapshot = st.clone();
            let mut pool = Vec::with_capacity(self.cfg.pool_size);
            let mut epoch_end = false;
            while pool.len() < self.cfg.pool_size {
                match self.draw(&mut mergers, &mut st) {
                    Some(p) => pool.push(p),
                    None => {
                        epoch_end = true;
                        break;
                    }
                }
            }
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            epoch_good += pool.len() as u64;
            st.chunk += 1;
            st.skip_batches = 0;
            if epoch_end {
                st.epoch += 1;
                st.chunk = 0;
                st.draws = 0;
                for p in st.sources.iter_mut() {
                    p.completed = false;
                }
            }
            let plan = self.plan(&pool, snapshot.epoch, snapshot.chunk);
            let mut slots: Vec<Option<Box<PreparedSpectrum>>> =
                pool.into_iter().map(Some).collect();
            let n_batches = plan.len();
            let mut sent_ok = true;
            for (j, idx) in plan.into_iter().enumerate() {
                let items: Vec<PreparedSpectrum> = idx
                    .iter()
                    .filter_map(|&i| slots[i].take())
                    .map(|b| *b)
                    .collect();
                if (j as u64) < snapshot.skip_batches {
                    continue;
                }
                let longest = items.iter().map(|p| p.n_patches()).max().unwrap_or(0);
                let t = longest.div_ceil(self.cfg.pad_to_multiple) * self.cfg.pad_to_multiple;
                let batch = match try_collate(&items, t) {
                    Ok(b) => b,
                    Err(e) => {
                        lock(&self.stats).problem(e.to_string());
                        continue;
                    }
                };
                delivered += 1;
                // After the pool's last batch, the state is the next pool's
                // start (or the next epoch's); before, it is this pool's
                // start with the delivered batches to skip.
                let mut after = if j + 1 < n_batches {
                    LoaderState {
                        skip_batches: j as u64 + 1,
                        ..snapshot.clone()
                    }
                } else {
                    st.clone()
                };
                after.batches_delivered = delivered;
                if self.stop.load(Ordering::Relaxed)
                    || self.out.send(Delivery { batch, after }).is_err()
                {
                    sent_ok = false;
                    break;
                }
            }
            if !sent_ok {
                break;
            }
            if epoch_end {
                lock(&self.stats).epochs_completed += 1;
                if epoch_good == 0 {
                    lock(&self.stats).problem(format!(
                        "epoch {} yielded no usable spectrum: stopping",
                        snapshot.epoch
                    ));
                    break;
                }
                epoch_good = 0;
                if self.cfg.epochs.is_some_and(|e| st.epoch >= e) {
                    break;
                }
            }
        }
        for m in mergers {
            m.shutdown();
        }
    }
}
