#![no_std]
// Exists so that netguard can name this crate as a build dependency.
