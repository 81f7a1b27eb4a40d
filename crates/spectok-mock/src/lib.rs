//! spectok-mock
