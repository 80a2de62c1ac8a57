//! Fuzz harnesses for eiplab, kept in a library so that the fuzz targets stay one line each
//! and the seed generator (`examples/make_seeds.rs`) can run every seed through them on a
//! stable toolchain.

pub mod alg;
pub mod engine;
pub mod fixture;
pub mod gen;
pub mod wire;
