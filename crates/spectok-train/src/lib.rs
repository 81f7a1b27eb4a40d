//! spectok-train
