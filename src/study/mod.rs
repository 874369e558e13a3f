//! Study assembly: the policy that decides when a study is complete and whether Prima
//! should run on it ([`policy`], pure), and the single node's assembler that applies it
//! to the database and dispatches jobs ([`assembler`]).
pub mod assembler;
pub mod policy;

use crate::config::Config;
use crate::store::state::{State, StateError, StoredInstance};

/// A study's current model input as the database knows it: the eligible instances and
/// their input set hash. The assembler decides on it, the worker compares it with what it
/// processed, background preparation follows it.
pub fn current_input(
    state: &State,
    study: &str,
    cfg: &Config,
) -> Result<(Vec<StoredInstance>, [u8; 32]), StateError> {
    let inst = policy::eligible(state.instances_of(study)?, cfg);
    let hash = policy::input_set_hash(&inst);
    Ok((inst, hash))
}
