//! The SQL transport: the broker reads a department's read-only view in
//! PostgreSQL, MariaDB/MySQL or SQLite. The query and the mapping from the
//! view's columns to facts are configuration.
//!
//! ```toml
//! [[sources]]
//! id = "housing-management"
//! [sources.transport]
//! type = "sql"
//! url_env = "HEDUI_HOUSING_DB"       # or url = "postgres://reader@10.20.0.40/housing"
//! max_connections = 4                # also the most persons asked at once
//! [[sources.transport.facts]]
//! kind = "DWELLING"
//! query = "SELECT cert_no, use_code, area_m2, acquired_on, share_bp, rent_yuan FROM reg.v_property_by_owner WHERE owner_id = $1"
//! record_id = "cert_no"
//! [sources.transport.facts.fields]
//! certificate_number = "cert_no"
//! use = { from = "use_code", map = { R = "RESIDENTIAL", N = "NON_RESIDENTIAL" } }
//! area_centi_m2 = { from = "area_m2", unit = "m2" }
//! acquired_date = "acquired_on"
//! share_bp = "share_bp"
//! monthly_rent_fen = { from = "rent_yuan", unit = "yuan" }
//! ```
//!
//! Each query is one `SELECT` (or `WITH … SELECT`) about one person, whose
//! resident ID number is always bound as a parameter, never written into
//! the SQL: `$1` in PostgreSQL, `?` in MariaDB/MySQL and SQLite (every `?`
//! receives the person id). Every lookup runs in a read-only transaction;
//! the time left to the broker's deadline becomes the statement timeout
//! (`statement_timeout` in PostgreSQL, `max_statement_time` in MariaDB,
//! `max_execution_time` in MySQL; SQLite files are opened read-only and the
//! deadline is enforced by the broker). Columns are read by name; exact
//! decimal columns (`NUMERIC`, `DECIMAL`) are read exactly.

use std::{
    collections::{BTreeMap, HashMap},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use futures::{StreamExt, stream};
use hedui_proto::v1::{CheckResponse, Fact, FactKind, LookupRequest, LookupResponse, PersonAnswer};
use serde::Deserialize;
use sqlx::{
    AssertSqlSafe, Column, Connection, MySql, Pool, Postgres, Row, Sqlite, TypeInfo, ValueRef,
    mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlRow},
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPoolOptions, PgRow, PgValueFormat},
    sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteRow},
};
use tokio::sync::OnceCell;

use crate::{
    Adapter, AdapterError, LookupContext,
    answer::{MAX_FACTS_PER_PERSON, check_answer},
    catalog::SourceSpec,
    mapping::{Decimal, FactConfig, FactMapping, Record, Scalar, timestamp},
    registry::{AdapterFactory, BuildError, parse_params},
};

// === configuration ===

/// Parameters of the `sql` transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlParams {
    /// The database URL: `postgres://…`, `mysql://…` (MariaDB too) or
    /// `sqlite:…` (prefer `url_env` when it holds a password).
    pub url: Option<String>,
    /// An environment variable holding the database URL.
    pub url_env: Option<String>,
    /// Most connections to the database, and so most persons asked at once.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long to wait for a connection, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// One query and mapping per fact kind (or per view of a kind).
    pub facts: Vec<SqlFactConfig>,
}

fn default_max_connections() -> u32 {
    4
}
fn default_connect_timeout_ms() -> u64 {
    1_000
}

/// One query and its mapping.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlFactConfig {
    /// The fact kind, e.g. `"DWELLING"`.
    pub kind: String,
    /// The query: one `SELECT` with the person id as its parameter.
    pub query: String,
    /// The column holding the source's record id.
    pub record_id: String,
    /// Text put before the record id.
    pub record_id_prefix: Option<String>,
    /// The column holding the record's as-of time.
    pub as_of: Option<String>,
    /// The fact's fields: column names (see [`crate::mapping`]).
    #[serde(default)]
    pub fields: BTreeMap<String, toml::Value>,
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL; the parameter is `$1`.
    Postgres,
    /// MariaDB or MySQL; every `?` is the parameter.
    MySql,
    /// SQLite; every `?` is the parameter.
    Sqlite,
}

impl Dialect {
    /// The dialect of a database URL.
    ///
    /// # Errors
    /// A message naming the accepted schemes.
    pub fn of_url(url: &str) -> Result<Dialect, String> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => Ok(Dialect::Postgres),
            "mysql" | "mariadb" => Ok(Dialect::MySql),
            "sqlite" => Ok(Dialect::Sqlite),
            other => Err(format!(
                "url: scheme {other:?} is not postgres://, mysql:// (MariaDB too) or sqlite:"
            )),
        }
    }
}

/// The parts of `sql` outside quoted strings, identifiers and comments, so
/// that placeholders and semicolons are counted where they mean something.
fn code_of(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                // Doubled quotes stay inside the literal.
                while let Some(d) = chars.next() {
                    if d == c {
                        if chars.peek() == Some(&c) {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
                out.push(' ');
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
                out.push(' ');
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for d in chars.by_ref() {
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
                out.push(' ');
            }
            c => out.push(c),
        }
    }
    out
}

/// Checks a query and returns how many times the person id is bound.
///
/// # Errors
/// A message saying what is wrong.
pub fn check_query(dialect: Dialect, sql: &str) -> Result<usize, String> {
    let code = code_of(sql);
    let code = code.trim();
    let code = code.strip_suffix(';').unwrap_or(code).trim_end();
    let first = code
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    if first != "SELECT" && first != "WITH" {
        return Err("must be one SELECT (or WITH … SELECT) statement".into());
    }
    if code.contains(';') {
        return Err("must be one statement (no ';' inside)".into());
    }
    match dialect {
        Dialect::Postgres => {
            let mut n = 0;
            let bytes = code.as_bytes();
            for (i, b) in bytes.iter().enumerate() {
                if *b == b'$' {
                    let digits: String = code[i + 1..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    match digits.as_str() {
                        "" => {}
                        "1" => n += 1,
                        other => {
                            return Err(format!(
                                "uses ${other}; the person id is the only parameter, $1"
                            ));
                        }
                    }
                }
            }
            if code.contains('?') {
                return Err("PostgreSQL takes the parameter as $1, not ?".into());
            }
            if n == 0 {
                return Err("must take the person id as the parameter $1".into());
            }
            Ok(1)
        }
        Dialect::MySql | Dialect::Sqlite => {
            if code.contains("$1") {
                return Err("takes the parameter as ?, not $1".into());
            }
            let n = code.matches('?').count();
            if n == 0 {
                return Err("must take the person id as a parameter, ?".into());
            }
            Ok(n)
        }
    }
}

// === reading rows ===

/// A row, by lower-case column name.
#[derive(Debug, Clone)]
struct SqlRecord {
    columns: HashMap<String, Scalar>,
}

impl Record for SqlRecord {
    fn get(&self, locator: &str) -> Result<Scalar, String> {
        self.columns
            .get(&locator.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| {
                let mut names: Vec<&str> = self.columns.keys().map(String::as_str).collect();
                names.sort_unstable();
                format!(
                    "the query returns no column {locator:?}; it returns {}",
                    names.join(", ")
                )
            })
    }
}

fn china_time(n: NaiveDateTime) -> Scalar {
    let offset = chrono::FixedOffset::east_opt(8 * 3600).expect("valid offset");
    offset
        .from_local_datetime(&n)
        .single()
        .map_or(Scalar::Null, |t| Scalar::Time(t.with_timezone(&Utc)))
}

fn unreadable(name: &str, ty: &str) -> String {
    format!("column {name:?} has type {ty}, which cannot be read; cast it to text in the view")
}

/// Reads PostgreSQL's binary `NUMERIC`: ndigits, weight, sign, dscale, then
/// base-10000 digits.
fn pg_numeric(b: &[u8]) -> Option<Decimal> {
    let word = |i: usize| -> Option<u16> { Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?])) };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(2)? as i16);
    let sign = word(4)?;
    if sign == 0xC000 || ndigits > 9 {
        return None;
    }
    let mut n: i128 = 0;
    for i in 0..ndigits {
        n = n * 10_000 + i128::from(word(8 + 2 * i)?);
    }
    // Value = n * 10000^(weight - ndigits + 1).
    let exp10 = 4 * (weight - ndigits as i64 + 1);
    let d = Decimal::parse(&format!("{n}e{exp10}"))?;
    Some(if sign == 0x4000 {
        Decimal::parse(&format!("-{d}"))?
    } else {
        d
    })
}

fn pg_record(row: &PgRow) -> Result<SqlRecord, String> {
    let mut columns = HashMap::new();
    for (i, col) in row.columns().iter().enumerate() {
        let name = col.name();
        let ty = col.type_info().name().to_owned();
        let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
        let value = if raw.is_null() {
            Scalar::Null
        } else {
            let err = |e: sqlx::Error| format!("column {name:?}: {e}");
            match ty.as_str() {
                "BOOL" => Scalar::Bool(row.try_get(i).map_err(err)?),
                "INT2" => Scalar::Int(row.try_get::<i16, _>(i).map_err(err)?.into()),
                "INT4" => Scalar::Int(row.try_get::<i32, _>(i).map_err(err)?.into()),
                "INT8" => Scalar::Int(row.try_get::<i64, _>(i).map_err(err)?),
                "NUMERIC" => {
                    let d = match raw.format() {
                        PgValueFormat::Binary => raw.as_bytes().ok().and_then(pg_numeric),
                        PgValueFormat::Text => raw.as_str().ok().and_then(Decimal::parse),
                    };
                    Scalar::Decimal(d.ok_or_else(|| format!("column {name:?}: not a number"))?)
                }
                "FLOAT4" => float(row.try_get::<f32, _>(i).map_err(err)?.into(), name)?,
                "FLOAT8" => float(row.try_get::<f64, _>(i).map_err(err)?, name)?,
                "TEXT" | "VARCHAR" | "BPCHAR" | "CHAR" | "NAME" | "CITEXT" => {
                    Scalar::Text(row.try_get(i).map_err(err)?)
                }
                "DATE" => Scalar::Date(row.try_get::<NaiveDate, _>(i).map_err(err)?),
                "TIMESTAMPTZ" => Scalar::Time(row.try_get::<DateTime<Utc>, _>(i).map_err(err)?),
                "TIMESTAMP" => china_time(row.try_get::<NaiveDateTime, _>(i).map_err(err)?),
                other => return Err(unreadable(name, other)),
            }
        };
        columns.insert(name.to_ascii_lowercase(), value);
    }
    Ok(SqlRecord { columns })
}

fn float(f: f64, name: &str) -> Result<Scalar, String> {
    if !f.is_finite() {
        return Err(format!("column {name:?}: {f} is not a number"));
    }
    // The shortest text that reads back as the same float: the decimal
    // the source wrote.
    Decimal::parse(&f.to_string())
        .map(Scalar::Decimal)
        .ok_or_else(|| format!("column {name:?}: {f} is out of range"))
}

fn my_record(row: &MySqlRow) -> Result<SqlRecord, String> {
    let mut columns = HashMap::new();
    for (i, col) in row.columns().iter().enumerate() {
        let name = col.name();
        let ty = col.type_info().name().to_owned();
        let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
        let value = if raw.is_null() {
            Scalar::Null
        } else {
            let err = |e: sqlx::Error| format!("column {name:?}: {e}");
            match ty.as_str() {
                "BOOLEAN" => Scalar::Bool(row.try_get(i).map_err(err)?),
                "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" | "YEAR" => {
                    Scalar::Int(row.try_get_unchecked::<i64, _>(i).map_err(err)?)
                }
                "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "INT UNSIGNED"
                | "MEDIUMINT UNSIGNED" | "BIGINT UNSIGNED" => {
                    let u = row.try_get_unchecked::<u64, _>(i).map_err(err)?;
                    Scalar::Int(
                        i64::try_from(u)
                            .map_err(|_| format!("column {name:?}: {u} is too large"))?,
                    )
                }
                "DECIMAL" => {
                    let t: String = row.try_get_unchecked(i).map_err(err)?;
                    Scalar::Decimal(
                        Decimal::parse(&t)
                            .ok_or_else(|| format!("column {name:?}: {t:?} is not a number"))?,
                    )
                }
                "FLOAT" => float(row.try_get::<f32, _>(i).map_err(err)?.into(), name)?,
                "DOUBLE" => float(row.try_get::<f64, _>(i).map_err(err)?, name)?,
                "VARCHAR" | "CHAR" | "TEXT" | "TINYTEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" => {
                    Scalar::Text(row.try_get_unchecked(i).map_err(err)?)
                }
                "DATE" => Scalar::Date(row.try_get::<NaiveDate, _>(i).map_err(err)?),
                "DATETIME" => china_time(row.try_get::<NaiveDateTime, _>(i).map_err(err)?),
                "TIMESTAMP" => Scalar::Time(row.try_get::<DateTime<Utc>, _>(i).map_err(err)?),
                other => return Err(unreadable(name, other)),
            }
        };
        columns.insert(name.to_ascii_lowercase(), value);
    }
    Ok(SqlRecord { columns })
}

fn lite_record(row: &SqliteRow) -> Result<SqlRecord, String> {
    let mut columns = HashMap::new();
    for (i, col) in row.columns().iter().enumerate() {
        let name = col.name();
        let raw = row.try_get_raw(i).map_err(|e| e.to_string())?;
        // SQLite types values, not columns: read what the value is.
        let ty = raw.type_info().name().to_owned();
        let value = if raw.is_null() {
            Scalar::Null
        } else {
            let err = |e: sqlx::Error| format!("column {name:?}: {e}");
            match ty.as_str() {
                "INTEGER" | "BOOLEAN" => {
                    Scalar::Int(row.try_get_unchecked::<i64, _>(i).map_err(err)?)
                }
                "REAL" => float(row.try_get_unchecked::<f64, _>(i).map_err(err)?, name)?,
                "NUMERIC" => match row.try_get_unchecked::<i64, _>(i) {
                    Ok(n) => Scalar::Int(n),
                    Err(_) => float(row.try_get_unchecked::<f64, _>(i).map_err(err)?, name)?,
                },
                "TEXT" | "DATE" | "TIME" | "DATETIME" => {
                    Scalar::Text(row.try_get_unchecked(i).map_err(err)?)
                }
                other => return Err(unreadable(name, other)),
            }
        };
        columns.insert(name.to_ascii_lowercase(), value);
    }
    Ok(SqlRecord { columns })
}

// === the adapter ===

#[derive(Debug, Clone)]
enum Db {
    Postgres(Pool<Postgres>),
    MySql(Pool<MySql>, Arc<OnceCell<bool>>),
    Sqlite(Pool<Sqlite>),
}

#[derive(Debug, Clone)]
struct Query {
    sql: String,
    binds: usize,
    mapping: FactMapping,
}

/// An adapter that reads a department's view.
#[derive(Debug, Clone)]
pub struct SqlAdapter {
    source_id: String,
    fact_kinds: Vec<FactKind>,
    db: Db,
    queries: Arc<Vec<Query>>,
    concurrency: usize,
}

/// Turns a database error into an adapter error; the database's own words
/// go to the log, not into reports.
fn db_error(source_id: &str, e: sqlx::Error) -> AdapterError {
    match &e {
        sqlx::Error::PoolTimedOut => {
            AdapterError::Unavailable("no connection to the database came free in time".into())
        }
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed => {
            AdapterError::Unavailable(format!("cannot reach the database: {e}"))
        }
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default().into_owned();
            // 57014: PostgreSQL statement timeout; 1969 and 3024: MariaDB's
            // and MySQL's.
            if matches!(code.as_str(), "57014" | "70100" | "HY000")
                && (d.message().contains("timeout")
                    || d.message().contains("max_statement_time")
                    || d.message().contains("maximum statement execution time")
                    || d.message().contains("canceling statement"))
            {
                return AdapterError::Timeout;
            }
            tracing::warn!(source = source_id, code = %code, error = %d.message(), "database error");
            AdapterError::Internal(format!("database error {code} (the broker's log has it)"))
        }
        _ => {
            tracing::warn!(source = source_id, error = %e, "database error");
            AdapterError::Internal("database error (the broker's log has it)".into())
        }
    }
}

impl SqlAdapter {
    /// An adapter for `source`; reads `url_env`, connects lazily.
    ///
    /// # Errors
    /// A message naming the wrong parameter.
    pub fn new(source: &SourceSpec, params: &SqlParams) -> Result<Self, String> {
        let url = match (&params.url, &params.url_env) {
            (Some(_), Some(_)) => return Err("give url or url_env, not both".into()),
            (None, None) => return Err("url or url_env is required".into()),
            (Some(u), None) => u.clone(),
            (None, Some(var)) => std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("url_env: environment variable {var} is not set"))?,
        };
        let dialect = Dialect::of_url(&url)?;
        if params.max_connections == 0 || params.max_connections > 64 {
            return Err("max_connections: must be between 1 and 64".into());
        }
        if params.facts.is_empty() {
            return Err("facts: at least one query is required".into());
        }
        let mut queries = Vec::with_capacity(params.facts.len());
        for (i, f) in params.facts.iter().enumerate() {
            let at = |m: String| format!("facts[{i}] ({}): {m}", f.kind);
            let kind = crate::mapping::fact_kind(&f.kind).map_err(at)?;
            if !source.fact_kinds.contains(&kind) {
                return Err(at(format!(
                    "source {:?} does not report {}",
                    source.id,
                    kind.as_str_name().trim_start_matches("FACT_KIND_")
                )));
            }
            let binds = check_query(dialect, &f.query).map_err(|e| at(format!("query: {e}")))?;
            let check_column = |c: &str| {
                if !c.is_empty() && c.chars().all(|ch| ch.is_alphanumeric() || ch == '_') {
                    Ok(())
                } else {
                    Err(format!("{c:?} is not a column name"))
                }
            };
            let mapping = FactMapping::new(
                &FactConfig {
                    kind: &f.kind,
                    record_id: &f.record_id,
                    record_id_prefix: f.record_id_prefix.as_deref(),
                    as_of: f.as_of.as_deref(),
                    fields: &f.fields,
                },
                &check_column,
            )
            .map_err(at)?;
            queries.push(Query {
                sql: f.query.trim().trim_end_matches(';').to_owned(),
                binds,
                mapping,
            });
        }
        for k in &source.fact_kinds {
            if !queries.iter().any(|q| q.mapping.kind() == *k) {
                return Err(format!(
                    "facts: no query for {}, which source {:?} reports; without one its silence \
                     would read as \"no record\"",
                    k.as_str_name().trim_start_matches("FACT_KIND_"),
                    source.id
                ));
            }
        }
        let acquire = Duration::from_millis(params.connect_timeout_ms);
        let n = params.max_connections;
        let bad_url = |e: sqlx::Error| format!("url: not a valid database URL: {e}");
        let db = match dialect {
            Dialect::Postgres => {
                let opts = PgConnectOptions::from_str(&url).map_err(bad_url)?;
                Db::Postgres(
                    PgPoolOptions::new()
                        .max_connections(n)
                        .acquire_timeout(acquire)
                        .connect_lazy_with(opts),
                )
            }
            Dialect::MySql => {
                let url = url.replacen("mariadb://", "mysql://", 1);
                let opts = MySqlConnectOptions::from_str(&url).map_err(bad_url)?;
                Db::MySql(
                    MySqlPoolOptions::new()
                        .max_connections(n)
                        .acquire_timeout(acquire)
                        .connect_lazy_with(opts),
                    Arc::new(OnceCell::new()),
                )
            }
            Dialect::Sqlite => {
                let opts = SqliteConnectOptions::from_str(&url)
                    .map_err(bad_url)?
                    .read_only(true);
                Db::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(n)
                        .acquire_timeout(acquire)
                        .connect_lazy_with(opts),
                )
            }
        };
        Ok(SqlAdapter {
            source_id: source.id.clone(),
            fact_kinds: source.fact_kinds.clone(),
            db,
            queries: Arc::new(queries),
            concurrency: n as usize,
        })
    }

    fn to_facts(
        &self,
        q: &Query,
        records: Vec<SqlRecord>,
        now: DateTime<Utc>,
        out: &mut Vec<Fact>,
    ) -> Result<(), AdapterError> {
        if out.len() + records.len() > MAX_FACTS_PER_PERSON {
            return Err(AdapterError::Malformed(format!(
                "more than {MAX_FACTS_PER_PERSON} facts about one person"
            )));
        }
        for r in records {
            out.push(
                q.mapping
                    .fact(&r, now)
                    .map_err(|e| AdapterError::Malformed(e.to_string()))?,
            );
        }
        Ok(())
    }

    /// The facts about one person, in one read-only transaction.
    async fn person(
        &self,
        ctx: &LookupContext,
        person_id: &str,
        wanted: &[FactKind],
    ) -> Result<PersonAnswer, AdapterError> {
        let ms = ctx.remaining().as_millis().max(1);
        let err = |e| db_error(&self.source_id, e);
        let now = Utc::now();
        let queries = self
            .queries
            .iter()
            .filter(|q| wanted.is_empty() || wanted.contains(&q.mapping.kind()));
        let mut facts = Vec::new();
        match &self.db {
            Db::Postgres(pool) => {
                let mut conn = pool.acquire().await.map_err(err)?;
                let mut tx = conn.begin().await.map_err(err)?;
                sqlx::query("SET TRANSACTION READ ONLY")
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                sqlx::query("SELECT set_config('statement_timeout', $1, true)")
                    .bind(ms.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(err)?;
                for q in queries {
                    let rows = sqlx::query(AssertSqlSafe(q.sql.clone()))
                        .bind(person_id)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(err)?;
                    let recs = rows
                        .iter()
                        .map(pg_record)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(AdapterError::Malformed)?;
                    self.to_facts(q, recs, now, &mut facts)?;
                }
                tx.rollback().await.map_err(err)?;
            }
            Db::MySql(pool, mariadb) => {
                let mut conn: PoolConnection<MySql> = pool.acquire().await.map_err(err)?;
                let is_mariadb = *mariadb
                    .get_or_try_init(|| async {
                        let v: String = sqlx::query_scalar("SELECT VERSION()")
                            .fetch_one(&mut *conn)
                            .await?;
                        Ok::<bool, sqlx::Error>(v.contains("MariaDB"))
                    })
                    .await
                    .map_err(err)?;
                // The variables take numbers only; ours, never the caller's.
                let set = if is_mariadb {
                    format!(
                        "SET SESSION max_statement_time = {}.{:03}",
                        ms / 1000,
                        ms % 1000
                    )
                } else {
                    format!("SET SESSION max_execution_time = {ms}")
                };
                sqlx::raw_sql(AssertSqlSafe(set))
                    .execute(&mut *conn)
                    .await
                    .map_err(err)?;
                // Applies to the next transaction, the one begun here.
                sqlx::raw_sql("SET TRANSACTION READ ONLY")
                    .execute(&mut *conn)
                    .await
                    .map_err(err)?;
                let mut tx = conn.begin().await.map_err(err)?;
                for q in queries {
                    let mut query = sqlx::query(AssertSqlSafe(q.sql.clone()));
                    for _ in 0..q.binds {
                        query = query.bind(person_id);
                    }
                    let rows = query.fetch_all(&mut *tx).await.map_err(err)?;
                    let recs = rows
                        .iter()
                        .map(my_record)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(AdapterError::Malformed)?;
                    self.to_facts(q, recs, now, &mut facts)?;
                }
                tx.rollback().await.map_err(err)?;
            }
            Db::Sqlite(pool) => {
                let mut conn = pool.acquire().await.map_err(err)?;
                let mut tx = conn.begin().await.map_err(err)?;
                for q in queries {
                    let mut query = sqlx::query(AssertSqlSafe(q.sql.clone()));
                    for _ in 0..q.binds {
                        query = query.bind(person_id);
                    }
                    let rows = query.fetch_all(&mut *tx).await.map_err(err)?;
                    let recs = rows
                        .iter()
                        .map(lite_record)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(AdapterError::Malformed)?;
                    self.to_facts(q, recs, now, &mut facts)?;
                }
                tx.rollback().await.map_err(err)?;
            }
        }
        Ok(PersonAnswer {
            person_id: person_id.to_owned(),
            facts,
        })
    }

    async fn fetch(
        &self,
        ctx: &LookupContext,
        ids: &[String],
        wanted: &[FactKind],
    ) -> Result<Vec<PersonAnswer>, AdapterError> {
        let calls: Vec<_> = ids.iter().map(|id| self.person(ctx, id, wanted)).collect();
        let mut pending = stream::iter(calls).buffer_unordered(self.concurrency);
        let mut out = Vec::with_capacity(ids.len());
        while let Some(r) = pending.next().await {
            out.push(r?);
        }
        Ok(out)
    }
}

#[async_trait]
impl Adapter for SqlAdapter {
    fn source_id(&self) -> &str {
        &self.source_id
    }

    async fn lookup(
        &self,
        ctx: &LookupContext,
        request: &LookupRequest,
    ) -> Result<LookupResponse, AdapterError> {
        if ctx.remaining().is_zero() {
            return Err(AdapterError::Timeout);
        }
        let ids = crate::answer::distinct_person_ids(request);
        let wanted: Vec<FactKind> = request.fact_kinds().collect();
        let answers =
            match tokio::time::timeout_at(ctx.deadline, self.fetch(ctx, &ids, &wanted)).await {
                Err(_) => return Err(AdapterError::Timeout),
                Ok(r) => r?,
            };
        let response = LookupResponse {
            answers,
            as_of: Some(timestamp(Utc::now())),
        };
        check_answer(request, &response, &self.fact_kinds)?;
        Ok(response)
    }

    async fn check(&self) -> Result<CheckResponse, AdapterError> {
        let probe = async {
            match &self.db {
                Db::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
                Db::MySql(p, _) => sqlx::query("SELECT 1").execute(p).await.map(drop),
                Db::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
            }
        };
        tokio::time::timeout(Duration::from_secs(5), probe)
            .await
            .map_err(|_| AdapterError::Timeout)?
            .map_err(|e| db_error(&self.source_id, e))?;
        Ok(CheckResponse {
            serving: true,
            fact_kinds: self.fact_kinds.iter().map(|k| *k as i32).collect(),
            detail: String::new(),
        })
    }
}

/// The factory of the `sql` transport.
#[derive(Debug, Clone, Copy)]
pub struct SqlFactory;

impl AdapterFactory for SqlFactory {
    fn transport(&self) -> &'static str {
        "sql"
    }

    fn build(
        &self,
        source: &SourceSpec,
        params: &toml::Table,
    ) -> Result<Arc<dyn Adapter>, BuildError> {
        let params: SqlParams = parse_params("sql", params)?;
        let adapter = SqlAdapter::new(source, &params).map_err(|message| BuildError::Params {
            kind: "sql".into(),
            message,
        })?;
        Ok(Arc::new(adapter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    #[test]
    fn queries_must_bind_the_person() {
        let pg = |q: &str| check_query(Dialect::Postgres, q);
        assert_eq!(pg("SELECT a FROM v WHERE id = $1"), Ok(1));
        assert_eq!(
            pg("with x as (select 1) SELECT a FROM v WHERE id = $1;"),
            Ok(1)
        );
        assert!(
            pg("SELECT a FROM v WHERE id = '$1'")
                .unwrap_err()
                .contains("$1")
        );
        assert!(
            pg("SELECT a FROM v WHERE id = $2")
                .unwrap_err()
                .contains("$2")
        );
        assert!(
            pg("DELETE FROM v WHERE id = $1")
                .unwrap_err()
                .contains("SELECT")
        );
        assert!(
            pg("SELECT 1 WHERE $1 = 'x'; DROP TABLE v")
                .unwrap_err()
                .contains("one statement")
        );
        assert_eq!(
            pg("SELECT 'a;b', \"c?\" FROM v WHERE id = $1 -- done;"),
            Ok(1)
        );
        let my = |q: &str| check_query(Dialect::MySql, q);
        assert_eq!(my("SELECT a FROM v WHERE id = ? OR alt_id = ?"), Ok(2));
        assert!(my("SELECT a FROM v WHERE id = '?'").is_err());
        assert!(my("SELECT a FROM v WHERE id = $1").is_err());
    }

    #[test]
    fn pg_numerics_read_exactly() {
        // 12345.67: ndigits 3, weight 1, sign +, dscale 2: 1 2345 6700.
        let bytes = [0, 3, 0, 1, 0, 0, 0, 2, 0, 1, 0x09, 0x29, 0x1A, 0x2C];
        assert_eq!(pg_numeric(&bytes).unwrap().to_string(), "12345.6700");
        // -0.5: ndigits 1, weight -1, sign -, dscale 1: 5000.
        let bytes = [0, 1, 0xFF, 0xFF, 0x40, 0, 0, 1, 0x13, 0x88];
        assert_eq!(pg_numeric(&bytes).unwrap().to_string(), "-0.5000");
        // 0: no digits.
        assert_eq!(
            pg_numeric(&[0, 0, 0, 0, 0, 0, 0, 0]).unwrap().to_string(),
            "0"
        );
    }

    #[test]
    fn configuration_errors_name_the_key() {
        let spec = Catalog::dachuan()
            .get("housing-management")
            .unwrap()
            .clone();
        let build = |text: &str| {
            let t: toml::Table = toml::from_str(text).unwrap();
            SqlFactory
                .build(&spec, &t)
                .map(|_| ())
                .unwrap_err()
                .to_string()
        };
        let q = "[[facts]]\nkind = 'DWELLING'\nrecord_id = 'c'\nquery = 'SELECT c FROM v WHERE o = $1'\nfields = { certificate_number = 'c' }\n";
        let m = build(&format!("url = 'oracle://x'\n{q}"));
        assert!(m.contains("url: scheme \"oracle\""), "{m}");
        let m = build(&format!("url = 'postgres://x/y'\nurl_env = 'X'\n{q}"));
        assert!(m.contains("url or url_env"), "{m}");
        let m = build(&format!("url = 'mysql://x/y'\n{q}"));
        assert!(
            m.contains("facts[0] (DWELLING): query: takes the parameter as ?"),
            "{m}"
        );
        let m = build(&format!(
            "url = 'postgres://x/y'\n{}",
            q.replace("record_id = 'c'", "record_id = 'c;'")
        ));
        assert!(m.contains("record_id: \"c;\" is not a column name"), "{m}");
        let m = build(&format!("url = 'postgres://x/y'\npool = 3\n{q}"));
        assert!(m.contains("unknown field `pool`"), "{m}");
        let m = build(
            &q.replace("DWELLING", "VEHICLE")
                .replace("[[facts]]", "url = 'postgres://x/y'\n[[facts]]"),
        );
        assert!(m.contains("does not report VEHICLE"), "{m}");
    }

    /// SQLite needs no server: the whole path, with an injection attempt.
    #[tokio::test]
    async fn reads_a_sqlite_view_and_binds_the_person() {
        let dir = std::env::temp_dir().join(format!("hedui-sql-{}", uuid_like()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("housing.db");
        let url = format!("sqlite:{}", path.display());
        {
            let opts = SqliteConnectOptions::from_str(&url)
                .unwrap()
                .create_if_missing(true);
            let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
            sqlx::raw_sql(
                "CREATE TABLE property (cert TEXT, owner TEXT, area_m2 TEXT, use_code TEXT, since TEXT, share INTEGER, rent REAL);
                 INSERT INTO property VALUES ('C-1', '110105194912310021', '89.50', 'R', '2015-06-01', 10000, 0.0);
                 INSERT INTO property VALUES ('C-2', '110105194912310021', '20.25', 'N', '2019-01-31', 5000, 1500.5);
                 INSERT INTO property VALUES ('C-3', '11010519491231002X', '70', 'R', '2001-01-01', 10000, 0);
                 CREATE VIEW v_property AS SELECT cert, owner, area_m2, use_code, since, share, rent FROM property;",
            )
            .execute(&mut c)
            .await
            .unwrap();
        }
        let spec = Catalog::dachuan()
            .get("housing-management")
            .unwrap()
            .clone();
        let text = format!(
            r#"
            url = "{url}"
            [[facts]]
            kind = "DWELLING"
            query = "SELECT cert, area_m2, use_code, since, share, rent FROM v_property WHERE owner = ? ORDER BY cert"
            record_id = "cert"
            [facts.fields]
            certificate_number = "cert"
            area_centi_m2 = {{ from = "area_m2", unit = "m2" }}
            use = {{ from = "use_code", map = {{ R = "RESIDENTIAL", N = "NON_RESIDENTIAL" }} }}
            acquired_date = "since"
            share_bp = "share"
            monthly_rent_fen = {{ from = "rent", unit = "yuan" }}
            "#
        );
        let t: toml::Table = toml::from_str(&text).unwrap();
        let adapter = SqlFactory.build(&spec, &t).unwrap();
        let ask = |ids: &[&str]| LookupRequest {
            person_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let ctx = LookupContext::with_timeout(Duration::from_secs(5));
        let resp = adapter
            .lookup(&ctx, &ask(&["110105194912310021", "110105194912310013"]))
            .await
            .unwrap();
        let a = &resp
            .answers
            .iter()
            .find(|a| a.person_id == "110105194912310021")
            .unwrap()
            .facts;
        assert_eq!(a.len(), 2);
        let Some(hedui_proto::v1::fact::Value::Dwelling(d)) = &a[1].value else {
            panic!()
        };
        assert_eq!(
            (d.area_centi_m2, d.r#use, d.share_bp, d.monthly_rent_fen),
            (2_025, 2, 5_000, 150_050)
        );
        assert_eq!(
            d.acquired_date,
            Some(hedui_proto::v1::CivilDate::ymd(2019, 1, 31))
        );
        assert!(
            resp.answers
                .iter()
                .find(|a| a.person_id == "110105194912310013")
                .unwrap()
                .facts
                .is_empty()
        );
        // The classic: bound, it is just an id nobody has.
        let resp = adapter.lookup(&ctx, &ask(&["' OR 1=1 --"])).await.unwrap();
        assert!(resp.answers[0].facts.is_empty());
        assert!(adapter.check().await.unwrap().serving);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn uuid_like() -> String {
        format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        )
    }
}
