//! DICOM networking: the service the PACS sends to ([`scp`]), the sender that returns
//! results ([`scu`]) and the DIMSE command sets both use ([`dimse`]).
pub mod admission;
pub mod dimse;
pub mod pdata;
pub mod scp;
pub mod scu;
pub mod tls;
