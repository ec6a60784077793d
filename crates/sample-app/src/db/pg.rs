//! PostgreSQL statements.
use super::*;
use tokio_postgres::error::SqlState;

const CREATED_AT: &str =
    r#"to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#;

fn err(ep: &DbEndpoint, e: &tokio_postgres::Error) -> DbError {
    let engine = ep.engine;
    let addr = ep.addr();
    let Some(db) = e.as_db_error() else {
        // No server error: the socket broke, closed or timed out.
        let mut reason = e.to_string();
        if let Some(src) = std::error::Error::source(e) {
            reason = format!("{reason}: {src}");
        }
        return DbError::Unreachable {
            engine,
            addr,
            reason,
        };
    };
    let reason = db.message().to_owned();
    let code = db.code();
    if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
        DbError::ReadOnly {
            engine,
            addr,
            reason,
        }
    } else if code.code().starts_with("08")
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::TOO_MANY_CONNECTIONS
    {
        DbError::Unreachable {
            engine,
            addr,
            reason,
        }
    } else {
        DbError::Query {
            engine,
            addr,
            reason: format!("{reason} (SQLSTATE {})", code.code()),
        }
    }
}

fn missing_table(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNDEFINED_TABLE)
}

async fn connect_one(
    cfg: &tokio_postgres::Config,
    ep: &DbEndpoint,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), DbError> {
    let unreachable = |reason: String| DbError::Unreachable {
        engine: ep.engine,
        addr: ep.addr(),
        reason,
    };
    let (client, connection) = tokio::time::timeout(
        CONNECT_TIMEOUT + Duration::from_secs(1),
        cfg.connect(tokio_postgres::NoTls),
    )
    .await
    .map_err(|_| unreachable("connecting timed out".into()))?
    .map_err(|e| match err(ep, &e) {
        DbError::Query { reason, .. } => unreachable(reason),
        other => other,
    })?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "PostgreSQL connection ended");
        }
    });
    Ok((client, task))
}

pub(super) async fn connect(
    ep: &DbEndpoint,
    password: Option<String>,
) -> Result<(Conn, Vec<tokio::task::JoinHandle<()>>), DbError> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&ep.host)
        .port(ep.port)
        .dbname(&ep.dbname)
        .user(&ep.user)
        .application_name(APPLICATION_NAME)
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(p) = password {
        cfg.password(p);
    }
    let attempts =
        futures::future::join_all((0..PG_CONNECTIONS).map(|_| connect_one(&cfg, ep))).await;
    let mut clients = Vec::with_capacity(PG_CONNECTIONS);
    let mut tasks = Vec::with_capacity(PG_CONNECTIONS);
    let mut failed = None;
    for a in attempts {
        match a {
            Ok((c, t)) => {
                clients.push(c);
                tasks.push(t);
            }
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    if let Some(e) = failed {
        tasks.iter().for_each(|t| t.abort());
        return Err(e);
    }
    let Some(client) = clients.first() else {
        return Err(unreachable_none(ep));
    };
    let setup = async {
        let primary: bool = client
            .query_one("SELECT NOT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| err(ep, &e))?
            .get(0);
        if !primary {
            return Ok(());
        }
        for stmt in [
            "CREATE TABLE IF NOT EXISTS entries (\
               id VARCHAR(200) PRIMARY KEY, \
               body TEXT NOT NULL, \
               region TEXT NOT NULL, \
               created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            "CREATE INDEX IF NOT EXISTS entries_created_at ON entries (created_at)",
        ] {
            if let Err(e) = client.batch_execute(stmt).await {
                // Two applications creating the table at once: the loser sees a
                // duplicate; the table is there either way.
                let dup = e.code() == Some(&SqlState::UNIQUE_VIOLATION)
                    || e.code() == Some(&SqlState::DUPLICATE_TABLE);
                if !dup {
                    return Err(err(ep, &e));
                }
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = setup {
        tasks.iter().for_each(|t| t.abort());
        return Err(e);
    }
    let clients = PgClients {
        clients,
        next: std::sync::atomic::AtomicUsize::new(0),
    };
    Ok((Conn::Pg(Arc::new(clients)), tasks))
}

fn unreachable_none(ep: &DbEndpoint) -> DbError {
    DbError::Unreachable {
        engine: ep.engine,
        addr: ep.addr(),
        reason: "no connection made".into(),
    }
}

fn entry(row: &tokio_postgres::Row) -> Entry {
    Entry {
        id: row.get(0),
        body: row.get(1),
        region: row.get(2),
        created_at: row.get(3),
    }
}

pub(super) async fn insert(
    c: &tokio_postgres::Client,
    ep: &DbEndpoint,
    id: &str,
    body: &str,
    region: &str,
) -> Result<Inserted, DbError> {
    let sql = format!(
        "INSERT INTO entries (id, body, region) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO NOTHING RETURNING id, body, region, {CREATED_AT}"
    );
    let rows = c
        .query(&sql, &[&id, &body, &region])
        .await
        .map_err(|e| err(ep, &e))?;
    if let Some(row) = rows.first() {
        return Ok(Inserted::Created(entry(row)));
    }
    match get(c, ep, id).await? {
        Some(e) => Ok(Inserted::Existing(e)),
        None => Err(DbError::Query {
            engine: ep.engine,
            addr: ep.addr(),
            reason: format!("id {id:?} conflicted but cannot be read back"),
        }),
    }
}

pub(super) async fn get(
    c: &tokio_postgres::Client,
    ep: &DbEndpoint,
    id: &str,
) -> Result<Option<Entry>, DbError> {
    let sql = format!("SELECT id, body, region, {CREATED_AT} FROM entries WHERE id = $1");
    match c.query_opt(&sql, &[&id]).await {
        Ok(row) => Ok(row.as_ref().map(entry)),
        Err(e) if missing_table(&e) => Ok(None),
        Err(e) => Err(err(ep, &e)),
    }
}

pub(super) async fn latest(
    c: &tokio_postgres::Client,
    ep: &DbEndpoint,
    n: u32,
) -> Result<Vec<Entry>, DbError> {
    let sql = format!(
        "SELECT id, body, region, {CREATED_AT} FROM entries \
         ORDER BY created_at DESC, id DESC LIMIT $1"
    );
    match c.query(&sql, &[&i64::from(n)]).await {
        Ok(rows) => Ok(rows.iter().map(entry).collect()),
        Err(e) if missing_table(&e) => Ok(Vec::new()),
        Err(e) => Err(err(ep, &e)),
    }
}

pub(super) async fn ids(
    c: &tokio_postgres::Client,
    ep: &DbEndpoint,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<String>, DbError> {
    let rows = match after {
        Some(a) => {
            c.query(
                "SELECT id FROM entries WHERE id > $1 ORDER BY id LIMIT $2",
                &[&a, &i64::from(limit)],
            )
            .await
        }
        None => {
            c.query(
                "SELECT id FROM entries ORDER BY id LIMIT $1",
                &[&i64::from(limit)],
            )
            .await
        }
    };
    match rows {
        Ok(rows) => Ok(rows.iter().map(|r| r.get(0)).collect()),
        Err(e) if missing_table(&e) => Ok(Vec::new()),
        Err(e) => Err(err(ep, &e)),
    }
}

pub(super) async fn writable(c: &tokio_postgres::Client, ep: &DbEndpoint) -> Result<(), DbError> {
    let row = c
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only')",
            &[],
        )
        .await
        .map_err(|e| err(ep, &e))?;
    let in_recovery: bool = row.get(0);
    let read_only: String = row.get(1);
    let reason = if in_recovery {
        "pg_is_in_recovery() is true: a standby"
    } else if read_only == "on" {
        "transaction_read_only is on"
    } else {
        return Ok(());
    };
    Err(DbError::ReadOnly {
        engine: ep.engine,
        addr: ep.addr(),
        reason: reason.into(),
    })
}
