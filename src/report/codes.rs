//! Coded concepts used in the SR and KOS, and the private `99PRIMA` coding scheme.
//!
//! Standard codes are written with the Code Meaning the standard (and PixelMed's context
//! group tables) give them, because validators compare meanings. Model labels become
//! `99PRIMA` codes: Code Value is SH (≤ 16 characters) while upstream labels are longer
//! (`vascular_hemorrhagic_intracranial_hemorrhage`), so the value is a short hash of the
//! label — stable across model versions — and the readable text goes into Code Meaning; the
//! raw label itself is kept verbatim in the Tracking Identifier.

use sha2::{Digest, Sha256};

/// One coded entry (Code Sequence Macro, PS3.3 Table 8.8-1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub value: String,
    pub scheme: String,
    pub meaning: String,
}

impl Code {
    pub fn new(value: &str, scheme: &str, meaning: &str) -> Self {
        Self {
            value: value.to_string(),
            scheme: scheme.to_string(),
            meaning: truncate_lo(meaning),
        }
    }
}

/// Designator of our private coding scheme (declared in Coding Scheme Identification).
pub const PRIMA_SCHEME: &str = "99PRIMA";
pub const PRIMA_SCHEME_NAME: &str = "Prima brain MRI model outputs (prima-node)";
pub const PRIMA_SCHEME_ORG: &str = "prima-node project";

pub fn dcm(value: &str, meaning: &str) -> Code {
    Code::new(value, "DCM", meaning)
}
pub fn sct(value: &str, meaning: &str) -> Code {
    Code::new(value, "SCT", meaning)
}
pub fn prima(value: &str, meaning: &str) -> Code {
    Code::new(value, PRIMA_SCHEME, meaning)
}

pub fn imaging_measurement_report() -> Code {
    dcm("126000", "Imaging Measurement Report")
}
/// The title of a report without image regions (no explanation): CID 7021 is extensible,
/// and this LOINC title (CID 7000's) tells a viewer not to look for measurements to draw —
/// OHIF 3.13 fails to open an "Imaging Measurement Report" that has none, and shows this one
/// as text, every finding included.
pub fn diagnostic_imaging_report() -> Code {
    Code::new("18748-4", "LN", "Diagnostic imaging report")
}
pub fn imaging_measurements() -> Code {
    dcm("126010", "Imaging Measurements")
}
pub fn measurement_group() -> Code {
    dcm("125007", "Measurement Group")
}
pub fn language() -> Code {
    dcm("121049", "Language of Content Item and Descendants")
}
pub fn english_us() -> Code {
    Code::new("en-US", "RFC5646", "English (United States)")
}
pub fn observer_type() -> Code {
    dcm("121005", "Observer Type")
}
pub fn device() -> Code {
    dcm("121007", "Device")
}
pub fn device_observer_uid() -> Code {
    dcm("121012", "Device Observer UID")
}
pub fn device_observer_name() -> Code {
    dcm("121013", "Device Observer Name")
}
pub fn device_observer_manufacturer() -> Code {
    dcm("121014", "Device Observer Manufacturer")
}
pub fn device_observer_model_name() -> Code {
    dcm("121015", "Device Observer Model Name")
}
pub fn device_observer_serial_number() -> Code {
    dcm("121016", "Device Observer Serial Number")
}
pub fn procedure_reported() -> Code {
    dcm("121058", "Procedure reported")
}
pub fn mri_unspecified_body_region() -> Code {
    Code::new("25056-3", "LN", "MRI unspecified body region")
}
pub fn image_library() -> Code {
    dcm("111028", "Image Library")
}
pub fn image_library_group() -> Code {
    dcm("126200", "Image Library Group")
}
pub fn modality() -> Code {
    dcm("121139", "Modality")
}
/// CID 29 code of an acquisition modality, for the few a brain study can carry; `None` for
/// values outside that list (the descriptor is then left out rather than invented).
pub fn acquisition_modality(modality: &str) -> Option<Code> {
    let meaning = match modality {
        "MR" => "Magnetic Resonance",
        "CT" => "Computed Tomography",
        "PT" => "Positron emission tomography",
        "NM" => "Nuclear Medicine",
        "US" => "Ultrasound",
        _ => return None,
    };
    Some(dcm(modality, meaning))
}
pub fn frame_of_reference_uid() -> Code {
    dcm("112227", "Frame of Reference UID")
}
pub fn pixel_data_rows() -> Code {
    dcm("110910", "Pixel Data Rows")
}
pub fn pixel_data_columns() -> Code {
    dcm("110911", "Pixel Data Columns")
}
pub fn pixels() -> Code {
    Code::new("{pixels}", "UCUM", "pixels")
}
/// Concept name of an Image Library entry (TID 1601): highdicom writes it and its readers
/// expect every content item to have one.
pub fn source() -> Code {
    sct("260753009", "Source")
}
pub fn source_of_measurement() -> Code {
    dcm("121112", "Source of Measurement")
}
pub fn tracking_identifier() -> Code {
    dcm("112039", "Tracking Identifier")
}
pub fn tracking_unique_identifier() -> Code {
    dcm("112040", "Tracking Unique Identifier")
}
pub fn finding() -> Code {
    dcm("121071", "Finding")
}
pub fn finding_site() -> Code {
    sct("363698007", "Finding Site")
}
pub fn brain() -> Code {
    sct("12738006", "Brain")
}
pub fn algorithm_name() -> Code {
    dcm("111001", "Algorithm Name")
}
pub fn algorithm_version() -> Code {
    dcm("111003", "Algorithm Version")
}
pub fn algorithm_parameters() -> Code {
    dcm("111002", "Algorithm Parameters")
}
pub fn present() -> Code {
    sct("52101004", "Present")
}
pub fn absent() -> Code {
    sct("272519000", "Absent")
}
pub fn no_units() -> Code {
    Code::new("1", "UCUM", "no units")
}
/// The NUM concept: what the model emits is the head output minus the head's threshold. It is
/// not a calibrated probability, and the name says so.
pub fn decision_margin() -> Code {
    prima(
        "PRIMA-MARGIN",
        "Prima decision margin (score minus threshold)",
    )
}
/// The NUM a viewer shows for an explained region: its LIME weight as a percentage of the
/// finding's most important region (`sr::importance_percent`).
pub fn lime_importance() -> Code {
    prima("PRIMA-LIME-PCT", "LIME importance (% of the top region)")
}
pub fn percent() -> Code {
    Code::new("%", "UCUM", "percent")
}
pub fn qualitative_evaluations() -> Code {
    Code::new("C0034375", "UMLS", "Qualitative Evaluations")
}
pub fn priority() -> Code {
    sct("260870009", "Priority")
}
pub fn recommendation() -> Code {
    dcm("121075", "Recommendation")
}
pub fn cad_summary() -> Code {
    dcm("111017", "CAD Processing and Findings Summary")
}
pub fn comment() -> Code {
    dcm("121106", "Comment")
}
pub fn of_interest() -> Code {
    dcm("113000", "Of Interest")
}
pub fn key_object_description() -> Code {
    dcm("113012", "Key Object Description")
}

/// CID 6047 "CAD Processing and Findings Summary".
pub fn cad_summary_value(all_succeeded: bool, any_succeeded: bool, with_findings: bool) -> Code {
    match (any_succeeded, all_succeeded, with_findings) {
        (false, _, _) => dcm("111245", "No algorithms succeeded; without findings"),
        (true, true, true) => dcm("111242", "All algorithms succeeded; with findings"),
        (true, true, false) => dcm("111241", "All algorithms succeeded; without findings"),
        (true, false, true) => dcm("111244", "Not all algorithms succeeded; with findings"),
        (true, false, false) => dcm("111243", "Not all algorithms succeeded; without findings"),
    }
}

/// Categories that upstream uses as the first word of its diagnosis labels
/// (`tumor_adult_glioma`, `vascular_…`): shown as a prefix of the readable meaning.
const CATEGORY_WORDS: &[&str] = &[
    "tumor",
    "vascular",
    "cyst",
    "structural",
    "ventricular",
    "infection",
    "infectious",
    "inflammatory",
    "congenital",
    "developmental",
    "degenerative",
    "trauma",
    "postoperative",
    "neoplastic",
    "other",
];

/// Human-readable form of a model label: `tumor_adult_high_grade_glioma` →
/// ("Tumor: adult high grade glioma", "adult high grade glioma").
pub fn humanize_label(label: &str) -> (String, String) {
    let words: Vec<&str> = label
        .split(|c: char| c == '_' || c == '-' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return (label.to_string(), label.to_string());
    }
    let first = words[0].to_ascii_lowercase();
    if words.len() > 1 && CATEGORY_WORDS.contains(&first.as_str()) {
        let rest = words[1..].join(" ");
        (format!("{}: {}", capitalize(&first), rest), rest)
    } else {
        let all = words.join(" ");
        (capitalize(&all), all)
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Code Value for a model label: `<prefix>-` + uppercase hex of SHA-256(label), 16 characters
/// in total (SH limit). Depends on the label only, so it survives re-ordered or resized heads.
fn label_code_value(prefix: &str, label: &str) -> String {
    let digest = Sha256::digest(label.as_bytes());
    let hex = hex::encode_upper(digest);
    let take = 16 - prefix.len() - 1;
    format!("{prefix}-{}", &hex[..take])
}

/// `99PRIMA` code of a diagnosis head.
pub fn diagnosis_code(label: &str) -> Code {
    let (meaning, _) = humanize_label(label);
    prima(&label_code_value("DX", label), &meaning)
}

/// `99PRIMA` code of a referral head, phrased as the recommendation it stands for.
pub fn referral_code(label: &str) -> Code {
    let (_, short) = humanize_label(label);
    prima(
        &label_code_value("RF", label),
        &format!("Referral to {short}"),
    )
}

/// `99PRIMA` code of a priority class (`none`, `low`, `medium`, `high`).
pub fn priority_code(class: &str) -> Code {
    let upper: String = class
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '-'
            }
        })
        .collect();
    let value = if upper.len() <= 7 {
        format!("PRIORITY-{upper}")
    } else {
        label_code_value("PR", class)
    };
    prima(&value, &capitalize(class))
}

/// LO holds at most 64 characters; cut at a character boundary.
pub fn truncate_lo(s: &str) -> String {
    truncate_chars(s, 64)
}

pub fn truncate_chars(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_codes_fit_sh_and_are_stable() {
        for l in [
            "vascular_hemorrhagic_intracranial_hemorrhage",
            "cyst_arachnoid_cyst",
            "x",
        ] {
            let c = diagnosis_code(l);
            assert_eq!(c.value.len(), 16);
            assert_eq!(c, diagnosis_code(l));
            assert_eq!(c.scheme, "99PRIMA");
        }
        assert_ne!(diagnosis_code("a").value, diagnosis_code("b").value);
        assert_ne!(diagnosis_code("a").value, referral_code("a").value);
    }

    #[test]
    fn humanized_labels_read_well() {
        assert_eq!(
            humanize_label("tumor_adult_high_grade_glioma"),
            (
                "Tumor: adult high grade glioma".to_string(),
                "adult high grade glioma".to_string()
            )
        );
        assert_eq!(humanize_label("neurology").0, "Neurology");
        assert_eq!(
            referral_code("neuro_oncology").meaning,
            "Referral to neuro oncology"
        );
        assert_eq!(priority_code("high").value, "PRIORITY-HIGH");
        assert_eq!(priority_code("medium").meaning, "Medium");
    }

    #[test]
    fn cad_summary_covers_cid_6047() {
        assert_eq!(cad_summary_value(true, true, true).value, "111242");
        assert_eq!(cad_summary_value(true, true, false).value, "111241");
        assert_eq!(cad_summary_value(false, true, true).value, "111244");
        assert_eq!(cad_summary_value(false, true, false).value, "111243");
        assert_eq!(cad_summary_value(false, false, false).value, "111245");
    }
}
