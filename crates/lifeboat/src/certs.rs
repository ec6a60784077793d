//! When the certificates a controller trusts and presents expire, as a metric
//! (`lifeboat_certificate_expiry_timestamp_seconds`) for the alert rule in
//! examples/prometheus/alerts.yml. Today these are the etcd client's files (`[controller.etcd]`
//! `ca_file`, `cert_file`); lifeboat's own links have no TLS yet.
//!
//! The files are read off the runtime (a hung disk must not stall a controller that
//! grants leases) when the controller starts and every [`EVERY`] after, so a renewed
//! certificate shows without a restart; a scrape only reads what was last found.

use anyhow::{Context, Result};
use lifeboat_core::metrics::{Kind, Page};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the files are read again.
pub(crate) const EVERY: Duration = Duration::from_secs(300);
const METRIC: &str = "lifeboat_certificate_expiry_timestamp_seconds";

/// One certificate of one file: its subject and when it stops being valid.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Expiry {
    pub file: String,
    /// What the file is for ("etcd-ca", "etcd-client").
    pub used_as: String,
    pub subject: String,
    pub not_after_unix: i64,
}

/// Every certificate in a PEM file's bytes.
pub(crate) fn parse(pem: &[u8]) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.context("not PEM")?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = block
            .parse_x509()
            .map_err(|e| anyhow::anyhow!("a CERTIFICATE block that is not X.509: {e}"))?;
        out.push((
            cert.subject().to_string(),
            cert.validity().not_after.timestamp(),
        ));
    }
    anyhow::ensure!(!out.is_empty(), "no certificate in it");
    Ok(out)
}

/// The figures the metrics page shows, kept fresh by [`watch`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Figures(Arc<Mutex<Vec<Expiry>>>);

impl Figures {
    pub(crate) fn render(&self, page: &mut Page) {
        let figures = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        page.family(
            METRIC,
            Kind::Gauge,
            "When a certificate lifeboat uses stops being valid (its notAfter), in seconds since the Unix epoch.",
        );
        for e in &figures {
            page.sample(
                METRIC,
                &[
                    ("file", &e.file),
                    ("used_as", &e.used_as),
                    ("subject", &e.subject),
                ],
                e.not_after_unix as f64,
            );
        }
    }
}

/// Read `files` now and every [`EVERY`] until cancelled. A file that cannot be read or
/// parsed is logged (once per change of its error) and leaves its last figures out:
/// an expiry alert cannot be raised from a certificate nobody can read, and the
/// controller keeps running.
pub(crate) async fn watch(
    files: Vec<(String, PathBuf)>,
    figures: Figures,
    cancel: CancellationToken,
) {
    let mut last_errors: Vec<Option<String>> = vec![None; files.len()];
    loop {
        let mut found = Vec::new();
        for (i, (used_as, path)) in files.iter().enumerate() {
            let p = path.clone();
            let read = tokio::task::spawn_blocking(move || std::fs::read(&p)).await;
            let result = match read {
                Ok(Ok(bytes)) => parse(&bytes),
                Ok(Err(e)) => Err(anyhow::Error::from(e).context("reading it")),
                Err(e) => Err(anyhow::anyhow!("the reader panicked: {e}")),
            };
            match result {
                Ok(certs) => {
                    last_errors[i] = None;
                    for (subject, not_after_unix) in certs {
                        found.push(Expiry {
                            file: path.display().to_string(),
                            used_as: used_as.clone(),
                            subject,
                            not_after_unix,
                        });
                    }
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    if last_errors[i].as_deref() != Some(msg.as_str()) {
                        tracing::warn!(
                            "{}: its certificate's expiry is not known ({used_as}): {msg}",
                            path.display()
                        );
                        last_errors[i] = Some(msg);
                    }
                }
            }
        }
        *figures.0.lock().unwrap_or_else(|p| p.into_inner()) = found;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// The certificate files of a controller's config, with what each is for.
pub(crate) fn controller_files(cfg: &lifeboat_config::Config) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    if let Some(e) = &cfg.controller.etcd {
        if let Some(p) = &e.ca_file {
            out.push(("etcd-ca".to_owned(), p.clone()));
        }
        if let Some(p) = &e.cert_file {
            out.push(("etcd-client".to_owned(), p.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, year: i32) -> String {
        let mut params = rcgen::CertificateParams::new(vec![format!("{cn}.example")]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.not_after = rcgen::date_time_ymd(year, 1, 2);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn every_certificate_of_a_file_is_read_with_its_expiry() {
        // A chain: two certificates in one file, and a key that is skipped.
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let pem = format!("{}{}{key}", cert("leaf", 2031), cert("ca", 2035));
        let got = parse(pem.as_bytes()).unwrap();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].0.contains("CN=leaf"), "{got:?}");
        // 2031-01-02T00:00:00Z and 2035-01-02T00:00:00Z.
        assert_eq!(got[0].1, 1_925_078_400);
        assert_eq!(got[1].1, 2_051_308_800);
        let e = parse(b"not a certificate").unwrap_err();
        assert!(format!("{e:#}").contains("no certificate"), "{e:#}");
    }

    #[tokio::test]
    async fn the_page_shows_what_the_files_say_and_a_bad_file_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("client.pem");
        std::fs::write(&good, cert("client", 2031)).unwrap();
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "garbage").unwrap();
        let figures = Figures::default();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(watch(
            vec![
                ("etcd-ca".into(), bad.clone()),
                ("etcd-client".into(), good.clone()),
            ],
            figures.clone(),
            cancel.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            let mut page = Page::new();
            figures.render(&mut page);
            let text = page.render();
            if text.contains("used_as=\"etcd-client\"") {
                break text;
            }
            assert!(tokio::time::Instant::now() < deadline, "{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(text.contains("} 1925078400"), "{text}");
        assert!(!text.contains("etcd-ca"), "{text}");
        cancel.cancel();
        task.await.unwrap();
    }
}
