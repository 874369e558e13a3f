//! DIMSE command sets (PS3.7 §9, §E): encoding and a bounded decoder.
//!
//! Command sets are always Implicit VR Little Endian, flat (no sequences) and small, so
//! they are read and written by hand here: the decoder never allocates more than the
//! bytes it was given and rejects anything that is not a well-formed flat command.

pub const VERIFICATION: &str = dicom_dictionary_std::uids::VERIFICATION;

/// Command Field values.
pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
pub const C_CANCEL_RQ: u16 = 0x0FFF;

/// Command Data Set Type: no data set follows.
pub const NO_DATASET: u16 = 0x0101;

/// DIMSE statuses the node sends.
pub mod status {
    pub const SUCCESS: u16 = 0x0000;
    /// Refused: SOP class not supported.
    pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
    /// Unrecognised operation.
    pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
    /// Refused: out of resources (free-space floor, write failure).
    pub const OUT_OF_RESOURCES: u16 = 0xA700;
    /// Error: data set does not match SOP class.
    pub const DATASET_MISMATCH: u16 = 0xA900;
    /// Error: cannot understand — the data set does not parse.
    pub const CANNOT_UNDERSTAND: u16 = 0xC000;
    /// Cannot understand: a required UID is missing or malformed.
    pub const BAD_UID: u16 = 0xC001;
    /// Cannot understand: the data set's SOP Instance UID differs from the command's.
    pub const UID_MISMATCH: u16 = 0xC002;
}

/// How a response status is to be treated by a sender (PS3.4 Annex C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    Success,
    Warning,
    Failure,
}

pub fn classify_status(s: u16) -> StatusClass {
    match s {
        0x0000 => StatusClass::Success,
        0x0001 | 0x0107 | 0x0116 => StatusClass::Warning,
        s if s & 0xF000 == 0xB000 => StatusClass::Warning,
        _ => StatusClass::Failure,
    }
}

/// A decoded command set (only the fields the node uses).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Command {
    pub command_field: u16,
    pub message_id: u16,
    pub message_id_responded: Option<u16>,
    pub affected_sop_class_uid: String,
    pub affected_sop_instance_uid: String,
    pub data_set_type: u16,
    pub status: Option<u16>,
    pub error_comment: Option<String>,
}

impl Command {
    pub fn has_data_set(&self) -> bool {
        self.data_set_type != NO_DATASET
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CommandError {
    #[error("command set truncated at byte {0}")]
    Truncated(usize),
    #[error("command element ({0:04X},{1:04X}) outside group 0000")]
    WrongGroup(u16, u16),
    #[error("command element ({0:04X},{1:04X}) has an undefined or oversize length")]
    BadLength(u16, u16),
    #[error("command element ({0:04X},{1:04X}) has the wrong size for its VR")]
    BadValue(u16, u16),
    #[error("command set lacks Command Field")]
    NoCommandField,
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .trim_end_matches(['\0', ' '])
        .trim_start()
        .to_string()
}

fn us(g: u16, e: u16, v: &[u8]) -> Result<u16, CommandError> {
    if v.len() != 2 {
        return Err(CommandError::BadValue(g, e));
    }
    Ok(u16::from_le_bytes([v[0], v[1]]))
}

pub fn decode_command(buf: &[u8]) -> Result<Command, CommandError> {
    let mut c = Command::default();
    let mut have_field = false;
    let mut i = 0usize;
    while i < buf.len() {
        if buf.len() - i < 8 {
            return Err(CommandError::Truncated(i));
        }
        let g = u16::from_le_bytes([buf[i], buf[i + 1]]);
        let e = u16::from_le_bytes([buf[i + 2], buf[i + 3]]);
        let len = u32::from_le_bytes([buf[i + 4], buf[i + 5], buf[i + 6], buf[i + 7]]);
        if g != 0x0000 {
            return Err(CommandError::WrongGroup(g, e));
        }
        i += 8;
        if len == 0xFFFF_FFFF || len as usize > buf.len() - i {
            return Err(CommandError::BadLength(g, e));
        }
        let v = &buf[i..i + len as usize];
        i += len as usize;
        match e {
            0x0002 => c.affected_sop_class_uid = text(v),
            0x0100 => {
                c.command_field = us(g, e, v)?;
                have_field = true;
            }
            0x0110 => c.message_id = us(g, e, v)?,
            0x0120 => c.message_id_responded = Some(us(g, e, v)?),
            0x0800 => c.data_set_type = us(g, e, v)?,
            0x0900 => c.status = Some(us(g, e, v)?),
            0x0902 => c.error_comment = Some(text(v)),
            0x1000 => c.affected_sop_instance_uid = text(v),
            _ => {}
        }
    }
    if !have_field {
        return Err(CommandError::NoCommandField);
    }
    Ok(c)
}

struct Enc(Vec<u8>);

impl Enc {
    fn el(&mut self, e: u16, v: &[u8]) {
        self.0.extend_from_slice(&0u16.to_le_bytes());
        self.0.extend_from_slice(&e.to_le_bytes());
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v);
    }
    fn us(&mut self, e: u16, v: u16) {
        self.el(e, &v.to_le_bytes());
    }
    fn ui(&mut self, e: u16, uid: &str) {
        let mut b = uid.as_bytes().to_vec();
        if b.len() % 2 == 1 {
            b.push(0);
        }
        self.el(e, &b);
    }
    fn text(&mut self, e: u16, s: &str) {
        let mut b: Vec<u8> = s
            .bytes()
            .filter(|c| (0x20..0x7f).contains(c))
            .take(64)
            .collect();
        if b.len() % 2 == 1 {
            b.push(b' ');
        }
        self.el(e, &b);
    }
    /// Prepend Command Group Length.
    fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() + 12);
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&4u32.to_le_bytes());
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.0);
        out
    }
}

pub fn c_echo_rsp(message_id: u16, sop_class: &str) -> Vec<u8> {
    let mut e = Enc(Vec::new());
    e.ui(0x0002, sop_class);
    e.us(0x0100, C_ECHO_RSP);
    e.us(0x0120, message_id);
    e.us(0x0800, NO_DATASET);
    e.us(0x0900, status::SUCCESS);
    e.finish()
}

pub fn c_store_rsp(
    message_id: u16,
    sop_class: &str,
    sop_instance: &str,
    status: u16,
    comment: Option<&str>,
) -> Vec<u8> {
    let mut e = Enc(Vec::new());
    e.ui(0x0002, sop_class);
    e.us(0x0100, C_STORE_RSP);
    e.us(0x0120, message_id);
    e.us(0x0800, NO_DATASET);
    e.us(0x0900, status);
    if let Some(c) = comment {
        e.text(0x0902, c);
    }
    e.ui(0x1000, sop_instance);
    e.finish()
}

/// A response to an operation the node does not provide.
pub fn unrecognized_rsp(message_id: u16, command_field: u16, sop_class: &str) -> Vec<u8> {
    let mut e = Enc(Vec::new());
    if !sop_class.is_empty() {
        e.ui(0x0002, sop_class);
    }
    e.us(0x0100, command_field | 0x8000);
    e.us(0x0120, message_id);
    e.us(0x0800, NO_DATASET);
    e.us(0x0900, status::UNRECOGNIZED_OPERATION);
    e.finish()
}

pub fn c_store_rq(message_id: u16, sop_class: &str, sop_instance: &str) -> Vec<u8> {
    let mut e = Enc(Vec::new());
    e.ui(0x0002, sop_class);
    e.us(0x0100, C_STORE_RQ);
    e.us(0x0110, message_id);
    e.us(0x0700, 0x0000);
    e.us(0x0800, 0x0000);
    e.ui(0x1000, sop_instance);
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let b = c_store_rsp(
            7,
            "1.2.3",
            "1.2.3.4.5",
            status::OUT_OF_RESOURCES,
            Some("disk"),
        );
        let c = decode_command(&b).unwrap();
        assert_eq!(c.command_field, C_STORE_RSP);
        assert_eq!(c.message_id_responded, Some(7));
        assert_eq!(c.status, Some(0xA700));
        assert_eq!(c.affected_sop_instance_uid, "1.2.3.4.5");
        assert!(!c.has_data_set());
        let b = c_store_rq(9, "1.2.3", "1.2.3.4");
        let c = decode_command(&b).unwrap();
        assert_eq!((c.command_field, c.message_id), (C_STORE_RQ, 9));
        assert!(c.has_data_set());
    }

    #[test]
    fn hostile_commands() {
        assert!(decode_command(&[]).is_err());
        assert!(decode_command(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).is_err());
        let mut b = c_echo_rsp(1, VERIFICATION);
        b.truncate(b.len() - 1);
        assert!(decode_command(&b).is_err());
        assert!(decode_command(&[8, 0, 0x18, 0, 2, 0, 0, 0, 1, 0]).is_err());
    }

    #[test]
    fn status_classes() {
        assert_eq!(classify_status(0), StatusClass::Success);
        assert_eq!(classify_status(0xB000), StatusClass::Warning);
        assert_eq!(classify_status(0xB007), StatusClass::Warning);
        assert_eq!(classify_status(0xA700), StatusClass::Failure);
        assert_eq!(classify_status(0xC000), StatusClass::Failure);
        assert_eq!(classify_status(0x0122), StatusClass::Failure);
    }
}
