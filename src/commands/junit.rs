//! `--junit FILE`: the result as JUnit XML for Jenkins' `junit` step and
//! Bitbucket's test reports. One testsuite per service, one testcase per host;
//! a rejected request is one failing testcase named `request`.

use crate::protocol::report::{wire_name, Finding, HostReport, HostStatus, Report};

pub fn render(report: &Report) -> String {
    if let Some(findings) = &report.findings {
        return render_findings(findings, report.duration_ms);
    }
    let action = report.action.as_ref().map_or("hostenv", wire_name);
    let mut suites: Vec<(String, Vec<&HostReport>)> = Vec::new();
    match &report.deployments {
        Some(deployments) => {
            for deployment in deployments {
                suites.push((
                    deployment.service.clone(),
                    deployment.hosts.iter().collect(),
                ));
            }
        }
        None => suites.push((
            report.service.clone().unwrap_or_else(|| action.to_string()),
            report.hosts.iter().collect(),
        )),
    }
    let mut xml = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let rejected = report.hosts.is_empty()
        && report
            .deployments
            .as_ref()
            .is_none_or(|d| d.iter().all(|d| d.hosts.is_empty()));
    let total: usize = suites.iter().map(|(_, hosts)| hosts.len()).sum();
    xml.push_str(&format!(
        "<testsuites name=\"hostenv {}\" tests=\"{}\" time=\"{}\">\n",
        escape(action),
        if rejected { 1 } else { total },
        seconds(report.duration_ms)
    ));
    if rejected {
        let name = suites.first().map(|(n, _)| n.clone()).unwrap_or_default();
        let (kind, message) = report
            .error
            .as_ref()
            .map(|e| (wire_name(&e.kind), e.message.clone()))
            .unwrap_or_default();
        let failed = !report.ok && report.error.is_some();
        xml.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"1\" failures=\"{}\" skipped=\"0\">\n    <testcase classname=\"{}\" name=\"{} request\">\n",
            escape(&name),
            u8::from(failed),
            escape(&name),
            escape(action)
        ));
        if failed {
            xml.push_str(&failure(kind, &message));
        }
        xml.push_str("    </testcase>\n  </testsuite>\n</testsuites>\n");
        return xml;
    }
    for (name, hosts) in suites {
        let failures = hosts.iter().filter(|h| is_failure(h.status)).count();
        let skipped = hosts
            .iter()
            .filter(|h| h.status == HostStatus::Skipped)
            .count();
        xml.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\">\n",
            escape(&name),
            hosts.len()
        ));
        for host in hosts {
            let ms: u64 = host.steps.iter().map(|s| s.ms).sum();
            xml.push_str(&format!(
                // The action in the name: a build that checks, then deploys,
                // reports two testcases per host, told apart.
                "    <testcase classname=\"{}\" name=\"{} {}\" time=\"{}\">\n",
                escape(&name),
                escape(action),
                escape(&host.host),
                seconds(ms)
            ));
            let (kind, message) = host
                .error
                .as_ref()
                .map(|e| (wire_name(&e.kind), e.message.clone()))
                .unwrap_or_default();
            if host.status == HostStatus::Skipped {
                xml.push_str(&format!(
                    "      <skipped message=\"{}\"/>\n",
                    escape(&message)
                ));
            } else if is_failure(host.status) {
                xml.push_str(&failure(kind, &message));
            }
            xml.push_str(&format!(
                "      <system-out>{}</system-out>\n    </testcase>\n",
                escape(&format!("status: {}", wire_name(&host.status)))
            ));
        }
        xml.push_str("  </testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

/// `lint`: one testcase per finding, or one passing testcase for a clean repository.
fn render_findings(findings: &[Finding], duration_ms: u64) -> String {
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"hostenv lint\" tests=\"{}\" time=\"{}\">\n  <testsuite name=\"lint\" tests=\"{}\" failures=\"{}\" skipped=\"0\">\n",
        findings.len().max(1),
        seconds(duration_ms),
        findings.len().max(1),
        findings.len()
    );
    if findings.is_empty() {
        xml.push_str("    <testcase classname=\"lint\" name=\"repository\"/>\n");
    }
    for finding in findings {
        let place = match finding.line {
            Some(line) => format!("{}:{line}", finding.file),
            None => finding.file.clone(),
        };
        xml.push_str(&format!(
            "    <testcase classname=\"lint\" name=\"{}\">\n",
            escape(&place)
        ));
        xml.push_str(&failure(wire_name(&finding.kind), &finding.message));
        xml.push_str("    </testcase>\n");
    }
    xml.push_str("  </testsuite>\n</testsuites>\n");
    xml
}

fn is_failure(status: HostStatus) -> bool {
    matches!(
        status,
        HostStatus::Failed
            | HostStatus::RolledBack
            | HostStatus::RollbackFailed
            | HostStatus::Unhealthy
            | HostStatus::Unknown
    )
}

fn failure(kind: &str, message: &str) -> String {
    format!(
        "      <failure type=\"{}\" message=\"{}\">{}</failure>\n",
        escape(kind),
        escape(message),
        escape(message)
    )
}

fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// XML text and attribute escaping, of text made plain first (a host's text
/// holds no character XML 1.0 forbids, nor any that steers a terminal).
fn escape(text: &str) -> String {
    let text = crate::protocol::text::plain(text);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(escape("x\u{fffe}\u{ffff}\u{1b}[2Jy"), "x[2Jy");
    }
}
