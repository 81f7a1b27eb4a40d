//! The model's hyper-parameters: every architectural choice the method
//! leaves open is a field here, with a documented default.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which patches the reconstruction loss scores when masked modelling
/// hides some patches from the encoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskScore {
    /// Only the hidden patches (masked-autoencoder style).
    #[default]
    Hidden,
    /// Every valid patch, hidden or visible.
    All,
    /// The sum of the two losses above.
    Both,
}

impl MaskScore {
    /// Lower-case name, as in the config file.
    pub fn name(self) -> &'static str {
        match self {
            MaskScore::Hidden => "hidden",
            MaskScore::All => "all",
            MaskScore::Both => "both",
        }
    }
}

/// Hyper-parameters of the [`crate::Tokenizer`].
///
/// Serialised as JSON beside the weights; every field has a default (the
/// paper's values where the paper gives one), so a config file only needs
/// the fields it changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Pixels per patch, `P` (paper: 32). Must match the batches' patch size.
    pub patch_size: usize,
    /// Model width `D` (paper: 512).
    pub d_model: usize,
    /// Encoder blocks (paper: 6).
    pub encoder_layers: usize,
    /// Decoder blocks (paper: 6).
    pub decoder_layers: usize,
    /// Attention heads, in encoder and decoder (paper: 8). Divides `d_model`.
    pub heads: usize,
    /// MLP hidden width as a multiple of `d_model` (default 4, the
    /// transformer convention).
    pub mlp_ratio: f64,
    /// Dropout probability on attention weights and on the output of every
    /// attention and MLP sub-block, in training mode only (default 0).
    pub dropout: f32,
    /// LayerNorm epsilon (default 1e-5).
    pub layer_norm_eps: f64,
    /// Number of sinusoid frequencies of the absolute wavelength encoding;
    /// the encoding has `2 · wavelength_freqs` features (default 64).
    pub wavelength_freqs: usize,
    /// Shortest period of the wavelength encoding, Å (default 0.1: resolves
    /// GALAH's ≈0.05 Å pixels to a few periods).
    pub min_period: f64,
    /// Longest period of the wavelength encoding, Å (default 1e5: longer
    /// than the whole 3500–17000 Å range, so coarse position is unambiguous).
    pub max_period: f64,
    /// Number of sinusoid frequencies encoding each pixel's offset from its
    /// patch centre; `2 · offset_freqs · P` features per patch (default 8).
    pub offset_freqs: usize,
    /// Shortest period of the offset encoding, Å (default 0.1).
    pub offset_min_period: f64,
    /// Longest period of the offset encoding, Å (default 2000: longer than
    /// the widest patch, 32 Gaia XP samples of 20 Å).
    pub offset_max_period: f64,
    /// Upper clip on the normalised inverse variance used as loss weight
    /// (default 1e4, i.e. S/N 100 per pixel in normalised units).
    pub ivar_clip: f32,
    /// Fraction of each spectrum's valid patches hidden from the encoder
    /// for masked modelling (default 0: off).
    pub mask_ratio: f64,
    /// Which patches the loss scores when patches are hidden (default
    /// `hidden`).
    pub mask_score: MaskScore,
    /// Levels of the finite-scalar quantiser on the tokens, one per code
    /// dimension (e.g. `[8, 5, 5, 5]`, a 1000-entry codebook); empty (the
    /// default) means no quantiser and continuous tokens.
    pub fsq_levels: Vec<u32>,
}

impl Default for Config {
    fn default() -> Self {
        Config::paper()
    }
}

impl Config {
    /// The paper's model (Shen et al. 2025, arXiv:2510.17959): width 512,
    /// 6 encoder and 6 decoder layers, 8 heads, patches of 32 pixels.
    pub fn paper() -> Self {
        Config {
            patch_size: 32,
            d_model: 512,
            encoder_layers: 6,
            decoder_layers: 6,
            heads: 8,
            mlp_ratio: 4.0,
            dropout: 0.0,
            layer_norm_eps: 1e-5,
            wavelength_freqs: 64,
            min_period: 0.1,
            max_period: 1e5,
            offset_freqs: 8,
            offset_min_period: 0.1,
            offset_max_period: 2000.0,
            ivar_clip: 1e4,
            mask_ratio: 0.0,
            mask_score: MaskScore::Hidden,
            fsq_levels: Vec::new(),
        }
    }

    /// A tiny model for tests and demos: width 32, 2 + 2 layers, 4 heads,
    /// patches of 8 pixels.
    pub fn demo() -> Self {
        Config {
            patch_size: 8,
            d_model: 32,
            encoder_layers: 2,
            decoder_layers: 2,
            heads: 4,
            mlp_ratio: 2.0,
            wavelength_freqs: 16,
            offset_freqs: 4,
            ..Config::paper()
        }
    }

    /// Width of each attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.heads.max(1)
    }

    /// Hidden width of the MLPs, `round(d_model · mlp_ratio)`, at least 1.
    pub fn mlp_hidden(&self) -> usize {
        ((self.d_model as f64 * self.mlp_ratio).round() as usize).max(1)
    }

    /// Features of the absolute wavelength encoding, `2 · wavelength_freqs`.
    pub fn wavelength_dim(&self) -> usize {
        2 * self.wavelength_freqs
    }

    /// Offset features of one pixel, `2 · offset_freqs`.
    pub fn offset_dim(&self) -> usize {
        2 * self.offset_freqs
    }

    /// Whether the finite-scalar quantiser is on.
    pub fn fsq_enabled(&self) -> bool {
        !self.fsq_levels.is_empty()
    }

    /// Number of distinct token ids of the quantiser (product of the
    /// levels); 0 when it is off.
    pub fn codebook_size(&self) -> u64 {
        if self.fsq_levels.is_empty() {
            0
        } else {
            self.fsq_levels.iter().map(|&l| l as u64).product()
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        fn bad(field: &'static str, message: impl Into<String>) -> Result<()> {
            Err(Error::Config {
                field,
                message: message.into(),
            })
        }
        if self.patch_size == 0 {
            return bad("patch_size", "must be at least 1");
        }
        if self.d_model == 0 {
            return bad("d_model", "must be at least 1");
        }
        if self.encoder_layers == 0 {
            return bad("encoder_layers", "must be at least 1");
        }
        if self.decoder_layers == 0 {
            return bad("decoder_layers", "must be at least 1");
        }
        if self.heads == 0 || self.head_dim() * self.heads != self.d_model {
            return bad(
                "heads",
                format!("{} does not divide d_model {}", self.heads, self.d_model),
            );
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) {
            return bad("mlp_ratio", format!("{} is not positive", self.mlp_ratio));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", format!("{} is not in [0, 1)", self.dropout));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return bad("layer_norm_eps", "must be positive");
        }
        if self.wavelength_freqs == 0 {
            return bad("wavelength_freqs", "must be at least 1");
        }
        if !(self.min_period.is_finite() && self.min_period > 0.0) {
            return bad("min_period", "must be positive");
        }
        if !(self.max_period.is_finite() && self.max_period >= self.min_period) {
            return bad("max_period", "must be finite and at least min_period");
        }
        if self.offset_freqs == 0 {
            return bad("offset_freqs", "must be at least 1");
        }
        if !(self.offset_min_period.is_finite() && self.offset_min_period > 0.0) {
            return bad("offset_min_period", "must be positive");
        }
        if !(self.offset_max_period.is_finite() && self.offset_max_period >= self.offset_min_period)
        {
            return bad(
                "offset_max_period",
                "must be finite and at least offset_min_period",
            );
        }
        if !(self.ivar_clip.is_finite() && self.ivar_clip > 0.0) {
            return bad("ivar_clip", "must be positive");
        }
        if !(0.0..1.0).contains(&self.mask_ratio) {
            return bad(
                "mask_ratio",
                format!("{} is not in [0, 1)", self.mask_ratio),
            );
        }
        if let Some(l) = self.fsq_levels.iter().find(|&&l| l < 2) {
            return bad("fsq_levels", format!("level {l} is below 2"));
        }
        if self.codebook_size() > 1 << 24 {
            return bad(
                "fsq_levels",
                format!(
                    "codebook of {} ids exceeds 2^24 (ids are computed exactly in f32)",
                    self.codebook_size()
                ),
            );
        }
        Ok(())
    }

    /// Parses a JSON config (missing fields take their defaults) and
    /// validates it.
    pub fn from_json(text: &str) -> Result<Config> {
        let cfg: Config = serde_json::from_str(text).map_err(|e| Error::Config {
            field: "json",
            message: one_line(&e.to_string()),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Pretty JSON of every field.
    pub fn to_json(&self) -> String {
        // Serialising plain numbers, strings and vectors cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// `s` on one line: control characters (newline, tab, escape, …) and the
/// Unicode line and paragraph separators are escaped as in a Rust string
/// literal (`\n`, `\u{1b}`), so a field name or value quoted from the
/// config text cannot break an error message. The config parsers of the
/// crates to the right use it too.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(json: &str) -> String {
        Config::from_json(json)
            .expect_err("config accepted")
            .to_string()
    }

    #[test]
    fn errors_quoting_the_config_text_stay_on_one_line() {
        // A control character in an unknown field name.
        let m = message(r#"{"d_model": 64, "lr\nx": 1}"#);
        assert!(!m.contains('\n'), "{m}");
        assert!(m.contains("unknown field `lr\\nx`"), "{m}");
        // In a string value (an unknown variant), with a tab, an escape
        // and a line separator.
        let m = message(r#"{"mask_score": "hid\r\nden\t\u001b\u2028"}"#);
        assert!(!m.contains(['\n', '\r', '\t', '\u{1b}', '\u{2028}']), "{m}");
        assert!(m.contains("`hid\\r\\nden\\t\\u{1b}\\u{2028}`"), "{m}");
        assert!(m.starts_with("config field `json`: unknown variant"), "{m}");
        // Text without control characters is quoted unchanged.
        let m = message(r#"{"widht": 1}"#);
        assert!(m.contains("unknown field `widht`"), "{m}");
    }

    #[test]
    fn one_line_escapes_only_what_breaks_a_line() {
        assert_eq!(one_line("a\nb\u{85}c\\d \"é\""), "a\\nb\\u{85}c\\d \"é\"");
    }
}
