//! Study assembly: when is a study complete, and should Prima run on it ([`assembler`]).
pub mod assembler;
