//! Durable instance storage.
//!
//! An instance is streamed into a temporary file under `spool/tmp` (Part-10 preamble and
//! meta group first, then the data set bytes exactly as received), fsynced, checked, and
//! renamed to `spool/objects/<h0h1>/<h2h3>/<sha256(SOP Instance UID)>.dcm`, after which the
//! directory is fsynced. Only then may the SCP answer Success. The path never contains a
//! raw UID: a UID is attacker-controlled text. A duplicate SOP Instance UID lands on the
//! same path, so `rename` replaces the earlier copy atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, OpenFileOptions};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("free space {free_mb} MB is below the floor of {floor_mb} MB")]
    LowSpace { free_mb: u64, floor_mb: u64 },
    #[error("instance larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("cannot build the file meta group: {0}")]
    Meta(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A DICOM UID as PS3.5 §9.1 allows: 1–64 characters, digits and dots, no empty component,
/// no leading zero in a multi-digit component (the last rule is relaxed: many devices
/// violate it and it is harmless for us).
pub fn valid_uid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Create a directory (and parents) with mode 0700.
pub fn create_private_dir(p: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(p)
}

pub fn fsync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

/// Write `bytes` to `dir/name` atomically and durably (temp, fsync, rename, fsync dir).
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, SpoolError> {
    create_private_dir(dir).map_err(io_err(dir))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", uuid::Uuid::new_v4().simple()));
    let dst = dir.join(name);
    let r = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &dst)?;
        fsync_dir(dir)
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(SpoolError::Io {
            path: dst,
            source: e,
        });
    }
    Ok(dst)
}

/// Free space in MB available to unprivileged writers on the filesystem holding `p`.
pub fn free_mb(p: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: statvfs only writes into the struct we pass; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64) / (1024 * 1024))
}

/// What the node needs from an instance's header.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceHeader {
    pub sop_class_uid: String,
    pub sop_instance_uid: String,
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub modality: String,
    pub series_number: String,
    pub series_description: String,
    pub transfer_syntax: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("data set does not parse: {0}")]
    Parse(String),
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{name} is not a valid UID ({len} characters)")]
    BadUid { name: &'static str, len: usize },
}

/// Refuse a file in which any element claims more bytes than the file still holds.
///
/// Why: dicom-parser reserves and zero-fills an element's claimed length before reading
/// it, so a 1 KiB instance whose element claims 4 GiB made the node touch 4 GiB of memory
/// (found by the hostile-input suite). Bounding every length by the bytes actually received
/// bounds what parsing (here and in imaging, which reads the pixel data) can allocate.
/// Sequences and items are entered, not skipped, so nested lengths are checked too.
/// Big-endian data sets are not scanned (the node does not offer big endian). Deflated
/// ones are refused: a few bytes of deflate inflate to an element claiming 4 GiB, which
/// the parser then allocated (found by fuzzing), and the node no longer offers deflate.
pub fn check_element_lengths(path: &Path) -> Result<(), HeaderError> {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    use std::io::{BufReader, Read, Seek, SeekFrom};
    let ioe = |e: io::Error| HeaderError::Parse(e.to_string());
    let file = File::open(path).map_err(ioe)?;
    let total = file.metadata().map_err(ioe)?.len();
    let mut f = BufReader::new(file);
    if total < 132 {
        return Err(HeaderError::Parse(
            "file shorter than the Part-10 preamble".into(),
        ));
    }
    f.seek(SeekFrom::Start(132)).map_err(ioe)?;
    let mut pos: u64 = 132;
    let mut ts = String::new();
    let mut explicit = true;
    let mut in_meta = true;
    let mut in_encap = false;
    let is_sq = |g: u16, e: u16| {
        dicom_dictionary_std::StandardDataDictionary
            .by_tag(dicom_core::Tag(g, e))
            .is_some_and(|d| matches!(d.vr(), VirtualVr::Exact(dicom_core::VR::SQ)))
    };
    while pos < total {
        if total - pos < 8 {
            return Err(HeaderError::Parse(format!(
                "truncated element header at byte {pos}"
            )));
        }
        let mut h = [0u8; 8];
        f.read_exact(&mut h).map_err(ioe)?;
        let g = u16::from_le_bytes([h[0], h[1]]);
        let e = u16::from_le_bytes([h[2], h[3]]);
        if in_meta && g != 0x0002 {
            in_meta = false;
            match ts.trim_end_matches(['\0', ' ']) {
                "1.2.840.10008.1.2" => explicit = false,
                "1.2.840.10008.1.2.1.99" => {
                    return Err(HeaderError::Parse(
                        "deflated data sets are not accepted".into(),
                    ))
                }
                "1.2.840.10008.1.2.2" => return Ok(()),
                _ => explicit = true,
            }
        }
        let mut hlen = 8u64;
        let (len, sq) = if g == 0xFFFE {
            (u32::from_le_bytes([h[4], h[5], h[6], h[7]]), false)
        } else if explicit {
            let vr = [h[4], h[5]];
            // Which VRs have a 16-bit length exactly as dicom-parser decides it: any other
            // VR, an unknown one included (read as UN), has a 32-bit length. Listing the
            // 32-bit ones instead let "L." pass here with a short length while the parser
            // read a 2 GB one (found by fuzzing).
            if !matches!(
                &vr,
                b"AE"
                    | b"AS"
                    | b"AT"
                    | b"CS"
                    | b"DA"
                    | b"DS"
                    | b"DT"
                    | b"FL"
                    | b"FD"
                    | b"IS"
                    | b"LO"
                    | b"LT"
                    | b"PN"
                    | b"SH"
                    | b"SL"
                    | b"SS"
                    | b"ST"
                    | b"TM"
                    | b"UI"
                    | b"UL"
                    | b"US"
            ) {
                let mut l = [0u8; 4];
                f.read_exact(&mut l).map_err(ioe)?;
                hlen = 12;
                (u32::from_le_bytes(l), &vr == b"SQ")
            } else {
                (u16::from_le_bytes([h[6], h[7]]) as u32, false)
            }
        } else {
            (u32::from_le_bytes([h[4], h[5], h[6], h[7]]), is_sq(g, e))
        };
        pos += hlen;
        if len == 0xFFFF_FFFF {
            if (g, e) == (0x7FE0, 0x0010) {
                in_encap = true;
            }
            continue;
        }
        if (g, e) == (0xFFFE, 0xE0DD) {
            in_encap = false;
        }
        if u64::from(len) > total.saturating_sub(pos) {
            return Err(HeaderError::Parse(format!(
                "element ({g:04X},{e:04X}) claims {len} bytes but only {} remain",
                total.saturating_sub(pos)
            )));
        }
        // dicom-parser reads len/size values of a binary VR and leaves the remainder
        // unread, so an odd-length US put the parser off this walk (and onto a 4 GiB
        // "length"; found by fuzzing). Such a value is malformed: refuse it.
        let unit = if explicit && g != 0xFFFE {
            match &[h[4], h[5]] {
                b"US" | b"SS" => 2,
                b"UL" | b"SL" | b"FL" | b"AT" => 4,
                b"FD" => 8,
                _ => 1,
            }
        } else {
            1
        };
        if len % unit != 0 {
            return Err(HeaderError::Parse(format!(
                "element ({g:04X},{e:04X}) length {len} is not a multiple of its value size {unit}"
            )));
        }
        if sq || ((g, e) == (0xFFFE, 0xE000) && !in_encap) {
            continue;
        }
        if in_meta && (g, e) == (0x0002, 0x0010) && len <= 128 {
            let mut v = vec![0u8; len as usize];
            f.read_exact(&mut v).map_err(ioe)?;
            ts = String::from_utf8_lossy(&v).into_owned();
        } else {
            f.seek_relative(i64::from(len)).map_err(ioe)?;
        }
        pos += u64::from(len);
    }
    Ok(())
}

/// Read the header (everything before Pixel Data) of a Part-10 file.
pub fn read_header(path: &Path) -> Result<InstanceHeader, HeaderError> {
    check_element_lengths(path)?;
    let obj = OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .map_err(|e| HeaderError::Parse(e.to_string()))?;
    let get = |tag| -> String {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok().map(|s| s.to_string()))
            .map(|s| {
                s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                    .to_string()
            })
            .unwrap_or_default()
    };
    let uid = |tag, name: &'static str| -> Result<String, HeaderError> {
        let v = get(tag);
        if v.is_empty() {
            return Err(HeaderError::Missing(name));
        }
        if !valid_uid(&v) {
            return Err(HeaderError::BadUid { name, len: v.len() });
        }
        Ok(v)
    };
    Ok(InstanceHeader {
        sop_class_uid: uid(tags::SOP_CLASS_UID, "SOP Class UID")?,
        sop_instance_uid: uid(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
        study_instance_uid: uid(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
        series_instance_uid: uid(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
        modality: get(tags::MODALITY),
        series_number: get(tags::SERIES_NUMBER),
        series_description: get(tags::SERIES_DESCRIPTION),
        transfer_syntax: obj
            .meta()
            .transfer_syntax()
            .trim_end_matches('\0')
            .to_string(),
    })
}

/// The spool directory tree.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    tmp: PathBuf,
    objects: PathBuf,
    /// Hard cap on one instance, so a peer cannot stream forever into one file.
    pub max_instance_bytes: u64,
}

impl Spool {
    pub fn open(state_dir: &Path) -> Result<Spool, SpoolError> {
        let root = state_dir.join("spool");
        let tmp = root.join("tmp");
        let objects = root.join("objects");
        for d in [&root, &tmp, &objects] {
            create_private_dir(d).map_err(io_err(d))?;
        }
        Ok(Spool {
            root,
            tmp,
            objects,
            max_instance_bytes: 16 * 1024 * 1024 * 1024,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn objects_dir(&self) -> &Path {
        &self.objects
    }

    /// Where the instance with this SOP Instance UID lives.
    pub fn path_for(&self, sop_instance_uid: &str) -> PathBuf {
        let h = sha256_hex(sop_instance_uid.as_bytes());
        self.objects
            .join(&h[0..2])
            .join(&h[2..4])
            .join(format!("{h}.dcm"))
    }

    /// Remove temporary files left by a crash; returns how many.
    pub fn clean_tmp(&self) -> usize {
        let mut n = 0;
        if let Ok(rd) = fs::read_dir(&self.tmp) {
            for e in rd.flatten() {
                if fs::remove_file(e.path()).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    /// Every `.dcm` file under `objects/` (for rebuilding state after a crash).
    pub fn all_objects(&self) -> Vec<PathBuf> {
        walkdir::WalkDir::new(&self.objects)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
            .collect()
    }

    pub fn check_space(&self, floor_mb: u64) -> Result<(), SpoolError> {
        let free = free_mb(&self.root).map_err(io_err(&self.root))?;
        if free < floor_mb {
            return Err(SpoolError::LowSpace {
                free_mb: free,
                floor_mb,
            });
        }
        Ok(())
    }

    /// Start receiving an instance: a temporary Part-10 file whose meta group is built from
    /// the C-STORE command and the presentation context.
    pub fn begin(
        &self,
        sop_class_uid: &str,
        sop_instance_uid: &str,
        transfer_syntax: &str,
        calling_ae: &str,
        floor_mb: u64,
    ) -> Result<TempInstance, SpoolError> {
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(sop_class_uid)
            .media_storage_sop_instance_uid(sop_instance_uid)
            .transfer_syntax(transfer_syntax)
            .source_application_entity_title(calling_ae.trim())
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
            .build()
            .map_err(|e| SpoolError::Meta(e.to_string()))?;
        let path = self
            .tmp
            .join(format!("{}.part", uuid::Uuid::new_v4().simple()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut head = Vec::with_capacity(512);
        head.extend_from_slice(&[0u8; 128]);
        head.extend_from_slice(b"DICM");
        let r = meta
            .write(&mut head)
            .map_err(|e| SpoolError::Meta(e.to_string()))
            .and_then(|_| file.write_all(&head).map_err(io_err(&path)));
        if let Err(e) = r {
            drop(file);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(TempInstance {
            file: Some(std::io::BufWriter::with_capacity(256 * 1024, file)),
            path,
            hasher: Sha256::new(),
            written: 0,
            max_bytes: self.max_instance_bytes,
            root: self.root.clone(),
            floor_mb,
            next_space_check: SPACE_CHECK_EVERY,
        })
    }

    /// Move a finished temporary file into place. Durable when this returns Ok.
    pub fn commit(
        &self,
        done: FinishedInstance,
        sop_instance_uid: &str,
    ) -> Result<PathBuf, SpoolError> {
        let dst = self.path_for(sop_instance_uid);
        let shard2 = dst.parent().expect("has parent").to_owned();
        let shard1 = shard2.parent().expect("has parent").to_owned();
        let r = (|| {
            let new1 = !shard1.exists();
            let new2 = !shard2.exists();
            create_private_dir(&shard2)?;
            fs::rename(&done.path, &dst)?;
            fsync_dir(&shard2)?;
            if new2 {
                fsync_dir(&shard1)?;
            }
            if new1 {
                fsync_dir(&self.objects)?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            let _ = fs::remove_file(&done.path);
            return Err(SpoolError::Io {
                path: dst,
                source: e,
            });
        }
        Ok(dst)
    }
}

pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.241977015870212377526425066146342712091";
pub const IMPLEMENTATION_VERSION_NAME: &str = "PRIMA_NODE_01";
const SPACE_CHECK_EVERY: u64 = 32 * 1024 * 1024;

/// An instance being received. Dropping it without `finish` deletes the file.
pub struct TempInstance {
    file: Option<std::io::BufWriter<File>>,
    path: PathBuf,
    hasher: Sha256,
    written: u64,
    max_bytes: u64,
    root: PathBuf,
    floor_mb: u64,
    next_space_check: u64,
}

/// A fully written and fsynced temporary instance.
#[derive(Debug)]
pub struct FinishedInstance {
    pub path: PathBuf,
    /// SHA-256 of the data set bytes (not the meta group), hex.
    pub sha256: String,
    pub size: u64,
}

impl FinishedInstance {
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}

impl TempInstance {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, data: &[u8]) -> Result<(), SpoolError> {
        self.written += data.len() as u64;
        if self.written > self.max_bytes {
            return Err(SpoolError::TooLarge(self.max_bytes));
        }
        // Long instances re-check the floor so one huge object cannot fill the disk.
        if self.written >= self.next_space_check {
            self.next_space_check = self.written + SPACE_CHECK_EVERY;
            let free = free_mb(&self.root).map_err(io_err(&self.root))?;
            if free < self.floor_mb {
                return Err(SpoolError::LowSpace {
                    free_mb: free,
                    floor_mb: self.floor_mb,
                });
            }
        }
        self.hasher.update(data);
        let f = self.file.as_mut().expect("open until finish");
        f.write_all(data).map_err(io_err(&self.path))
    }

    pub fn finish(mut self) -> Result<FinishedInstance, SpoolError> {
        let w = self.file.take().expect("open until finish");
        let path = self.path.clone();
        let r = w
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all());
        if let Err(e) = r {
            let _ = fs::remove_file(&path);
            return Err(SpoolError::Io { path, source: e });
        }
        let sha = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let size = self.written;
        // Defuse Drop: the file is handed over.
        self.path = PathBuf::new();
        Ok(FinishedInstance {
            path,
            sha256: sha,
            size,
        })
    }
}

impl Drop for TempInstance {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            self.file.take();
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_validation() {
        assert!(valid_uid("1.2.840.10008.5.1.4.1.1.4"));
        assert!(!valid_uid(""));
        assert!(!valid_uid("1.2/../3"));
        assert!(!valid_uid("1..2"));
        assert!(!valid_uid("1.2\0"));
        assert!(!valid_uid(&"1".repeat(65)));
        assert!(valid_uid(&"1".repeat(64)));
    }

    #[test]
    fn paths_never_contain_the_uid() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let p = s.path_for("1.2.3");
        assert!(!p.to_string_lossy().contains("1.2.3"));
        assert!(p.starts_with(s.objects_dir()));
    }

    #[test]
    fn stream_commit_replace() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::open(d.path()).unwrap();
        let mut t = s
            .begin(
                crate::config::MR_IMAGE_STORAGE,
                "1.2.3.4",
                "1.2.840.10008.1.2.1",
                "SCU",
                0,
            )
            .unwrap();
        t.write(b"\x08\x00\x60\x00CS\x02\x00MR").unwrap();
        let f = t.finish().unwrap();
        let p = s.commit(f, "1.2.3.4").unwrap();
        assert!(p.exists());
        let t = s
            .begin(
                crate::config::MR_IMAGE_STORAGE,
                "1.2.3.4",
                "1.2.840.10008.1.2.1",
                "SCU",
                0,
            )
            .unwrap();
        let tmp = t.path().to_owned();
        drop(t);
        assert!(!tmp.exists(), "dropped temp file removed");
        assert_eq!(s.all_objects().len(), 1);
        assert_eq!(s.clean_tmp(), 0);
        assert!(s.check_space(u64::MAX).is_err());
    }
}
