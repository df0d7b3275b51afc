//! Output: aligned text for people ([`render`]), the report itself as JSON for
//! programs ([`render_json`]).

use super::report::HostReport;

/// Renders the report as aligned text: one line per feature (✓/✗, id,
/// detail) with the detection method beneath it, then one line per tier.
pub fn render(report: &HostReport) -> String {
    let mut out = String::new();
    let who = if report.euid == 0 { " (root)" } else { "" };
    out.push_str(&format!(
        "Warren host check: kernel {}, euid {}{}\n\nFeatures\n",
        report.kernel, report.euid, who
    ));
    let width = report
        .features
        .iter()
        .map(|f| f.name.chars().count())
        .max()
        .unwrap_or(0);
    for f in &report.features {
        out.push_str(&format!(
            "  {} {:<width$}  {}\n",
            mark(f.available),
            f.name,
            f.detail
        ));
        out.push_str(&format!("    {:<width$}  how: {}\n", "", f.how));
    }
    out.push_str("\nTiers\n");
    let twidth = report
        .tiers
        .iter()
        .map(|t| t.tier.chars().count())
        .max()
        .unwrap_or(0);
    for t in &report.tiers {
        let status = if t.runnable {
            "runnable".to_string()
        } else if t.missing.is_empty() {
            "not runnable".to_string()
        } else {
            format!("not runnable, missing {}", t.missing.join(", "))
        };
        let note = if t.note.is_empty() {
            String::new()
        } else {
            format!(" — {}", t.note)
        };
        out.push_str(&format!(
            "  {} {:<twidth$}  {}{}\n",
            mark(t.runnable),
            t.tier,
            status,
            note
        ));
    }
    out
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

/// The report as pretty-printed JSON (`warren check --json`): the serialized
/// [`HostReport`], field names stable and snake_case.
pub fn render_json(report: &HostReport) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(report)
}
