//! `/`: the HTML dashboard, rendered from the same views as `/v1/status`.

use super::*;

pub(super) async fn dashboard(State(c): State<Arc<Controller>>) -> Html<String> {
    let s = c.status_view().await;
    let journal = c.store.journal(0, 100_000).await.unwrap_or_default();
    let esc = |t: &str| {
        t.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut rows = String::new();
    for r in &s.regions {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td class=\"{:?}\">{:?}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(r.name.as_str()),
            if r.active { "<b>active</b>" } else { "standby" },
            r.health,
            r.health,
            r.agent_epoch.map_or("-".into(), |e| e.to_string()),
            r.last_report_ms.map_or("never".into(), |m| format!("{m} ms ago")),
            esc(&r.roles.iter().map(|x| format!("{}: {:?} {}", x.name, x.role, x.detail)).collect::<Vec<_>>().join("<br>")),
            // rule 7: why a standby cannot be promoted, and who serves on promises.
            esc(&match (&r.promised, r.witness_lost) {
                (Some(p), _) => format!("promised {} not to activate for {} ms", p.to, p.remaining_ms),
                (None, true) => "witness lost: holds its lease on promises".to_owned(),
                (None, false) => "-".to_owned(),
            }),
        ));
    }
    let mut jrows = String::new();
    for e in journal.iter().rev().take(50) {
        jrows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.seq,
            e.at_unix_ms,
            e.epoch,
            e.kind.as_str(),
            esc(&format!(
                "{} {}",
                e.region.as_ref().map_or("", |r| r.as_str()),
                e.detail
            ))
        ));
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=2><title>lifeboat — {dep}</title>\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}.Healthy{{color:green}}.Unhealthy{{color:red}}</style></head>\
<body><h1>lifeboat — {dep}</h1>{leader}<p>epoch <b>{epoch}</b> · active <b>{active}</b> · phase {phase} · mode {mode} · failovers {fo}</p>\
<h2>Regions</h2><table><tr><th>region</th><th>role</th><th>health</th><th>agent epoch</th><th>last report</th><th>data roles</th><th>witness</th></tr>{rows}</table>\
<h2>Journal (newest first)</h2><table><tr><th>#</th><th>unix ms</th><th>epoch</th><th>step</th><th>detail</th></tr>{jrows}</table></body></html>",
        dep = esc(&s.deployment),
        epoch = s.epoch,
        active = s.active.as_ref().map_or("none".into(), |r| r.to_string()),
        phase = esc(&s.phase),
        mode = s.mode,
        fo = s.failovers,
        leader = s.leadership.as_ref().map_or(String::new(), |v| format!(
            "<p>controller <b>{}</b> leads · controllers: {} · etcd: {}</p>",
            esc(&v.this),
            esc(&v
                .controllers
                .iter()
                .map(|c| format!("{} {}", c.name, if c.up { "up" } else { "down" }))
                .collect::<Vec<_>>()
                .join(", ")),
            esc(&v
                .etcd
                .iter()
                .map(|e| format!("{} {}", e.endpoint, if e.healthy { "up" } else { "down" }))
                .collect::<Vec<_>>()
                .join(", "))
        )),
    ))
}
