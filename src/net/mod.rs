//! DICOM networking: the service the PACS sends to ([`scp`]), the sender that returns
//! results ([`scu`]) and the DIMSE command sets both use ([`dimse`]).
pub mod admission;
pub mod dimse;
pub mod fence;
pub mod pdata;
pub mod refusals;
pub mod scp;
pub mod scu;
pub mod tls;

/// The presentation contexts a peer accepted, as (id, abstract syntax, transfer syntax), the
/// UIDs without their padding: the SCP's and the SCU's view of a negotiated association.
pub(crate) fn accepted_contexts(
    pcs: &[dicom_ul::pdu::PresentationContextNegotiated],
) -> Vec<(u8, String, String)> {
    pcs.iter()
        .filter(|pc| pc.reason == dicom_ul::pdu::PresentationContextResultReason::Acceptance)
        .map(|pc| {
            (
                pc.id,
                pc.abstract_syntax.trim_end_matches('\0').to_string(),
                pc.transfer_syntax.trim_end_matches('\0').to_string(),
            )
        })
        .collect()
}
