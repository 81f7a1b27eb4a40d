//! spectok-model
