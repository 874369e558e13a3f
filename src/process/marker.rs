//! Which series background preparation is working on, in a file that outlives the model
//! process: what lets the node tell a crash of the background from a crash of the job.

use std::path::Path;

use tracing::debug;

/// A file that names the series background preparation is working on, present only while
/// it does. A model process found dead with the marker present died in the background,
/// not in its job: the node does not hold that crash against the job, and the next model
/// process leaves the series to its job (where a crash counts against the study it belongs to).
#[derive(Debug, Clone)]
pub struct Marker(pub std::path::PathBuf);

impl Marker {
    /// The marker of the node whose state lives in `state_dir`.
    pub fn in_state_dir(state_dir: &Path) -> Marker {
        Marker(state_dir.join("worker-background.marker"))
    }

    /// (study, series) the marker names, if it is there.
    pub fn read(&self) -> Option<(String, String)> {
        let text = std::fs::read_to_string(&self.0).ok()?;
        let mut l = text.lines();
        Some((l.next()?.to_string(), l.next()?.to_string()))
    }

    pub fn set(&self, study: &str, series: &str) {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // No fsync: it only has to outlive this process, not the machine.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.0)
            .and_then(|mut f| f.write_all(format!("{study}\n{series}\n").as_bytes()));
        if let Err(e) = written {
            debug!(error = %e, "cannot write the background marker");
        }
    }

    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_names_the_series_while_it_is_set() {
        let d = tempfile::tempdir().unwrap();
        let m = Marker::in_state_dir(d.path());
        assert_eq!(m.read(), None);
        m.set("1.2.3", "1.2.3.4");
        assert_eq!(m.read(), Some(("1.2.3".into(), "1.2.3.4".into())));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&m.0).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        m.clear();
        assert_eq!(m.read(), None);
    }
}
