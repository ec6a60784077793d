//! MariaDB / MySQL statements.
use super::*;
use mysql_async::{Error as MyError, OptsBuilder, Pool, PoolConstraints, PoolOpts};

const CREATED_AT: &str = "DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%s.%fZ')";
const ER_DUP_ENTRY: u16 = 1062;
const ER_NO_SUCH_TABLE: u16 = 1146;
/// "The MariaDB server is running with the --read-only option".
const ER_OPTION_PREVENTS_STATEMENT: u16 = 1290;
const ER_READ_ONLY_MODE: u16 = 1836;
/// Connection-level server errors: shutdown, killed, too many connections, locked
/// account (a fence), access denied.
const CONNECTION_ERRORS: [u16; 7] = [1040, 1044, 1045, 1053, 1152, 1927, 4151];

fn err(ep: &DbEndpoint, e: &MyError) -> DbError {
    let engine = ep.engine;
    let addr = ep.addr();
    match e {
        MyError::Server(s)
            if s.code == ER_OPTION_PREVENTS_STATEMENT || s.code == ER_READ_ONLY_MODE =>
        {
            DbError::ReadOnly {
                engine,
                addr,
                reason: s.message.clone(),
            }
        }
        MyError::Server(s) if CONNECTION_ERRORS.contains(&s.code) => DbError::Unreachable {
            engine,
            addr,
            reason: s.message.clone(),
        },
        MyError::Server(s) => DbError::Query {
            engine,
            addr,
            reason: format!("{} (error {})", s.message, s.code),
        },
        other => {
            let mut reason = other.to_string();
            if let Some(src) = std::error::Error::source(other) {
                let s = src.to_string();
                if !reason.contains(&s) {
                    reason = format!("{reason}: {s}");
                }
            }
            DbError::Unreachable {
                engine,
                addr,
                reason,
            }
        }
    }
}

fn missing_table(e: &MyError) -> bool {
    matches!(e, MyError::Server(s) if s.code == ER_NO_SUCH_TABLE)
}

async fn conn(pool: &Pool, ep: &DbEndpoint) -> Result<mysql_async::Conn, DbError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, pool.get_conn()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(match err(ep, &e) {
            DbError::Query { reason, .. } => DbError::Unreachable {
                engine: ep.engine,
                addr: ep.addr(),
                reason,
            },
            other => other,
        }),
        Err(_) => Err(DbError::Unreachable {
            engine: ep.engine,
            addr: ep.addr(),
            reason: "connecting timed out".into(),
        }),
    }
}

pub(super) async fn connect(ep: &DbEndpoint, password: Option<String>) -> Result<Conn, DbError> {
    let constraints = PoolConstraints::new(0, 8).unwrap_or_default();
    let opts = OptsBuilder::default()
        .ip_or_hostname(ep.host.clone())
        .tcp_port(ep.port)
        .user(Some(ep.user.clone()))
        .pass(password)
        .db_name(Some(ep.dbname.clone()))
        // Stay on the address discovery gave (no switch to a local socket).
        .prefer_socket(false)
        .setup(vec!["SET time_zone = '+00:00'"])
        .pool_opts(PoolOpts::default().with_constraints(constraints));
    let pool = Pool::new(opts);
    let mut c = match conn(&pool, ep).await {
        Ok(c) => c,
        Err(e) => {
            tokio::spawn(pool.disconnect());
            return Err(e);
        }
    };
    let ready = async {
        let read_only: i64 = c
            .query_first("SELECT @@read_only")
            .await
            .map_err(|e| err(ep, &e))?
            .unwrap_or(1);
        if read_only == 0 {
            c.query_drop(
                "CREATE TABLE IF NOT EXISTS entries (\
                   id VARCHAR(200) NOT NULL PRIMARY KEY, \
                   body MEDIUMTEXT NOT NULL, \
                   region VARCHAR(200) NOT NULL, \
                   created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
                   KEY entries_created_at (created_at)\
                 ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            )
            .await
            .map_err(|e| err(ep, &e))?;
        }
        Ok::<(), DbError>(())
    }
    .await;
    drop(c);
    if let Err(e) = ready {
        tokio::spawn(pool.disconnect());
        return Err(e);
    }
    Ok(Conn::My(pool))
}

type Row = (String, String, String, String);

fn entry((id, body, region, created_at): Row) -> Entry {
    Entry {
        id,
        body,
        region,
        created_at,
    }
}

pub(super) async fn insert(
    pool: &Pool,
    ep: &DbEndpoint,
    id: &str,
    body: &str,
    region: &str,
) -> Result<Inserted, DbError> {
    let mut c = conn(pool, ep).await?;
    let r = c
        .exec_drop(
            "INSERT INTO entries (id, body, region) VALUES (?, ?, ?)",
            (id, body, region),
        )
        .await;
    let existed = match r {
        Ok(()) => false,
        Err(MyError::Server(s)) if s.code == ER_DUP_ENTRY => true,
        Err(e) => return Err(err(ep, &e)),
    };
    let row = read(&mut c, ep, id).await?.ok_or_else(|| DbError::Query {
        engine: ep.engine,
        addr: ep.addr(),
        reason: format!("id {id:?} was written but cannot be read back"),
    })?;
    Ok(if existed {
        Inserted::Existing(row)
    } else {
        Inserted::Created(row)
    })
}

async fn read(
    c: &mut mysql_async::Conn,
    ep: &DbEndpoint,
    id: &str,
) -> Result<Option<Entry>, DbError> {
    let sql = format!("SELECT id, body, region, {CREATED_AT} FROM entries WHERE id = ?");
    match c.exec_first::<Row, _, _>(sql, (id,)).await {
        Ok(r) => Ok(r.map(entry)),
        Err(e) if missing_table(&e) => Ok(None),
        Err(e) => Err(err(ep, &e)),
    }
}

pub(super) async fn get(pool: &Pool, ep: &DbEndpoint, id: &str) -> Result<Option<Entry>, DbError> {
    let mut c = conn(pool, ep).await?;
    read(&mut c, ep, id).await
}

pub(super) async fn latest(pool: &Pool, ep: &DbEndpoint, n: u32) -> Result<Vec<Entry>, DbError> {
    let mut c = conn(pool, ep).await?;
    let sql = format!(
        "SELECT id, body, region, {CREATED_AT} FROM entries \
         ORDER BY created_at DESC, id DESC LIMIT ?"
    );
    match c.exec::<Row, _, _>(sql, (n,)).await {
        Ok(rows) => Ok(rows.into_iter().map(entry).collect()),
        Err(e) if missing_table(&e) => Ok(Vec::new()),
        Err(e) => Err(err(ep, &e)),
    }
}

pub(super) async fn ids(
    pool: &Pool,
    ep: &DbEndpoint,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<String>, DbError> {
    let mut c = conn(pool, ep).await?;
    let r = match after {
        Some(a) => {
            c.exec::<String, _, _>(
                "SELECT id FROM entries WHERE id > ? ORDER BY id LIMIT ?",
                (a, limit),
            )
            .await
        }
        None => {
            c.exec::<String, _, _>("SELECT id FROM entries ORDER BY id LIMIT ?", (limit,))
                .await
        }
    };
    match r {
        Ok(ids) => Ok(ids),
        Err(e) if missing_table(&e) => Ok(Vec::new()),
        Err(e) => Err(err(ep, &e)),
    }
}

pub(super) async fn writable(pool: &Pool, ep: &DbEndpoint) -> Result<(), DbError> {
    let mut c = conn(pool, ep).await?;
    let read_only: Option<i64> = c
        .query_first("SELECT @@global.read_only")
        .await
        .map_err(|e| err(ep, &e))?;
    if read_only == Some(0) {
        Ok(())
    } else {
        Err(DbError::ReadOnly {
            engine: ep.engine,
            addr: ep.addr(),
            reason: "@@read_only is on".into(),
        })
    }
}
